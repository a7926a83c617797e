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

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import chain, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
TALLY = os.environ.get("TALLY_CLI", os.path.join(os.environ.get("TALLY_BUILD", str(REPO / "build")), "clients", "tally"))
STEP_TIMEOUT = 5  # seconds any single expected event may take


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


def wait_for_value(get, timeout=STEP_TIMEOUT):
    """Polls get() until it returns something truthy; fails after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = get()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"nothing within {timeout} s")


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
    for word in ["inc NAME [DELTA]", "get NAME...", "watch NAME...", "stats", "health [NODE...]",
                 "--host", "--port", "--username", "--password", "--protocol", "--cafile",
                 "--cert", "--key", "--insecure", "--prefix", "--timeout", "--id", "--qos",
                 "--peer-timeout", "--json", "--verbose", "--help", "--version"]:
        assert word in result.stdout


def test_version_prints_version(tally_bin):
    result = tally(tally_bin, "--version")
    assert result.returncode == 0
    # The version is the project's, from CMakeLists.txt's project(VERSION), not a copy.
    project = re.search(r"project\(tally VERSION (\S+)", (REPO / "CMakeLists.txt").read_text())
    assert result.stdout.startswith(f"tally {project.group(1)} (libmosquitto ")


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
    (["get", "a", "--prefix", "c/+"], "bad prefix 'c/+'"),
    (["get", "a", "-V", "4"], "bad protocol '4'"),
    (["get", "a", "--peer-timeout", "100"], "--peer-timeout only applies to stats and health"),
    (["stats", "--peer-timeout", "0"], "bad peer timeout '0'"),
    (["get", "a", "--cert", "c.pem", "--key", "k.pem"], "--cert, --key and --insecure need --cafile"),
    (["get", "a", "--insecure"], "--cert, --key and --insecure need --cafile"),
    (["get", "a", "--cafile", "ca.crt", "--cert", "c.pem"], "--cert and --key go together"),
    (["health", "bad/node"], "bad node id"),
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


BAD_CHAR = "must not contain '/', '+', '#' or control characters"


@pytest.mark.parametrize("name, reason", [
    ("a/b", BAD_CHAR),
    ("a+", BAD_CHAR),
    ("#", BAD_CHAR),
    ("$SYS", "must not start with '$'"),
    ("", "is empty"),
    ("x" * 201, "is longer than 200 bytes"),
    ("tab\there", BAD_CHAR),
    ("c1\u0085", BAD_CHAR),  # a C1 control character: the plugin's rule, now the CLI's too
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
#
# A plain broker has no plugin to answer an increment's Response Topic: the CLI waits --timeout
# for an answer, then falls back on the PUBACK (the old behaviour). QUICK keeps those waits short.
QUICK = ("--timeout", "1")


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
        (["-V", "311", "inc", "apples", "6"], "1 counters/apples/inc 6"),
    ]
    for args, expected in cases:
        result = tally(tally_bin, "-p", broker, *QUICK, *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and result.stderr == ""
        assert lines.next() == expected


def test_inc_with_id_publishes_json(tally_bin, broker, procs):
    lines = subscriber(broker, procs, "counters/+/inc")
    # Options after the command too, and a negative delta that is not an option.
    result = tally(tally_bin, "inc", "apples", "-7", "--id", "k-123", "-p", broker, *QUICK)
    assert result.returncode == 0, result.stderr
    qos, topic, payload = lines.next().split(" ", 2)
    assert (qos, topic) == ("1", "counters/apples/inc")
    assert json.loads(payload) == {"delta": -7, "id": "k-123"}

    result = tally(tally_bin, "-p", broker, "inc", "apples", "--id", "k-124", *QUICK)
    assert result.returncode == 0, result.stderr
    assert json.loads(lines.next().split(" ", 2)[2]) == {"delta": 1, "id": "k-124"}


def test_inc_takes_every_id_the_plugin_takes(tally_bin, broker, procs):
    """The old CLI checked ids with its own copy of the rules and refused U+FDD0 and U+FFFE,
    which the plugin's codec takes: now the codec decides."""
    lines = subscriber(broker, procs, "counters/+/inc")
    for key in ["k\ufdd0", "k\ufffe", "ключ-1"]:
        result = tally(tally_bin, "-p", broker, "inc", "apples", "--id", key, *QUICK)
        assert result.returncode == 0, result.stderr
        assert json.loads(lines.next().split(" ", 2)[2]) == {"delta": 1, "id": key}


def test_inc_verbose_reports_the_acknowledgement(tally_bin, broker):
    result = tally(tally_bin, "-p", broker, "-v", "inc", "apples", "5", *QUICK)
    assert result.returncode == 0
    assert "published '5' to counters/apples/inc (QoS 1): acknowledged" in result.stderr
    assert "no answer with the total within 1 s; the PUBACK tells" in result.stderr


@pytest.mark.parametrize("protocol", ["5", "311"])
@pytest.mark.parametrize("qos", ["1", "2"])
def test_inc_rejected_by_the_broker_exits_1_with_the_reason(tally_bin, tmp_path, qos, protocol):
    # An ACL makes plain mosquitto answer the PUBLISH with reason code 0x87, as the plugin does
    # for bad input. MQTT 3.1.1 has no reason codes: the broker acknowledges and drops it.
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite counters/allowed/#\ntopic readwrite tally/resp/#\n")
    proc, port = start_broker(tmp_path, f"acl_file {acl}\n")
    try:
        result = tally(tally_bin, "-p", port, "-V", protocol, "inc", "denied", "1", "--qos", qos,
                       *QUICK)
        if protocol == "5":
            assert result.returncode == 1
            assert "the increment of denied was rejected: Not authorized (0x87)" in result.stderr
        else:
            assert result.returncode == 0, result.stderr
        assert tally(tally_bin, "-p", port, "-V", protocol, "inc", "allowed", "--qos", qos,
                     *QUICK).returncode == 0
    finally:
        stop(proc)


def test_inc_over_mqtt_311_does_not_wait_for_an_answer(tally_bin, broker):
    started = time.monotonic()
    result = tally(tally_bin, "-p", broker, "--protocol", "mqttv311", "inc", "apples",
                   "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 4  # the PUBACK is enough: no 5 s wait for an answer


class Responder:
    """Answers increments as protocols.md section 1 says the plugin does, on a plain broker:
    {"name","result","value"} on the Response Topic, with the Correlation Data. It checks the
    CLI's side of the protocol on its own; the tests against the real plugin are below."""

    def __init__(self, port, refuse=()):
        self.totals, self.ids, self.refuse = {}, set(), dict(refuse)
        self.requests = []
        ready = threading.Event()
        self.c = mqtt.Client(client_id=f"responder-{random.getrandbits(32)}",
                             protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe("counters/+/inc", qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(STEP_TIMEOUT), "the responder did not subscribe"

    def _on_message(self, c, u, m):
        self.requests.append(m)
        topic = getattr(m.properties, "ResponseTopic", None)
        if not topic:
            return
        name = m.topic.split("/")[1]
        body = json.loads(m.payload) if m.payload.startswith(b"{") else {}
        delta = body.get("delta", int(m.payload) if m.payload and not body else 1)
        if name in self.refuse:
            answer = {"name": name, "result": "refused", "reason": self.refuse[name]}
        elif "id" in body and body["id"] in self.ids:
            answer = {"name": name, "result": "duplicate", "value": self.totals[name]}
        else:
            self.ids.add(body.get("id", None))
            self.totals[name] = self.totals.get(name, 0) + delta
            answer = {"name": name, "result": "applied", "value": self.totals[name]}
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = m.properties.CorrelationData
        c.publish(topic, json.dumps(answer), qos=1, properties=props)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def responder(broker):
    r = Responder(broker, refuse={"full": "max_counters_reached"})
    yield r
    r.close()


def test_inc_prints_the_total_from_the_answer(tally_bin, broker, responder):
    assert tally(tally_bin, "-p", broker, "inc", "likes", "5").stdout == "likes 5\n"
    started = time.monotonic()
    result = tally(tally_bin, "-p", broker, "inc", "likes", "-2", "--timeout", "5")
    assert (result.returncode, result.stdout, result.stderr) == (0, "likes 3\n", "")
    assert time.monotonic() - started < 4  # the answer ends the wait, not the timeout
    request = responder.requests[-1]
    assert request.properties.ResponseTopic.startswith("tally/resp/tally-")
    assert len(request.properties.CorrelationData) == 16


def test_inc_says_duplicate_for_a_repeated_id(tally_bin, broker, responder):
    first = tally(tally_bin, "-p", broker, "inc", "likes", "2", "--id", "order-1")
    assert (first.returncode, first.stdout) == (0, "likes 2\n")
    again = tally(tally_bin, "-p", broker, "inc", "likes", "2", "--id", "order-1")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "likes 2 (duplicate: this id was already counted)\n"


def test_inc_names_the_reason_of_a_refusal(tally_bin, broker, responder):
    result = tally(tally_bin, "-p", broker, "inc", "full")
    assert result.returncode == 1
    assert result.stderr == "tally: the increment of full was refused: max_counters_reached\n"
    assert result.stdout == ""


def test_inc_json_prints_the_answer(tally_bin, broker, responder):
    result = tally(tally_bin, "-p", broker, "--json", "inc", "likes", "9007199254740991")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "likes", "result": "applied",
                                         "value": 9007199254740991}
    result = tally(tally_bin, "-p", broker, "--json", "inc", "full")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"name": "full", "result": "refused",
                                         "reason": "max_counters_reached"}


def test_inc_json_without_an_answer_says_acknowledged(tally_bin, broker):
    result = tally(tally_bin, "-p", broker, "--json", "inc", "likes", *QUICK)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "likes", "result": "acknowledged"}


def test_inc_over_mqtt_311_sends_no_response_topic(tally_bin, broker, responder):
    result = tally(tally_bin, "-p", broker, "-V", "311", "inc", "likes", "4")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    wait_for_value(lambda: responder.requests)
    assert responder.totals == {}  # it had nowhere to answer


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


def test_get_json_prints_an_object_per_name_and_null_for_a_missing_total(tally_bin, broker):
    publish(broker, "counters/apples", "9007199254740991", retain=True)
    publish(broker, "counters/odd", "007x", retain=True)
    result = tally(tally_bin, "-p", broker, "--json", "get", "apples", "odd", "nothing",
                   "--timeout", "0.5")
    assert result.returncode == 1
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"name": "apples", "value": 9007199254740991},
        {"name": "odd", "value": "007x"},  # not a total the plugin writes: kept as text
        {"name": "nothing", "value": None}]
    assert "no total for nothing within 0.5 s" in result.stderr


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


def test_watch_json_prints_an_object_per_update(tally_bin, broker, procs):
    publish(broker, "counters/apples", "1", retain=True)
    proc = subprocess.Popen([tally_bin, "-p", str(broker), "watch", "+", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    lines = Lines(proc.stdout)
    assert json.loads(lines.next()) == {"name": "apples", "value": 1}
    publish(broker, "counters/pears", "-5")
    assert json.loads(lines.next()) == {"name": "pears", "value": -5}
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


def now_ms():
    return int(time.time() * 1000)


def node_stats(now, n3_heard_ago=300000, **extra):
    return {
        "node": "n1", "time_ms": now, "counters": 12, "devices": 3, "viewers": 5,
        "applied": 1000, "rejected": {"bad_name": 2, "out_of_range": 1}, "duplicates": 7,
        "repl": {"msgs_in": 40, "bytes_in": 4000, "msgs_out": 41, "bytes_out": 4100},
        "peers": {"n2": {"last_heard_ms": now - 1500, "alive": True},
                  "n3": {"last_heard_ms": now - n3_heard_ago, "alive": True}},
        **extra,
    }


def test_stats_prints_one_row_per_node_and_dead_peers_as_dead(tally_bin, broker):
    publish(broker, "$tally/stats/n1", json.dumps(node_stats(now_ms())), retain=True)
    publish(broker, "$tally/stats/n0", json.dumps({"node": "n0", "counters": 0}), retain=True)
    result = tally(tally_bin, "-p", broker, "stats", "--timeout", "0.5")
    assert result.returncode == 1  # n3 has been silent for 5 minutes
    assert "tally: 1 peer is silent past the peer timeout (DEAD)" in result.stderr
    header, n0, n1 = result.stdout.splitlines()
    assert header.split() == ["NODE", "COUNTERS", "DEVICES", "VIEWERS", "APPLIED", "REJECTED",
                              "DUPLICATES", "REPL", "IN", "REPL", "OUT", "PEERS", "(LAST",
                              "HEARD)"]
    assert n0.split() == ["n0", "0", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert n1.split()[:9] == ["n1", "12", "3", "5", "1000", "3", "7", "40", "41"]
    assert re.search(r"n2 [1-4]\.\ds ago, n3 DEAD 5m ago$", n1), n1


def test_stats_exits_0_when_every_peer_is_alive(tally_bin, broker):
    doc = node_stats(now_ms(), n3_heard_ago=2000)
    # Heard "in the future" (clocks disagree): heard just now.
    doc["peers"]["n4"] = {"last_heard_ms": now_ms() + 60000, "alive": True}
    publish(broker, "$tally/stats/n1", json.dumps(doc), retain=True)
    result = tally(tally_bin, "-p", broker, "stats", "--timeout", "0.5")
    assert result.returncode == 0, result.stderr
    assert "DEAD" not in result.stdout


@pytest.mark.parametrize("peer, options, extra", [
    ({"last_heard_ms": -1000, "alive": False}, [], {}),  # the node itself says so
    ({"last_heard_ms": -3000, "alive": True}, [], {"peer_timeout_ms": 2000}),  # its own timeout
    ({"last_heard_ms": -3000, "alive": True}, ["--peer-timeout", "2000"], {}),  # ours
], ids=["not-alive", "document-timeout", "option-timeout"])
def test_stats_marks_a_peer_dead(tally_bin, broker, peer, options, extra):
    now = now_ms()
    doc = {"node": "n1", "time_ms": now, **extra,
           "peers": {"n2": {**peer, "last_heard_ms": now + peer["last_heard_ms"]}}}
    publish(broker, "$tally/stats/n1", json.dumps(doc), retain=True)
    result = tally(tally_bin, "-p", broker, "stats", "--timeout", "0.5", *options)
    assert result.returncode == 1
    assert re.search(r"n2 DEAD \d\.\ds ago$", result.stdout.splitlines()[1])


def test_stats_json_prints_each_node_object_on_one_line(tally_bin, broker):
    stats = node_stats(now_ms(), n3_heard_ago=2000, applied=9007199254740991)
    publish(broker, "$tally/stats/n1", json.dumps(stats, indent=2), retain=True)
    result = tally(tally_bin, "-p", broker, "stats", "--json", "--timeout", "0.5")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [stats]


def test_stats_json_exits_1_on_a_dead_peer(tally_bin, broker):
    publish(broker, "$tally/stats/n1", json.dumps(node_stats(now_ms())), retain=True)
    result = tally(tally_bin, "-p", broker, "stats", "--json", "--timeout", "0.5")
    assert result.returncode == 1
    assert json.loads(result.stdout)["node"] == "n1"


def test_stats_without_any_node_exits_1(tally_bin, broker):
    result = tally(tally_bin, "-p", broker, "stats", "--timeout", "0.3")
    assert result.returncode == 1
    assert "no node published stats" in result.stderr


# ---- health ----


def test_health_ok(tally_bin, broker):
    publish(broker, "$tally/stats/n1", json.dumps(node_stats(now_ms(), n3_heard_ago=2000)),
            retain=True)
    started = time.monotonic()
    result = tally(tally_bin, "-p", broker, "health", "n1", "--timeout", "5")
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    assert time.monotonic() - started < 4  # the named node's stats end the wait


def test_health_a_peer_heard_but_not_yet_announced_is_not_dead(tally_bin, broker):
    doc = node_stats(now_ms(), n3_heard_ago=2000)
    # The plugin says alive false of a peer it heard but that has not announced its viewers
    # yet (a node just started): not dead while it was heard within 500 ms.
    doc["peers"]["n4"] = {"last_heard_ms": now_ms() - 100, "alive": False}
    publish(broker, "$tally/stats/n1", json.dumps(doc), retain=True)
    result = tally(tally_bin, "-p", broker, "health", "n1")
    assert (result.returncode, result.stdout) == (0, "ok\n")


def test_health_names_a_dead_peer(tally_bin, broker):
    publish(broker, "$tally/stats/n1", json.dumps(node_stats(now_ms())), retain=True)
    result = tally(tally_bin, "-p", broker, "health", "n1")
    assert result.returncode == 1
    assert result.stdout == ("n1: peer n3 silent for 5m, past the peer timeout of 15000 ms\n")


def test_health_says_a_node_is_behind_when_its_stats_are_stale(tally_bin, broker):
    publish(broker, "$tally/stats/n1", json.dumps(node_stats(now_ms() - 60000)), retain=True)
    publish(broker, "$tally/stats/n2",
            json.dumps({"node": "n2", "time_ms": now_ms() - 2000, "stats_interval_ms": 500}),
            retain=True)
    result = tally(tally_bin, "-p", broker, "health", "--timeout", "0.5")
    assert result.returncode == 1
    # n1: 60 s > 3 x 5 s; n2: 2 s > 3 x its own 0.5 s. A node behind is not asked about peers.
    assert re.fullmatch(r"n1: behind: its latest stats are 6\ds old\n"
                        r"n2: behind: its latest stats are [2-4]\.\ds old\n", result.stdout)


def test_health_of_a_node_without_stats(tally_bin, broker):
    publish(broker, "$tally/stats/n1", json.dumps(node_stats(now_ms(), n3_heard_ago=2000)),
            retain=True)
    result = tally(tally_bin, "-p", broker, "health", "n1", "n9", "--timeout", "0.5")
    assert result.returncode == 1
    assert result.stdout == ("n9: no stats within 0.5 s (is the tally plugin loaded?)\n")
    result = tally(tally_bin, "-p", broker, "health", "n1", "--timeout", "0.5")
    assert result.returncode == 0


def test_health_without_any_node_is_unhealthy(tally_bin, broker):
    result = tally(tally_bin, "-p", broker, "health", "--timeout", "0.3")
    assert (result.returncode, result.stdout) == (1, "*: no node published stats\n")


def test_health_json(tally_bin, broker):
    publish(broker, "$tally/stats/n1", json.dumps(node_stats(now_ms())), retain=True)
    result = tally(tally_bin, "-p", broker, "--json", "health", "n1")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"status": "unhealthy", "problems": [{
        "node": "n1", "problem": "peer_dead",
        "detail": "peer n3 silent for 5m, past the peer timeout of 15000 ms"}]}
    publish(broker, "$tally/stats/n1", json.dumps(node_stats(now_ms(), n3_heard_ago=0)),
            retain=True)
    result = tally(tally_bin, "-p", broker, "--json", "health", "n1")
    assert (result.returncode, json.loads(result.stdout)) == (0, {"status": "ok", "problems": []})


# ---- TLS ----


@pytest.fixture
def secure_node(brokers, workdir):
    """A node running the shipped conf/secure/mosquitto.conf with its scripts' files."""
    from test_secure import Node, secure_files
    etc = secure_files(workdir)
    ports = {"11883": free_port(), "18080": free_port(), "8883": free_port()}
    return Node(brokers, "n1", "mosquitto.conf", etc, ports)


def test_tls_against_the_shipped_secure_setup(tally_bin, secure_node):
    ca = os.path.join(secure_node.etc, "certs", "ca.crt")
    tls = ["-p", secure_node.tls, "--cafile", ca]
    # A device reads nothing, but gets the answers to its own increments.
    result = tally(tally_bin, *tls, "-u", "device", "-P", "device-demo", "inc", "likes", "3",
                   "--timeout", "5")
    assert (result.returncode, result.stdout) == (0, "likes 3\n"), result.stderr
    browser = [*tls, "-u", "browser", "-P", "browser-demo"]
    wait_for_value(lambda: tally(tally_bin, *browser, "get", "likes").stdout == "likes 3\n")
    result = tally(tally_bin, *browser, "-v", "health", "n1", "--timeout", "10")
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    assert "(MQTT v5, TLS)" in result.stderr


def test_tls_needs_the_right_authority(tally_bin, secure_node, tmp_path):
    login = ["-u", "browser", "-P", "browser-demo", "get", "likes"]
    result = tally(tally_bin, "-p", secure_node.tls, *login)  # plain MQTT to a TLS port
    assert result.returncode == 2 and "cannot connect" in result.stderr
    subprocess.run([str(REPO / "conf" / "secure" / "make-certs.sh"), str(tmp_path / "other")],
                   check=True, capture_output=True)
    result = tally(tally_bin, "-p", secure_node.tls, "--cafile", tmp_path / "other" / "ca.crt",
                   *login)
    assert result.returncode == 2 and "cannot connect" in result.stderr
    result = tally(tally_bin, "-p", secure_node.tls, "--cafile", tmp_path / "missing.crt", *login)
    assert result.returncode == 2 and "cannot use the TLS files given" in result.stderr


def tls_broker(tmp_path, host, extra=""):
    """A plain broker with one TLS listener on host, using make-certs.sh's files."""
    certs = tmp_path / "certs"
    subprocess.run([str(REPO / "conf" / "secure" / "make-certs.sh"), str(certs)], check=True,
                   capture_output=True)
    port = free_port()
    log = tmp_path / "tls.log"
    conf = tmp_path / "tls.conf"
    conf.write_text(f"user root\nlog_dest file {log}\nallow_anonymous true\n"
                    f"listener {port} {host}\ncafile {certs}/ca.crt\n"
                    f"certfile {certs}/server.crt\nkeyfile {certs}/server.key\n{extra}")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return proc, port, certs
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)


def test_tls_insecure_skips_the_host_name_check(tally_bin, tmp_path):
    # The certificate names localhost and 127.0.0.1, not 127.0.0.2.
    proc, port, certs = tls_broker(tmp_path, "127.0.0.2")
    try:
        tls = ["-h", "127.0.0.2", "-p", port, "--cafile", certs / "ca.crt", "--timeout", "1"]
        result = tally(tally_bin, *tls, "inc", "likes")
        assert result.returncode == 2 and "cannot connect" in result.stderr
        result = tally(tally_bin, *tls, "--insecure", "inc", "likes")
        assert result.returncode == 0, result.stderr
    finally:
        stop(proc)


def test_tls_client_certificate(tally_bin, tmp_path):
    proc, port, certs = tls_broker(tmp_path, "127.0.0.1", "require_certificate true\n")
    try:
        key, csr, crt = (tmp_path / n for n in ("client.key", "client.csr", "client.crt"))
        subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj",
                        "/CN=cli", "-keyout", key, "-out", csr], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", certs / "ca.crt", "-CAkey",
                        certs / "ca.key", "-CAcreateserial", "-days", "1", "-out", crt],
                       check=True, capture_output=True)
        tls = ["-p", port, "--cafile", certs / "ca.crt", "--timeout", "1"]
        result = tally(tally_bin, *tls, "inc", "likes")
        assert result.returncode == 2 and "cannot connect" in result.stderr
        result = tally(tally_bin, *tls, "--cert", crt, "--key", key, "inc", "likes")
        assert result.returncode == 0, result.stderr
    finally:
        stop(proc)


# ---- against the real plugin ----


def test_plugin_inc_prints_the_new_total(tally_bin, brokers):
    node = brokers("n1")
    assert tally(tally_bin, "-p", node.port, "inc", "likes", "5").stdout == "likes 5\n"
    result = tally(tally_bin, "-p", node.port, "inc", "likes", "-2")
    assert (result.returncode, result.stdout, result.stderr) == (0, "likes 3\n", "")
    result = tally(tally_bin, "-p", node.port, "--json", "inc", "likes", "--qos", "0")
    assert json.loads(result.stdout) == {"name": "likes", "result": "applied", "value": 4}


def test_plugin_inc_says_duplicate_for_a_repeated_id(tally_bin, brokers):
    node = brokers("n1")
    args = ["-p", node.port, "inc", "orders", "2", "--id", "order-17"]
    assert tally(tally_bin, *args).stdout == "orders 2\n"
    result = tally(tally_bin, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "orders 2 (duplicate: this id was already counted)\n"
    assert tally(tally_bin, "-p", node.port, "get", "orders").stdout == "orders 2\n"


def test_plugin_inc_names_the_reason_of_a_refusal(tally_bin, brokers):
    node = brokers("n1", options={"max_counters": "1"})
    assert tally(tally_bin, "-p", node.port, "inc", "first").returncode == 0
    result = tally(tally_bin, "-p", node.port, "inc", "second", "--timeout", "5")
    assert result.returncode == 1
    # The plugin's reason, not the PUBACK's "Not authorized (0x87)".
    assert result.stderr == "tally: the increment of second was refused: max_counters_reached\n"


def test_plugin_inc_over_mqtt_311_waits_for_the_puback_only(tally_bin, brokers):
    node = brokers("n1", options={"max_counters": "1"})
    result = tally(tally_bin, "-p", node.port, "-V", "311", "inc", "likes", "7")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert tally(tally_bin, "-p", node.port, "get", "likes").stdout == "likes 7\n"
    # MQTT 3.1.1 has no reason codes: a refused increment is acknowledged all the same.
    result = tally(tally_bin, "-p", node.port, "-V", "311", "inc", "other")
    assert (result.returncode, result.stdout) == (0, "")


def test_plugin_health_of_a_single_node(tally_bin, brokers):
    node = brokers("n1", options={"stats_interval_ms": "200"})
    result = tally(tally_bin, "-p", node.port, "health", "n1", "--timeout", "10")
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_plugin_health_and_stats_see_a_dead_peer_and_a_node_behind(tally_bin, brokers):
    n1, n2 = chain(brokers, ["n1", "n2"],
                   options={"peer_timeout_ms": "1000", "stats_interval_ms": "200"})

    def health(port, *nodes):
        return tally(tally_bin, "-p", port, "health", *nodes, "--timeout", "3",
                     "--peer-timeout", "1000")

    wait_for(lambda: health(n1.port, "n1", "n2").stdout == "ok\n", 20, what="a healthy cluster")
    # n2 lists n1, its neighbour, once n1 has sent it a digest (within sync_interval_ms)
    wait_for(lambda: "n1" in json.loads(n2.retained("$tally/stats/n2") or "{}").get("peers", {}),
             20, interval=0.2, what="n2 to list its neighbour n1")
    # n1 stops answering anyone (SIGSTOP): n2 still holds n1's last stats, which age.
    n1.proc.send_signal(signal.SIGSTOP)
    try:
        result = wait_for(lambda: (r := health(n2.port, "n1", "n2")).returncode == 1
                          and "peer n1 silent" in r.stdout and "n1: behind" in r.stdout and r,
                          30, what="n1 to be dead")
        assert re.search(r"^n1: behind: its latest stats are [\d.]+s old$", result.stdout,
                         re.M), result.stdout
        assert re.search(r"^n2: peer n1 silent for [\d.]+s, past the peer timeout of 1000 ms$",
                         result.stdout, re.M), result.stdout
        stats = tally(tally_bin, "-p", n2.port, "stats", "--timeout", "1", "--peer-timeout", "1000")
        assert stats.returncode == 1
        assert re.search(r"^n2 .* n1 DEAD [\d.]+s ago$", stats.stdout, re.M), stats.stdout
    finally:
        n1.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: health(n2.port, "n1", "n2").stdout == "ok\n", 30, what="n1 to be back")


# ---- the load clients take the plugin's topic prefixes as settings ----


def test_load_publishes_under_the_prefix(broker, procs):
    load = os.path.join(os.path.dirname(TALLY), "tally-load")
    lines = subscriber(broker, procs, "tallies/+/inc", "counters/+/inc")
    result = subprocess.run([load, "-p", str(broker), "--prefix", "tallies", "-n", "3", "-k", "2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["acked"] == 3
    assert sorted(lines.next() for _ in range(3)) == ["1 tallies/c0/inc 1", "1 tallies/c0/inc 1",
                                                      "1 tallies/c1/inc 1"]
    result = subprocess.run([load, "--prefix", "t", "--topic-format", "x/%u"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "one of --prefix and --topic-format" in result.stderr


def test_wsload_reads_under_the_prefixes(tmp_path):
    ws = free_port()
    proc, port = start_broker(tmp_path, f"listener {ws} 127.0.0.1\nprotocol websockets\n"
                                        "socket_domain ipv4\n")
    try:
        publish(port, "views/pg", "7", retain=True)
        publish(port, "tallies/hits", "3", retain=True)
        wsload = os.path.join(os.path.dirname(TALLY), "tally-wsload")
        result = subprocess.run([wsload, "--port", str(ws), "--json", "--prefix", "tallies",
                                 "--presence-prefix", "views", "--page", "pg", "--counter",
                                 "hits", "--clients", "2", "--duration", "2"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.splitlines()[-1])
        assert report["observer_presence"] == "7"
        assert report["counter_values"] == ["3"]
    finally:
        stop(proc)


@pytest.mark.parametrize("args, message", [
    (["--page", "a/b"], "--page is not a name the plugin takes"),
    (["--page", "x" * 201], "--page is not a name the plugin takes"),
    (["--counter", "$SYS"], "--counter is not a name the plugin takes"),
    (["--counter", "tab\there"], "--counter is not a name the plugin takes"),
    (["--prefix", "c/#"], "bad --prefix"),
    (["--presence-prefix", "p/"], "bad --presence-prefix"),
])
def test_wsload_takes_names_by_the_plugins_rule(args, message):
    wsload = os.path.join(os.path.dirname(TALLY), "tally-wsload")
    result = subprocess.run([wsload, "--port", "1", *args], capture_output=True, text=True,
                            timeout=10)
    assert result.returncode == 2
    assert message in result.stderr
