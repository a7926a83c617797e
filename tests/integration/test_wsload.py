"""tally-wsload against a real, plain mosquitto with a WebSocket listener.

The broker runs without the tally plugin: these tests check the load client
itself (it connects, subscribes, sees retained values, pings, leaves cleanly,
goes silent like a dead network), so the plugin's tests can trust its figures.

Mosquitto 2.0.11 logs a WebSocket client dropped by keepalive expiry as
"Client <id> closed its connection." (do_disconnect() only names the
keepalive reason for plain TCP clients), so expiry is recognised by timing:
a silent client keeps its TCP socket open and never sends DISCONNECT, so the
only thing that can close it is the broker's keepalive check.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port

REPO = Path(__file__).resolve().parents[2]
WSLOAD = os.environ.get("TALLY_WSLOAD", str(REPO / "build" / "clients" / "tally-wsload"))
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
LOG_LINE = re.compile(r"^(\d+): (.*)$")


def wait_listening(port, deadline):
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Broker:
    def __init__(self, tmp_path):
        self.port = free_port()
        self.ws_port = free_port()  # never the same port twice in a run
        self.log = tmp_path / "mosquitto.log"
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(
            "user root\n"
            f"log_dest file {self.log}\n"
            "log_type all\n"
            "per_listener_settings false\n"
            "allow_anonymous true\n"
            f"listener {self.port} 127.0.0.1\n"
            f"listener {self.ws_port} 127.0.0.1\n"
            "protocol websockets\n"
            "socket_domain ipv4\n"
        )
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        if not (wait_listening(self.port, deadline) and wait_listening(self.ws_port, deadline)):
            self.stop()
            raise RuntimeError(f"mosquitto did not start; log: {self.log_text()}")

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_events(self):
        """(unix seconds, message) for every line of the broker log."""
        events = []
        for line in self.log_text().splitlines():
            m = LOG_LINE.match(line)
            if m:
                events.append((int(m.group(1)), m.group(2)))
        return events

    def publish(self, topic, payload, retain=True):
        args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-t", topic, "-m", payload]
        subprocess.run(args + (["-r"] if retain else []), check=True, timeout=10)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    yield b
    b.stop()


def wsload():
    if not os.access(WSLOAD, os.X_OK):
        pytest.fail(f"tally-wsload not built at {WSLOAD} (set TALLY_WSLOAD)")
    return WSLOAD


def wsload_cmd(broker, *args):
    return [wsload(), "--port", str(broker.ws_port), "--json", *map(str, args)]


def parse_run(stdout):
    """The final JSON report and the event-log lines before it."""
    lines = stdout.strip().splitlines()
    assert lines, "tally-wsload printed nothing"
    return json.loads(lines[-1]), lines[:-1]


def run_wsload(broker, *args, timeout=60):
    proc = subprocess.run(
        wsload_cmd(broker, *args), capture_output=True, text=True, timeout=timeout
    )
    report, events = parse_run(proc.stdout)
    return proc.returncode, report, events


def test_200_clients_connect_and_subscribe(broker):
    rc, report, events = run_wsload(
        broker, "--clients", 180, "--wildcard", 20, "--page", "p200", "--duration", 4
    )
    assert rc == 0, report
    assert report["requested"] == 200
    assert report["connected"] == 200
    assert report["subscribed"] == 200
    assert report["failures"] == 0
    assert report["connect_ms"]["samples"] == 200
    assert 0 < report["connect_ms"]["p50"] <= report["connect_ms"]["p99"]
    assert "connected=200 subscribed=200" in "\n".join(events)
    subscribed = [m for _, m in broker.log_events() if re.match(r"wsload-\d+-\d+ 0 presence/", m)]
    assert sum(m.endswith(" presence/p200") for m in subscribed) == 180
    assert sum(m.endswith(" presence/#") for m in subscribed) == 20


def test_observer_sees_retained_and_live_presence_values(broker):
    broker.publish("presence/obs", "41")
    proc = subprocess.Popen(
        wsload_cmd(broker, "--clients", 10, "--page", "obs", "--observer", 3, "--duration", 4),
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "connected=10 subscribed=10" in line:
            break
    broker.publish("presence/obs", "57")
    out, _ = proc.communicate(timeout=30)
    report, events = parse_run("".join(seen) + out)
    assert proc.returncode == 0
    values = [e for e in events if " topic=presence/obs " in e]
    assert [v.split()[2:] for v in values] == [
        ["value=41", "client=3"],
        ["value=57", "client=3"],
    ]
    assert report["observer_presence"] == "57"


def test_counter_values_timed_at_every_client(broker):
    broker.publish("counters/hits", "1")
    proc = subprocess.Popen(
        wsload_cmd(broker, "--clients", 50, "--page", "c", "--counter", "hits", "--duration", 4),
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    broker.publish("counters/hits", "2")
    broker.publish("counters/hits", "3")
    out, _ = proc.communicate(timeout=30)
    report, events = parse_run(out)
    assert proc.returncode == 0
    assert report["counter_values"] == ["1", "2", "3"]
    # Only live deliveries are timed: the retained "1" arrives at subscribe time.
    assert report["counter_spread_ms"]["samples"] == 100
    assert report["counter_spread_ms"]["p99"] < 1000
    assert sum(" topic=counters/hits " in e for e in events) == 3


def test_silent_clients_expire_by_keepalive_and_leavers_disconnect_cleanly(broker):
    keepalive, leave_at = 2, 3
    window = 1.5 * keepalive + 6
    rc, report, events = run_wsload(
        broker,
        "--clients", 100,
        "--page", "ka",
        "--client-prefix", "ka",
        "--keepalive", keepalive,
        "--leave", 20,
        "--silence", 20,
        "--leave-at", leave_at,
        "--duration", leave_at + window + 2,
    )  # fmt: skip
    assert rc == 0, report
    assert report["failures"] == 0
    assert report["pingresps"] > 0
    silence, leave = report["silence"], report["leave"]
    assert silence["count"] == 20 and leave["count"] == 20
    silent_ids = {f"ka-{i}" for i in range(silence["first"], silence["first"] + 20)}
    leave_ids = {f"ka-{i}" for i in range(leave["first"], leave["first"] + 20)}
    assert not silent_ids & leave_ids
    assert "ka-0" not in silent_ids | leave_ids
    silent_at = (report["start_unix_ms"] + silence["t_ms"]) / 1000

    log = broker.log_events()
    closed_at = {}
    clean = set()
    sent_disconnect = set()
    for ts, msg in log:
        m = re.match(r"Client (\S+) closed its connection\.", msg)
        if m:
            closed_at.setdefault(m.group(1), ts)
        m = re.match(r"Client (\S+) disconnected\.", msg)
        if m:
            clean.add(m.group(1))
        m = re.match(r"Received DISCONNECT from (\S+)", msg)
        if m:
            sent_disconnect.add(m.group(1))

    assert silent_ids <= set(closed_at), sorted(silent_ids - set(closed_at))
    for cid in silent_ids:
        # Broker log stamps are whole seconds: allow one second of rounding down.
        assert silent_at - 1 <= closed_at[cid] <= silent_at + window, (cid, closed_at[cid])
    assert not silent_ids & sent_disconnect
    assert leave_ids <= clean and leave_ids <= sent_disconnect
    assert not leave_ids & set(closed_at)
    # The steady clients stayed until the end and then left with DISCONNECT.
    steady = {f"ka-{i}" for i in range(silence["first"])}
    assert steady <= clean and not steady & set(closed_at)


def test_reports_failure_when_broker_is_absent():
    cmd = [wsload(), "--port", str(free_port()), "--clients", "5", "--duration", "5", "--json"]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    report, _ = parse_run(proc.stdout)
    assert proc.returncode == 1
    assert report["connected"] == 0
    assert report["failure_reasons"]["connect_error"] == 5


@pytest.mark.parametrize(
    "args",
    [
        ["--clients", "10"],
        ["--port", "1", "--clients", "3", "--leave", "2", "--silence", "2"],
        ["--port", "1", "--clients", "5", "--silence", "5", "--observer", "4"],
        ["--port", "1", "--keepalive", "x"],
    ],
)
def test_rejects_bad_options(args):
    proc = subprocess.run([wsload(), *args], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2
    assert "tally-wsload:" in proc.stderr
