"""Shared pieces of the benchmarks: brokers on free loopback ports, the tally-load client.

Standard library only, so the benches run with any python3. Figures, not pass/fail: a helper
raises BenchError when a run cannot produce a figure (broker did not start, load timed out).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ports import pick_free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "build" / "plugin" / "mosquitto_tally.so"
FLOOR_PLUGIN = REPO / "build" / "tests" / "tally_floor.so"
LOAD_SOURCE = REPO / "clients" / "load.c"
LOAD_BUILT = REPO / "build" / "clients" / "tally-load"

# Mosquitto advertises max_inflight_messages (default 20) as its MQTT v5 Receive Maximum; the
# benches ask for 500 messages in flight, so both brokers must allow that many.
BENCH_INFLIGHT = 500

_ports_taken = set()


class BenchError(Exception):
    pass


def broker_kinds(plain_only):
    """The brokers to compare: plain, and tally unless asked not to or the plugin is not built."""
    if plain_only:
        return ["plain"]
    if not PLUGIN.is_file():
        print("%s not built: plain mosquitto only" % PLUGIN)
        return ["plain"]
    return ["plain", "tally"]


def free_port():
    """A port in 20000-29999 that nothing on 127.0.0.1 listens on, not handed out before."""
    port = pick_free_port(20000, 30000, _ports_taken, tries=200)
    if port is None:
        raise BenchError("no free port in 20000-29999")
    return port


def tally_load(workdir):
    """Path of the tally-load binary: the CMake build's when it is not older than load.c,
    else one compiled from source into workdir."""
    if LOAD_BUILT.is_file() and LOAD_BUILT.stat().st_mtime >= LOAD_SOURCE.stat().st_mtime:
        return LOAD_BUILT
    binary = Path(workdir) / "tally-load"
    if not binary.exists():
        cmd = ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-O2",
               "-o", str(binary), str(LOAD_SOURCE), "-lmosquitto", "-lpthread"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise BenchError("cannot build tally-load:\n" + result.stderr)
    return binary


def run_load(binary, port, args, timeout=120):
    """Runs tally-load against 127.0.0.1:port; returns its JSON report as a dict."""
    cmd = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--timeout", str(timeout)]
    cmd += [str(a) for a in args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired as e:
        raise BenchError("tally-load did not stop by itself") from e
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise BenchError("tally-load printed nothing: " + result.stderr.strip())
    report = json.loads(lines[-1])
    if result.returncode != 0 or report["failed"] != 0:
        raise BenchError("tally-load incomplete: %s %s" % (lines[-1], result.stderr.strip()))
    return report


class Broker:
    """A mosquitto on a free 127.0.0.1 port, logging to <workdir>/<name>.log.

    with_plugin loads build/plugin/mosquitto_tally.so (or the plugin at path `plugin`) with the
    given plugin_opt_ lines. Use as a context manager: the broker is stopped (and killed if it
    will not stop) on exit.
    """

    def __init__(self, workdir, name, with_plugin=False, plugin_opts=None, extra=(),
                 plugin=PLUGIN):
        self.workdir = Path(workdir)
        self.name = name
        self.port = free_port()
        self.log = self.workdir / (name + ".log")
        self.conf = self.workdir / (name + ".conf")
        lines = [
            "user root",
            "log_dest file %s" % self.log,
            "per_listener_settings false",
            "set_tcp_nodelay true",
            "allow_anonymous true",
            "max_inflight_messages %d" % BENCH_INFLIGHT,
            "listener %d 127.0.0.1" % self.port,
        ]
        if with_plugin:
            lines.append("plugin %s" % plugin)
            lines += ["plugin_opt_%s %s" % kv for kv in (plugin_opts or {}).items()]
        lines += list(extra)
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], cwd=self.workdir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError("%s exited at start, see %s" % (self.name, self.log))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BenchError("%s did not listen on %d within 10 s" % (self.name, self.port))

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def rss_bytes(self):
        """The broker's resident set size now, from /proc/<pid>/status."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise BenchError("no VmRSS for pid %d" % self.proc.pid)

    def settled_rss(self, limit_s, divisor):
        """VmRSS once two reads 0.5 s apart differ by at most 1/divisor of the first, or after
        limit_s."""
        deadline = time.monotonic() + limit_s
        last = self.rss_bytes()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            rss = self.rss_bytes()
            if abs(rss - last) <= last // divisor:
                return rss
            last = rss
        return last

    def cpu_seconds(self):
        """User plus system CPU time the broker has used so far, from /proc/<pid>/stat."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 of proc(5): utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def retained(self, topic, wait=3):
        """The payload of the retained message on topic, or None if none arrives within wait s."""
        cmd = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-t", topic,
               "-C", "1", "-W", str(wait)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=wait + 10)
        return result.stdout.strip() if result.returncode == 0 and result.stdout else None


def run_bench(prefix, bench):
    """Calls bench(workdir) with a fresh directory for configs and logs; returns an exit status.

    The directory is removed after a clean run unless TALLY_BENCH_KEEP is set, and kept (and
    named) when the bench fails, so the broker logs can be read.
    """
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        bench(path)
    except BenchError as e:
        print("bench failed: %s\nconfigs and logs kept in %s" % (e, path))
        return 1
    if os.environ.get("TALLY_BENCH_KEEP"):
        print("configs and logs kept in %s" % path)
    else:
        shutil.rmtree(path, ignore_errors=True)
    return 0
