#!/usr/bin/env python3
"""Renders tally's reference documentation from its sources, so that each
fact is written once:

  doc/options.conf  ->  README.md's options table, and mosquitto-tally(5)
  PROGRAM --help    ->  tally(1), tally-load(1), tally-exporter(1)

  scripts/gen-docs.py --readme README.md          rewrite README's table
  scripts/gen-docs.py --readme README.md --check  exit 1 if it is stale
  scripts/gen-docs.py --man DIR --bin BINDIR [--version V]   write the pages
"""
import argparse
import configparser
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = os.path.join(REPO, "doc", "options.conf")
BEGIN = ("<!-- options table: rendered from doc/options.conf by scripts/gen-docs.py; "
         "edit it there -->")
END = "<!-- end of options table -->"

PROGRAMS = {
    "tally": "count, read and watch tally counters, and show each node's stats",
    "tally-load": "publish increments to a tally broker as fast as asked (load generator)",
    "tally-exporter": "serve the stats of a tally cluster as Prometheus metrics",
}
SEE_ALSO = r"\fBmosquitto\-tally\fR(5), \fBmosquitto\fR(8), \fBmosquitto_pub\fR(1)"


def load_options(path=OPTIONS):
    """[(key, default, meaning)] in the file's order, text as Markdown inline."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    with open(path, encoding="utf-8") as f:
        cp.read_file(f)
    return [(k, " ".join(cp[k]["default"].split()), " ".join(cp[k]["meaning"].split()))
            for k in cp.sections()]


# ==== README ====

def readme_table(options):
    rows = ["| option | default | meaning |", "|---|---|---|"]
    rows += [f"| `{k}` | {d} | {m} |" for k, d, m in options]
    return "\n".join([BEGIN] + rows + [END])


def update_readme(path, options, check):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        sys.exit(f"{path}: no options table markers ({BEGIN!r} ... {END!r})")
    new = text[:start] + readme_table(options) + text[end + len(END):]
    if check:
        if new != text:
            sys.exit(f"{path}: the options table is not what doc/options.conf renders; "
                     "run scripts/gen-docs.py --readme README.md")
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)


# ==== roff ====

def roff_text(s):
    """Plain text for a roff line: backslashes, leading dots, minus signs."""
    s = s.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + s if s.startswith((".", "'")) else s


def roff_inline(md):
    """Markdown inline (`code` only) to roff: code in bold."""
    parts = re.split(r"`([^`]*)`", md)
    return "".join(roff_text(p) if i % 2 == 0 else f"\\fB{roff_text(p)}\\fR"
                   for i, p in enumerate(parts))


def header(name, section, version, title):
    return [f'.TH {roff_text(name.upper())} {section} "" "tally {version}" "{title}"']


def options_page(options, version):
    out = header("mosquitto-tally", 5, version, "File Formats")
    out += [".SH NAME", r"mosquitto\-tally \- options of the tally plugin in mosquitto.conf",
            ".SH SYNOPSIS", ".nf", "plugin /usr/lib/tally/mosquitto_tally.so",
            r"plugin_opt_\fIkey\fR \fIvalue\fR", ".fi", ".SH DESCRIPTION",
            roff_inline("tally is a Mosquitto 2.0 plugin that keeps exact, live counters: "
                        "clients publish increments to `counters/<name>/inc`, every node of "
                        "a cluster of bridged brokers publishes the total, retained, on "
                        "`counters/<name>`."),
            ".PP",
            roff_inline("Its options are `plugin_opt_<key> <value>` lines after the `plugin` "
                        "line. An unknown key or a bad value stops the broker at start with a "
                        "message naming the option and what is allowed. Every bound is at "
                        "least 1. Mosquitto must run with `per_listener_settings false` "
                        "(the default). Options are read once, at start: a reload (SIGHUP) "
                        "keeps them, as Mosquitto reloads no plugin; a change needs a "
                        "restart."),
            ".SH OPTIONS"]
    for key, default, meaning in options:
        out += [".TP", f"\\fB{roff_text(key)}\\fR (default: {roff_inline(default)})",
                roff_inline(meaning[:1].upper() + meaning[1:]) + "."]
    out += [".SH FILES", ".TP", "/usr/lib/tally/mosquitto_tally.so",
            "The plugin, by a path with no architecture in it (a link to the file in "
            r"/usr/lib/\fImultiarch\fR/).",
            ".TP", "/etc/mosquitto/conf.d/tally.conf.example",
            "A commented drop\\-in: copy it to tally.conf in the same directory to enable it.",
            ".TP", "/var/lib/tally", "The state directory (owned by the user mosquitto).",
            ".TP", "/usr/share/tally/www", "The dashboard, for a WebSocket listener's http_dir.",
            ".SH SEE ALSO",
            r"\fBtally\fR(1), \fBtally\-exporter\fR(1), \fBmosquitto.conf\fR(5), "
            r"\fBmosquitto\fR(8)"]
    return "\n".join(out) + "\n"


def program_page(name, help_text, version):
    """A page from a program's --help: its first line is the synopsis."""
    lines = help_text.rstrip("\n").splitlines()
    usage = re.sub(r"^[Uu]sage:\s*", "", lines[0])
    body = lines[1:]
    while body and not body[0].strip():
        body.pop(0)
    out = header(name, 1, version, "User Commands")
    out += [".SH NAME", f"{roff_text(name)} \\- {roff_text(PROGRAMS[name])}",
            ".SH SYNOPSIS", roff_text(usage), ".SH DESCRIPTION", ".nf"]
    out += [roff_text(l) if l.strip() else "" for l in body]
    out += [".fi", ".SH SEE ALSO", SEE_ALSO]
    return "\n".join(out) + "\n"


def write_pages(outdir, bindir, version, options):
    os.makedirs(outdir, exist_ok=True)
    pages = {"mosquitto-tally.5": options_page(options, version)}
    for name in PROGRAMS:
        r = subprocess.run([os.path.join(bindir, name), "--help"], capture_output=True,
                           text=True, timeout=30)
        text = r.stdout if "sage" in r.stdout else r.stderr
        if r.returncode != 0 or "sage" not in text:
            sys.exit(f"{name} --help: exit {r.returncode}, no usage:\n{r.stdout}{r.stderr}")
        pages[f"{name}.1"] = program_page(name, text, version)
    for page, text in pages.items():
        with open(os.path.join(outdir, page), "w", encoding="utf-8") as f:
            f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--man")
    ap.add_argument("--bin")
    ap.add_argument("--version", default="0.1.0")
    args = ap.parse_args()
    options = load_options()
    if args.readme:
        update_readme(args.readme, options, args.check)
    if args.man:
        write_pages(args.man, args.bin, args.version, options)


if __name__ == "__main__":
    main()
