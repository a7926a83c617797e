"""The tally command-line client against a real, plain mosquitto.

No plugin is loaded here: the tests publish the retained totals and stats the plugin would
publish, and read what the CLI publishes with mosquitto_sub, so they check the CLI's side of the
contract on its own. The binary comes from $TALLY_CLI (default build/clients/tally).
"""

import json
import os
import pty
import queue
import random
import re
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TALLY = os.environ.get("TALLY_CLI", os.path.join(os.environ.get("TALLY_BUILD", str(REPO / "build")), "clients", "tally"))
STEP_TIMEOUT = 5  # seconds any single expected event may take


def free_port():
    """A 127.0.0.1 port in 20000-29999 that nothing listens on right now."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-29999")


def wait_for_port(port, proc, log):
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port}")


def start_broker(workdir, extra=""):
    port = free_port()
    log = workdir / "mosquitto.log"
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "user root\n"
        f"log_dest file {log}\n"
        "per_listener_settings false\n"
        "allow_anonymous true\n"
        f"listener {port} 127.0.0.1\n" + extra
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_for_port(port, proc, log)
    return proc, port


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def tally_bin():
    if not os.access(TALLY, os.X_OK):
        pytest.fail(f"no tally binary at {TALLY}: build it, or set TALLY_CLI")
    return TALLY


@pytest.fixture
def broker(tmp_path):
    proc, port = start_broker(tmp_path)
    yield port
    stop(proc)


@pytest.fixture
def procs():
    """Background processes started by a test, stopped when it ends whatever happens."""
    started = []
    yield started
    for proc in started:
        stop(proc)


def tally(tally_bin, *args, timeout=10):
    return subprocess.run([tally_bin, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def publish(port, topic, payload, retain=False):
    cmd = ["mosquitto_pub", "-p", str(port), "-t", topic, "-m", payload]
    subprocess.run(cmd + (["-r"] if retain else []), check=True, timeout=STEP_TIMEOUT)


class Lines:
    """Reads a pipe line by line in a thread, so a test can wait for a line with a timeout."""

    def __init__(self, stream):
        self.queue = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self):
        try:
            line = self.queue.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"no line within {STEP_TIMEOUT} s")
        assert line is not None, "the stream ended"
        return line


def subscriber(port, procs, *topics):
    """mosquitto_sub printing 'QOS TOPIC PAYLOAD', returned once it is surely subscribed.

    The sync topic's retained message is the first thing it prints, and only after it has
    subscribed, so anything published afterwards reaches it.
    """
    sync = f"sync/{random.getrandbits(32)}"
    publish(port, sync, "ready", retain=True)
    cmd = ["mosquitto_sub", "-p", str(port), "-q", "2", "-F", "%q %t %p", "-t", sync]
    for topic in topics:
        cmd += ["-t", topic]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    lines = Lines(proc.stdout)
    assert lines.next() == f"0 {sync} ready"
    return lines


# ---- usage ----


def test_help_lists_every_command_and_option(tally_bin):
    result = tally(tally_bin, "--help")
    assert result.returncode == 0
    for word in ["inc NAME [DELTA]", "get NAME...", "watch NAME...", "stats", "--host", "--port",
                 "--username", "--password", "--prefix", "--timeout", "--id", "--qos", "--json",
                 "--verbose", "--help", "--version"]:
        assert word in result.stdout


def test_version_prints_version(tally_bin):
    result = tally(tally_bin, "--version")
    assert result.returncode == 0
    assert re.match(r"tally \d+\.\d+\.\d+", result.stdout)


@pytest.mark.parametrize("args, message", [
    ([], "no command given"),
    (["frob"], "unknown command 'frob'"),
    (["inc"], "wrong number of arguments for 'inc'"),
    (["inc", "a", "1", "2"], "wrong number of arguments for 'inc'"),
    (["stats", "extra"], "wrong number of arguments for 'stats'"),
    (["get", "a", "--bogus"], "unknown option '--bogus'"),
    (["get", "a", "--timeout"], "option '--timeout' needs a value"),
    (["get", "a", "--timeout", "0"], "bad timeout '0'"),
    (["get", "a", "-p", "70000"], "bad port '70000'"),
    (["get", "a", "--id", "k"], "--id and --qos only apply to inc"),
    (["inc", "a", "--qos", "3"], "bad QoS '3'"),
    (["inc", "a", "--id", "k" * 65], "bad --id"),
    (["get", "a", "--json"], "--json only applies to stats"),
    (["get", "a", "--prefix", "c/+"], "bad prefix 'c/+'"),
])
def test_bad_usage_exits_2_without_connecting(tally_bin, args, message):
    result = tally(tally_bin, "-p", free_port(), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "cannot connect" not in result.stderr


@pytest.mark.parametrize("command", [["inc", "a"], ["get", "a"], ["watch", "+"], ["stats"]])
def test_unreachable_broker_exits_2_and_says_why(tally_bin, command):
    port = free_port()
    result = tally(tally_bin, "-p", port, *command)
    assert result.returncode == 2
    assert f"tally: cannot connect to 127.0.0.1:{port}: Connection refused" in result.stderr
    assert result.stdout == ""


# ---- names and deltas ----


@pytest.mark.parametrize("name, reason", [
    ("a/b", "must not contain '/', '+' or '#'"),
    ("a+", "must not contain '/', '+' or '#'"),
    ("#", "must not contain '/', '+' or '#'"),
    ("$SYS", "must not start with '$'"),
    ("", "is empty"),
    ("x" * 201, "is longer than 200 bytes"),
    ("tab\there", "must not contain control characters"),
])
@pytest.mark.parametrize("command", ["inc", "get"])
def test_bad_name_is_rejected_without_connecting(tally_bin, command, name, reason):
    result = tally(tally_bin, "-p", free_port(), command, name)
    assert result.returncode == 2
    assert "bad name" in result.stderr and reason in result.stderr
    assert "cannot connect" not in result.stderr


def test_longest_and_utf8_names_are_accepted(tally_bin, broker):
    publish(broker, "counters/" + "x" * 200, "1", retain=True)
    publish(broker, "counters/café", "2", retain=True)
    result = tally(tally_bin, "-p", broker, "get", "x" * 200, "café")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{'x' * 200} 1\ncafé 2\n"


@pytest.mark.parametrize("delta, reason", [
    ("1.5", "whole number"),
    ("abc", "whole number"),
    ("5x", "whole number"),
    ("-", "whole number"),
    (" 5", "whole number"),
    ("9007199254740992", "between -9007199254740991 and 9007199254740991"),
    ("-9007199254740992", "between -9007199254740991 and 9007199254740991"),
    ("99999999999999999999999", "between -9007199254740991 and 9007199254740991"),
])
def test_bad_delta_is_rejected_without_connecting(tally_bin, delta, reason):
    result = tally(tally_bin, "-p", free_port(), "inc", "apples", delta)
    assert result.returncode == 2
    assert "bad delta" in result.stderr and reason in result.stderr
    assert "cannot connect" not in result.stderr


def test_watch_rejects_partial_wildcards(tally_bin):
    result = tally(tally_bin, "-p", free_port(), "watch", "a+")
    assert result.returncode == 2
    assert "bad name" in result.stderr


# ---- inc ----


def test_inc_publishes_the_contract_payloads(tally_bin, broker, procs):
    lines = subscriber(broker, procs, "counters/+/inc", "tallies/+/inc")
    cases = [
        (["inc", "apples", "5"], "1 counters/apples/inc 5"),
        (["inc", "apples", "-3"], "1 counters/apples/inc -3"),
        (["inc", "apples", "+2"], "1 counters/apples/inc 2"),
        (["inc", "apples", "9007199254740991"], "1 counters/apples/inc 9007199254740991"),
        (["inc", "apples"], "1 counters/apples/inc "),
        (["inc", "apples", "4", "--qos", "2"], "2 counters/apples/inc 4"),
        (["inc", "apples", "4", "--qos", "0"], "0 counters/apples/inc 4"),
        (["--prefix", "tallies", "inc", "pears", "1"], "1 tallies/pears/inc 1"),
    ]
    for args, expected in cases:
        result = tally(tally_bin, "-p", broker, *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and result.stderr == ""
        assert lines.next() == expected


def test_inc_with_id_publishes_json(tally_bin, broker, procs):
    lines = subscriber(broker, procs, "counters/+/inc")
    # Options after the command too, and a negative delta that is not an option.
    result = tally(tally_bin, "inc", "apples", "-7", "--id", "k-123", "-p", broker)
    assert result.returncode == 0, result.stderr
    qos, topic, payload = lines.next().split(" ", 2)
    assert (qos, topic) == ("1", "counters/apples/inc")
    assert json.loads(payload) == {"delta": -7, "id": "k-123"}

    result = tally(tally_bin, "-p", broker, "inc", "apples", "--id", "k-124")
    assert result.returncode == 0, result.stderr
    assert json.loads(lines.next().split(" ", 2)[2]) == {"delta": 1, "id": "k-124"}


def test_inc_verbose_reports_the_acknowledgement(tally_bin, broker):
    result = tally(tally_bin, "-p", broker, "-v", "inc", "apples", "5")
    assert result.returncode == 0
    assert "published '5' to counters/apples/inc (QoS 1): acknowledged" in result.stderr


@pytest.mark.parametrize("qos", ["1", "2"])
def test_inc_rejected_by_the_broker_exits_1_with_the_reason(tally_bin, tmp_path, qos):
    # An ACL makes plain mosquitto answer the PUBLISH with reason code 0x87, as the plugin does
    # for bad input.
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite counters/allowed/#\n")
    proc, port = start_broker(tmp_path, f"acl_file {acl}\n")
    try:
        result = tally(tally_bin, "-p", port, "inc", "denied", "1", "--qos", qos)
        assert result.returncode == 1
        assert "the increment of denied was rejected: Not authorized (0x87)" in result.stderr
        assert tally(tally_bin, "-p", port, "inc", "allowed", "--qos", qos).returncode == 0
    finally:
        stop(proc)


# ---- get ----


def test_get_prints_retained_totals_in_argument_order(tally_bin, broker):
    publish(broker, "counters/apples", "42", retain=True)
    publish(broker, "counters/pears", "-7", retain=True)
    result = tally(tally_bin, "-p", broker, "get", "pears", "apples")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pears -7\napples 42\n"


def test_get_reads_under_the_prefix(tally_bin, broker):
    publish(broker, "tallies/apples", "3", retain=True)
    result = tally(tally_bin, "-p", broker, "--prefix", "tallies", "get", "apples")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "apples 3\n"


def test_get_without_a_total_exits_1_after_the_timeout(tally_bin, broker):
    publish(broker, "counters/apples", "42", retain=True)
    started = time.monotonic()
    result = tally(tally_bin, "-p", broker, "get", "apples", "nothing", "--timeout", "0.5")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stdout == "apples 42\n"
    assert "no total for nothing within 0.5 s" in result.stderr
    assert 0.4 < elapsed < 3


# ---- watch ----


def start_watch(tally_bin, port, procs, *names):
    proc = subprocess.Popen([tally_bin, "-p", str(port), "watch", *names],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc, Lines(proc.stdout)


def interrupt(proc):
    proc.send_signal(signal.SIGINT)
    return proc.wait(STEP_TIMEOUT)


def test_watch_prints_each_update_and_exits_0_on_sigint(tally_bin, broker, procs):
    publish(broker, "counters/apples", "0", retain=True)
    proc, lines = start_watch(tally_bin, broker, procs, "apples")
    assert lines.next() == "apples 0"  # the retained total: watch is subscribed
    for value in ["1", "2", "3"]:
        publish(broker, "counters/apples", value)
    assert [lines.next() for _ in range(3)] == ["apples 1", "apples 2", "apples 3"]
    assert interrupt(proc) == 0
    assert proc.stderr.read() == ""


def test_watch_plus_follows_every_counter_and_only_totals(tally_bin, broker, procs):
    publish(broker, "counters/apples", "1", retain=True)
    proc, lines = start_watch(tally_bin, broker, procs, "+")
    assert lines.next() == "apples 1"
    publish(broker, "counters/pears/inc", "5")  # an increment, not a total: not shown
    publish(broker, "counters/pears/state", "{}")
    publish(broker, "other/figs", "9")
    publish(broker, "counters/pears", "5")
    publish(broker, "counters/apples", "2")
    assert [lines.next() for _ in range(2)] == ["pears 5", "apples 2"]
    assert interrupt(proc) == 0


def test_watch_several_names(tally_bin, broker, procs):
    publish(broker, "counters/apples", "1", retain=True)
    proc, lines = start_watch(tally_bin, broker, procs, "apples", "pears")
    assert lines.next() == "apples 1"
    publish(broker, "counters/figs", "7")
    publish(broker, "counters/pears", "4")
    assert lines.next() == "pears 4"
    assert interrupt(proc) == 0


def read_until(fd, pattern):
    """Reads a terminal until its output matches pattern; returns the output so far."""
    output = b""
    deadline = time.monotonic() + STEP_TIMEOUT
    while not re.search(pattern, output):
        left = deadline - time.monotonic()
        assert left > 0, f"no match for {pattern!r} in {output[-500:]!r}"
        if select.select([fd], [], [], left)[0]:
            output += os.read(fd, 4096)
    return output


def test_watch_on_a_terminal_redraws_a_table(tally_bin, broker, procs):
    publish(broker, "counters/apples", "10", retain=True)
    master, slave = pty.openpty()
    proc = subprocess.Popen([tally_bin, "-p", str(broker), "watch", "apples"], stdout=slave,
                            stderr=subprocess.PIPE, text=True)
    os.close(slave)
    procs.append(proc)
    try:
        read_until(master, rb"NAME +VALUE +RATE/S +UPDATED\r\napples +10 ")
        publish(broker, "counters/apples", "20")
        screen = read_until(master, rb"apples +20 +\d+\.\d +\d\d:\d\d:\d\d")
        assert b"\033[H\033[J" in screen  # redrawn in place, not scrolled
        assert interrupt(proc) == 0
        assert proc.stderr.read() == ""
    finally:
        os.close(master)


# ---- stats ----


def node_stats(now_ms):
    return {
        "node": "n1", "counters": 12, "devices": 3, "viewers": 5, "applied": 1000,
        "rejected": {"bad_name": 2, "out_of_range": 1}, "duplicates": 7,
        "repl": {"msgs_in": 40, "bytes_in": 4000, "msgs_out": 41, "bytes_out": 4100},
        "peers": {"n2": {"last_heard_ms": now_ms - 1500},
                  "n3": {"last_heard_ms": now_ms - 300000}},
    }


def test_stats_prints_one_row_per_node(tally_bin, broker):
    stats = node_stats(int(time.time() * 1000))
    publish(broker, "$tally/stats/n1", json.dumps(stats), retain=True)
    publish(broker, "$tally/stats/n0", json.dumps({"node": "n0", "counters": 0}), retain=True)
    result = tally(tally_bin, "-p", broker, "stats", "--timeout", "0.5")
    assert result.returncode == 0, result.stderr
    header, n0, n1 = result.stdout.splitlines()
    assert header.split() == ["NODE", "COUNTERS", "DEVICES", "VIEWERS", "APPLIED", "REJECTED",
                              "DUPLICATES", "REPL", "IN", "REPL", "OUT", "PEERS", "(LAST",
                              "HEARD)"]
    assert n0.split() == ["n0", "0", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert n1.split()[:9] == ["n1", "12", "3", "5", "1000", "3", "7", "40", "41"]
    assert re.search(r"n2 [1-4]\.\ds ago, n3 5m ago$", n1), n1


def test_stats_json_prints_each_node_object_on_one_line(tally_bin, broker):
    stats = node_stats(int(time.time() * 1000))
    publish(broker, "$tally/stats/n1", json.dumps(stats, indent=2), retain=True)
    result = tally(tally_bin, "-p", broker, "stats", "--json", "--timeout", "0.5")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [stats]


def test_stats_without_any_node_exits_1(tally_bin, broker):
    result = tally(tally_bin, "-p", broker, "stats", "--timeout", "0.3")
    assert result.returncode == 1
    assert "no node published stats" in result.stderr
