"""The Debian package (issue 15), as a user who already runs Mosquitto
would take it: built from this tree with dpkg-buildpackage, its contents
checked, lintian run, installed with dpkg -i on this (throwaway, root) CI
machine, the drop-in enabled, a broker started with the system's
/etc/mosquitto/mosquitto.conf, counting, and its figures scraped through
the installed tally-exporter by a real Prometheus.

The broker is started by the test, not by systemd (the Debian service may
or may not run here), from the system config with only what would clash
with a running service changed: a test listener on 127.0.0.1, and its own
pid file, persistence directory and log. The package stays installed (it
owns what `cmake --install build` would put there); the enabled drop-in is
removed again.
"""
import glob
import os
import pwd
import shutil
import subprocess
import uuid

import pytest

from conftest import REPO, free_port, wait_for
from metrics import Exporter, Prometheus, http_get

pytestmark = [pytest.mark.nosan, pytest.mark.slow,
              pytest.mark.xdist_group("package"),  # one build, one dpkg at a time
              pytest.mark.skipif(os.geteuid() != 0, reason="dpkg -i needs root")]
DROPIN_DIR = "/etc/mosquitto/conf.d"
DROPIN = os.path.join(DROPIN_DIR, "tally.conf")
STABLE = "/usr/lib/tally/mosquitto_tally.so"


def run(*args, cwd=None, timeout=120):
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _not_source(directory, names):
    """What .gitignore leaves out (builds, node_modules, generated files), and
    .git: the tree is copied without git, which a fresh Debian 12 lacks and a
    tree unpacked from a tarball has no use for."""
    rel = os.path.relpath(directory, REPO)
    return {n for n in names
            if n in (".git", "node_modules", "__pycache__", ".pytest_cache")
            or n.endswith((".o", ".so"))
            or (rel == "." and (n in ("build", "tmp") or n.startswith("build-")))
            or os.path.join(rel, n) in ("clients/web/dist", "conf/secure/passwords")}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """Builds the package from a copy of this tree; returns the .deb's path."""
    top = tmp_path_factory.mktemp("package")
    src = top / "tally"
    shutil.copytree(REPO, src, symlinks=True, ignore=_not_source)
    modules = os.path.join(REPO, "clients", "web", "node_modules")
    if os.path.isdir(modules):  # else clients/web/build.sh runs npm ci
        os.symlink(modules, src / "clients" / "web" / "node_modules")
    # At the lowest priority: the build runs beside other tests (scripts/test.sh), whose
    # brokers it must not hold up (ci74: a timing bound of test_groups missed by 0.7 s).
    run("nice", "-n", "19", "dpkg-buildpackage", "-us", "-uc", "-b", cwd=src, timeout=900)
    debs = glob.glob(str(top / "tally_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def test_package_contents(package):
    multiarch = run("dpkg-architecture", "-qDEB_HOST_MULTIARCH").strip()
    listing = run("dpkg-deb", "-c", package)
    entries = {line.split()[5].lstrip("."): line for line in listing.splitlines()}
    for path in (f"/usr/lib/{multiarch}/mosquitto_tally.so",
                 "/etc/mosquitto/conf.d/tally.conf.example",
                 "/usr/share/tally/www/index.html", "/usr/share/tally/www/app.js",
                 "/usr/bin/tally", "/usr/bin/tally-exporter", "/usr/bin/tally-load",
                 "/usr/share/man/man1/tally.1.gz", "/usr/share/man/man1/tally-exporter.1.gz",
                 "/usr/share/man/man1/tally-load.1.gz", "/usr/share/man/man5/mosquitto-tally.5.gz",
                 "/lib/systemd/system/tally-exporter.service", "/var/lib/tally/"):
        assert path in entries, f"{path} not in the package:\n{listing}"
    # The stable path: a relative link to the plugin of this architecture.
    assert f"{STABLE} -> ../{multiarch}/mosquitto_tally.so" in listing
    # Installing must not enable anything: no .conf in conf.d.
    assert not any(p.startswith(DROPIN_DIR) and p.endswith(".conf") for p in entries)
    assert run("dpkg-deb", "-f", package, "Package").strip() == "tally"
    control = run("dpkg-deb", "-I", package)
    assert "mosquitto (>= 2.0)" in control


def test_lintian_finds_no_error_or_warning(package):
    changes = glob.glob(os.path.join(os.path.dirname(package), "tally_*.changes"))[0]
    r = subprocess.run(["lintian", "--pedantic", "--info", changes], capture_output=True,
                       text=True, timeout=600)
    tags = [l for l in r.stdout.splitlines() if l[:2] in ("E:", "W:")]
    assert not tags, r.stdout
    print(r.stdout)


def system_config(workdir, port):
    """/etc/mosquitto/mosquitto.conf with a test listener and the test's own
    pid file, persistence directory and log (owned by mosquitto, the user
    the broker drops to)."""
    os.chmod(workdir, 0o755)  # mkdtemp's 0700 would keep the user mosquitto out
    own = os.path.join(workdir, "broker")
    os.makedirs(own)
    user = pwd.getpwnam("mosquitto")
    os.chown(own, user.pw_uid, user.pw_gid)
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true"]
    with open("/etc/mosquitto/mosquitto.conf") as f:
        for line in f:
            key = line.split(" ", 1)[0]
            if key == "pid_file":
                line = f"pid_file {own}/mosquitto.pid\n"
            elif key == "persistence_location":
                line = f"persistence_location {own}/\n"
            elif key == "log_dest":
                line = f"log_dest file {own}/mosquitto.log\n"
            lines.append(line.rstrip("\n"))
    assert f"include_dir {DROPIN_DIR}" in lines, "the system config does not read conf.d"
    path = os.path.join(workdir, "mosquitto.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, os.path.join(own, "mosquitto.log")


def stats_node(port):
    r = subprocess.run(["mosquitto_sub", "-p", str(port), "-t", "$tally/stats/+", "-C", "1",
                        "-W", "10", "-F", "%t"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().rsplit("/", 1)[1]


def test_installed_package_counts_through_the_stable_path(package, workdir):
    run("dpkg", "-i", package, timeout=300)
    state = os.stat("/var/lib/tally")
    assert pwd.getpwuid(state.st_uid).pw_name == "mosquitto"
    assert os.path.realpath(STABLE).startswith("/usr/lib/")
    assert not os.path.exists(DROPIN), "the drop-in must not be enabled by installing"

    shutil.copy("/etc/mosquitto/conf.d/tally.conf.example", DROPIN)  # README's step
    port = free_port()
    conf, log = system_config(workdir, port)
    broker = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    exporter = prom = None
    try:
        def up():
            assert broker.poll() is None, f"mosquitto exited:\n{broker.stderr.read()}" \
                + (open(log).read() if os.path.exists(log) else "")
            return subprocess.run(["mosquitto_pub", "-p", str(port), "-t", "hello", "-n"],
                                  capture_output=True).returncode == 0
        wait_for(up, 15, what="the system's mosquitto with tally")
        with open(log) as f:
            assert f"Loading plugin: {STABLE}" in f.read()
        with open(f"/proc/{broker.pid}/maps") as f:
            assert os.path.realpath(STABLE) in f.read(), "the installed plugin is not loaded"

        name = f"pkg-{uuid.uuid4().hex[:8]}"
        for delta in ("5", "2"):
            run("mosquitto_pub", "-p", str(port), "-q", "1", "-t", f"counters/{name}/inc",
                "-m", delta)
        wait_for(lambda: run("tally", "-p", str(port), "get", name).split() == [name, "7"],
                 10, what=f"the installed CLI to read {name} == 7")
        wait_for(lambda: os.listdir("/var/lib/tally"), 10, what="state in /var/lib/tally")

        node = stats_node(port)
        exporter = Exporter(workdir, port, binary="/usr/bin/tally-exporter")
        prom = Prometheus(workdir, [f"127.0.0.1:{exporter.port}"])
        query = f'tally_increments_applied_total{{node="{node}"}}'
        wait_for(lambda: prom.value(query) == 2, 30, interval=0.3,
                 what=f"prometheus: {query} == 2")
        assert "tally_counters" in http_get(f"http://127.0.0.1:{exporter.port}/metrics")
    finally:
        for p in (prom, exporter):
            if p:
                p.stop()
        broker.terminate()
        broker.wait(20)
        os.remove(DROPIN)
