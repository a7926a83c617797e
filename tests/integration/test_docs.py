"""Reference documentation written once (issue 15): doc/options.conf is the
one source of README's options table and of mosquitto-tally(5), and it
names exactly the options plugin/plugin.c accepts."""
import os
import re
import subprocess
import sys

import pytest

from conftest import BUILD, REPO

pytestmark = pytest.mark.nosan  # reads files and --help; nothing for a sanitizer to see

GEN = os.path.join(REPO, "scripts", "gen-docs.py")
sys.path.insert(0, os.path.join(REPO, "scripts"))


def plugin_options():
    with open(os.path.join(REPO, "plugin", "plugin.c")) as f:
        text = f.read()
    specs = text[text.index("opt_specs[] = {"):]
    specs = specs[:specs.index("};")]
    return re.findall(r"OPT_[IS]\(\s*([a-z_]+)\s*,", specs)


def documented_options():
    gen = __import__("gen-docs")
    return [k for k, _, _ in gen.load_options()]


def test_every_plugin_option_is_documented_once():
    code, doc = plugin_options(), documented_options()
    assert len(code) > 10
    assert sorted(code) == sorted(doc), (
        f"only in plugin.c: {sorted(set(code) - set(doc))}; "
        f"only in doc/options.conf: {sorted(set(doc) - set(code))}")
    assert len(set(doc)) == len(doc)


def test_readme_options_table_is_rendered_from_the_source():
    r = subprocess.run([sys.executable, GEN, "--readme", os.path.join(REPO, "README.md"),
                        "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_manual_pages_carry_every_option_and_each_program_usage():
    man = os.path.join(BUILD, "man")
    with open(os.path.join(man, "mosquitto-tally.5")) as f:
        page = f.read()
    for key in documented_options():
        assert f"\\fB{key.replace('-', chr(92) + '-')}\\fR (default:" in page, key
    gen = __import__("gen-docs")
    for program in ("tally", "tally-load", "tally-exporter"):
        with open(os.path.join(man, f"{program}.1")) as f:
            text = f.read()
        r = subprocess.run([os.path.join(BUILD, "clients", program), "--help"],
                           capture_output=True, text=True)
        usage = (r.stdout + r.stderr).strip().splitlines()
        assert len(usage) > 5, program
        for line in usage[1:]:  # the page is the program's own usage, as it is now
            assert gen.roff_text(line) in text, f"{program}.1 lacks {line!r}"
        r = subprocess.run(["man", "-l", os.path.join(man, f"{program}.1")],
                           capture_output=True, text=True, env=dict(os.environ, MANWIDTH="80"))
        assert r.returncode == 0 and "SYNOPSIS" in r.stdout, r.stderr
