"""Shared fixtures: real mosquitto processes loading the built plugin on
127.0.0.1 ports, and small real clients (paho-mqtt, mosquitto_pub/sub).

Environment:
  TALLY_BUILD    build directory (default: <repo>/build)
  TALLY_PRELOAD  a runtime to LD_PRELOAD into every broker (sanitizer runs)
  TALLY_KEEP_WORKDIR  1: a failed test's brokers' configs, logs and state are kept, and the
                 directory is named in the test's output; always: every test's
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ports import pick_free_port  # noqa: E402
from rawmqtt import RawClient  # noqa: E402,F401  (re-exported for the tests)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("TALLY_BUILD", os.path.join(REPO, "build"))
PLUGIN = os.path.join(BUILD, "plugin", "mosquitto_tally.so")
CLI = os.path.join(BUILD, "clients", "tally")
LOAD = os.path.join(BUILD, "clients", "tally-load")
WSLOAD = os.path.join(BUILD, "clients", "tally-wsload")

_used_ports = set()
# Under pytest-xdist (scripts/test.sh runs tests side by side), worker k of n
# takes only the ports p with p % n == k: a port one worker was handed and
# has not bound yet is never handed to another.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)


def _port_mine(port):
    """True if this worker may hand out `port` (all are, without xdist)."""
    return port % _WORKERS == _WORKER


def free_port():
    """A free TCP port on 127.0.0.1, never handed out twice in one run: one of this worker's,
    drawn from 20000-32767, below Linux's ephemeral range (32768-60999), where outgoing
    connections would take it between this check and the broker's bind. (The kernel's own
    pick, bind to port 0, prefers even ports: with an even number of workers, the odd ones
    found none.)"""
    port = pick_free_port(20000, 32768, _used_ports, _port_mine, tries=1000 * _WORKERS)
    if port is None:
        raise RuntimeError("no free port")
    return port


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Polls predicate until it returns a truthy value; fails after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def next_stats(client, node):
    """The next stats document node publishes from now on (client: a Watcher of it)."""
    topic = f"$tally/stats/{node}"
    n = len(client.values(topic))
    wait_for(lambda: len(client.values(topic)) > n, 5, what=f"a new {topic}")
    return json.loads(client.last(topic))


def repl_out_since(client, node, start):
    """(bytes node sent for replication, seconds) from the stats document start to the next."""
    end = next_stats(client, node)
    return (end["repl"]["bytes_out"] - start["repl"]["bytes_out"],
            (end["uptime_ms"] - start["uptime_ms"]) / 1000)


def bytes_a_change(stats, node, holder, changes, every_s, page="presence/churn"):
    """What node sends for replication a change of one page, beyond what it sends at rest:
    holder (a client of node) subscribes to page and unsubscribes, `changes` times in all,
    `every_s` apart. Returns (bytes a change, how they were measured)."""
    time.sleep(1.0)
    rest_start = next_stats(stats, node)
    time.sleep(3.0)
    rest_bytes, rest_s = repl_out_since(stats, node, rest_start)
    churn_start = next_stats(stats, node)
    t0 = time.monotonic()
    for k in range(changes):
        if k % 2 == 0:
            holder.c.subscribe(page, 0)
        else:
            holder.c.unsubscribe(page)
        time.sleep(max(0.0, t0 + every_s * (k + 1) - time.monotonic()))
    churn_bytes, churn_s = repl_out_since(stats, node, churn_start)
    extra = churn_bytes - rest_bytes / rest_s * churn_s
    return extra / changes, (f"{churn_bytes} B in {churn_s:.1f} s churning, "
                             f"{rest_bytes} B in {rest_s:.1f} s at rest")


class Broker:
    """One mosquitto process with the tally plugin (or without, plain=True)."""

    def __init__(self, workdir, name="n1", plain=False, options=None, extra="", ws=False,
                 bridges=(), http_dir=None):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.ws_port = free_port() if ws else None
        self.plain = plain
        self.options = {"node_id": name, "sync_interval_ms": "1000"}
        self.options.update(options or {})
        self.extra = extra
        self.bridges = list(bridges)
        self.http_dir = http_dir
        self.log = os.path.join(self.dir, "mosquitto.log")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.proc = None

    def config(self):
        lines = [
            "user root",
            "per_listener_settings false",
            "set_tcp_nodelay true",
            "allow_anonymous true",
            f"log_dest file {self.log}",
            "log_type all",
            "persistence false",
            "max_queued_messages 100000",
            f"listener {self.port} 127.0.0.1",
        ]
        if self.ws_port:
            lines += [f"listener {self.ws_port} 127.0.0.1", "protocol websockets",
                      "socket_domain ipv4"]
            if self.http_dir:
                lines.append(f"http_dir {self.http_dir}")
        if not self.plain:
            lines.append(f"plugin {PLUGIN}")
            for k, v in self.options.items():
                if v is not None:
                    lines.append(f"plugin_opt_{k} {v}")
        for b in self.bridges:
            lines += [
                f"connection {b['name']}",
                f"address 127.0.0.1:{b['port']}",
                f"clientid {b['name']}",
                "topic $tally/# both 1",
                "restart_timeout 1 1",
                "cleansession true",
                "try_private true",
            ]
        lines.append(self.extra)
        return "\n".join(lines) + "\n"

    def start(self, wait=True):
        with open(self.conf, "w") as f:
            f.write(self.config())
        env = dict(os.environ)
        if os.environ.get("TALLY_PRELOAD") and not self.plain:
            env["LD_PRELOAD"] = os.environ["TALLY_PRELOAD"]
        self.stderr = open(os.path.join(self.dir, "stderr.log"), "a")
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=self.stderr,
                                     stderr=self.stderr, env=env)
        if wait:
            wait_for(self._listening, 10, what=f"broker {self.name} to listen on {self.port}")
        return self

    def _listening(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"broker {self.name} exited with {self.proc.returncode}:\n"
                                 + self.read_log()[-3000:])
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def read_log(self):
        text = ""
        for p in (self.log, os.path.join(self.dir, "stderr.log")):
            if os.path.exists(p):
                with open(p, errors="replace") as f:
                    text += f.read()
        return text

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def stop(self):
        """Stops cleanly (SIGTERM) so sanitizers can report; returns the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc else None

    def restart(self):
        self.kill()
        return self.start()

    # -- small clients ---------------------------------------------------
    def pub(self, topic, payload="", qos=1, retain=False, extra=()):
        args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-t", topic,
                "-q", str(qos)] + (["-r"] if retain else []) + list(extra)
        if payload == "":
            args.append("-n")
        else:
            args += ["-m", payload]
        return subprocess.run(args, capture_output=True, text=True, timeout=20)

    def retained(self, topic, timeout=2.0):
        """The retained payload on topic, or None."""
        r = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-t",
                            topic, "-C", "1", "-W", str(max(1, int(timeout)))],
                           capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 and r.stdout else None

    def total(self, name, timeout=2.0):
        v = self.retained(f"counters/{name}", timeout)
        return int(v) if v is not None else None

    def wait_total(self, name, expected, timeout=15.0):
        last = [None]  # the value seen last, for the message (not the one at the start)

        def reached():
            last[0] = self.total(name)
            return last[0] == expected
        try:
            return wait_for(reached, timeout, what=f"{self.name}: counters/{name} == {expected}")
        except AssertionError as e:
            raise AssertionError(f"{e}; it was {last[0]} last") from None

    def client(self, client_id=None, protocol=mqtt.MQTTv311, **kw):
        return Client(self.port, client_id, protocol, **kw)


class Client:
    """A paho client that records every message it receives."""

    def __init__(self, port, client_id=None, protocol=mqtt.MQTTv311, keepalive=30):
        kwargs = {"client_id": client_id or "", "protocol": protocol}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = True
        self.c = mqtt.Client(**kwargs)
        self.messages = []
        self.acks = {}
        self.lock = threading.Lock()
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.connected = threading.Event()
        self.c.on_connect = lambda *a, **k: self.connected.set()
        self.c.connect("127.0.0.1", port, keepalive)
        self.c.loop_start()
        assert self.connected.wait(10), "client did not connect"

    def _on_message(self, c, u, m):
        with self.lock:
            self.messages.append((m.topic, m.payload.decode(errors="replace"), m.retain))

    def _on_publish(self, c, u, mid):
        with self.lock:
            self.acks[mid] = True

    def subscribe(self, topic, qos=1):
        result, mid = self.c.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        return mid

    def last(self, topic):
        with self.lock:
            for t, p, _ in reversed(self.messages):
                if t == topic:
                    return p
        return None

    def values(self, topic):
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def publish(self, topic, payload=None, qos=1, **kw):
        info = self.c.publish(topic, payload, qos, **kw)
        return info

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (rep_setup, rep_call), for the workdir fixture."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def workdir(request):
    d = tempfile.mkdtemp(prefix="tally-test-")
    yield d
    failed = any(getattr(request.node, f"rep_{when}", None) is not None
                 and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))
    keep = os.environ.get("TALLY_KEEP_WORKDIR", "")
    if keep == "always" or (failed and keep):
        print(f"\nkept the brokers' directory of {request.node.name}: {d}")
        return
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def brokers(workdir):
    """A factory of brokers that are all stopped at the end of the test; with
    TALLY_PRELOAD set, a sanitizer report in any broker's output fails it."""
    made = []

    def make(*args, start=True, cls=None, **kw):
        b = (cls or Broker)(workdir, *args, **kw)
        made.append(b)
        return b.start() if start else b

    yield make
    reports = []
    for b in made:
        b.stop()
        text = b.read_log()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in text:
                reports.append(f"{b.name}: {marker}\n{text[-4000:]}")
    assert not reports, "\n".join(reports)


@pytest.fixture
def broker(brokers):
    return brokers("n1")


def chain(brokers, names, **kw):
    """Brokers bridged in a line: each bridges to the previous one."""
    nodes = []
    for i, name in enumerate(names):
        bridges = []
        if i > 0:
            bridges.append({"name": f"{name}-to-{names[i - 1]}", "port": nodes[i - 1].port})
        opts = dict(kw.get("options", {}))
        opts["bridge_clientids"] = "*-to-*"
        nodes.append(brokers(name, bridges=bridges, options=opts,
                             **{k: v for k, v in kw.items() if k != "options"}))
    return nodes
