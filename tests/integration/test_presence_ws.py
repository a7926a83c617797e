"""Presence with viewers on WebSockets: tally-wsload opens many MQTT-over-WebSocket clients that
subscribe exactly to presence/<page>, and the plugin's retained count on presence/<page> must
follow them exactly: wildcard subscribers are not viewers, a clean leave ends a view at once, a
dead network ends it by keepalive expiry, and a node killed in a cluster has its viewers dropped
from the others' counts after peer_timeout_ms while its counter contributions stay.

Counts are read through a presence/# subscriber on the plain listener (not a viewer itself) that
stamps every message with its arrival time, so the tests can check how fast the count moved."""

import json
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import WSLOAD, chain, wait_for


class Watcher:
    """A paho client on presence/# that records (monotonic time, topic, payload) of each message."""

    def __init__(self, node, name):
        self.lock = threading.Lock()
        self.seen = []
        self.c = mqtt.Client(client_id=name, clean_session=True)
        self.c.on_message = self._on_message
        ready = threading.Event()
        self.c.on_connect = lambda *a: ready.set()
        self.c.connect("127.0.0.1", node.port, 30)
        self.c.loop_start()
        assert ready.wait(10), f"watcher {name} did not connect"
        self.c.subscribe("presence/#", 1)

    def _on_message(self, c, u, m):
        with self.lock:
            self.seen.append((time.monotonic(), m.topic, m.payload.decode(errors="replace")))

    def last(self, page):
        with self.lock:
            for _, t, p in reversed(self.seen):
                if t == f"presence/{page}":
                    return p
        return None

    def values_since(self, page, since):
        with self.lock:
            return [p for ts, t, p in self.seen if t == f"presence/{page}" and ts >= since]

    def wait_count(self, page, n, timeout):
        """Waits for the count n; returns the monotonic time its message arrived."""
        wait_for(lambda: self.last(page) == str(n), timeout,
                 what=f"presence/{page} == {n} (is {self.last(page)})")
        with self.lock:
            for ts, t, p in reversed(self.seen):
                if t == f"presence/{page}" and p == str(n):
                    return ts
        raise AssertionError("unreachable")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


class WsLoad:
    """One tally-wsload run in the background; report() waits for its final JSON line."""

    def __init__(self, node, *args):
        cmd = [WSLOAD, "--port", str(node.ws_port), "--json", *map(str, args)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def report(self, timeout=60):
        out, err = self.proc.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        assert lines, f"tally-wsload printed nothing: {err}"
        return json.loads(lines[-1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def watchers():
    made = []

    def make(node, name="watcher"):
        w = Watcher(node, f"{name}-{node.name}")
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


@pytest.fixture
def loads():
    made = []

    def make(node, *args):
        load = WsLoad(node, *args)
        made.append(load)
        return load

    yield make
    for load in made:
        load.stop()


def test_200_ws_viewers_counted_and_wildcards_not(brokers, watchers, loads):
    node = brokers("n1", ws=True)
    w = watchers(node)
    load = loads(node, "--clients", 200, "--wildcard", 20, "--page", "p", "--observer", 0,
                 "--duration", 6)
    w.wait_count("p", 200, 8)
    # Several flush intervals later the count has not crept past 200 (wildcards not counted).
    time.sleep(0.8)
    assert set(w.values_since("p", time.monotonic() - 0.8)) <= {"200"}
    assert w.last("p") == "200"
    # mosquitto_sub gets the retained count as it subscribes, before its own view is counted.
    assert node.retained("presence/p") == "200"
    report = load.report()
    assert report["connected"] == 220 and report["subscribed"] == 220, report
    assert report["failures"] == 0, report
    # The observer is a viewer: the last count its own subscription delivered includes it.
    assert report["observer_presence"] == "200", report
    stats = json.loads(node.retained("$tally/stats/n1", timeout=6))
    assert stats["viewers"] in (0, 200), stats  # 0 once the run has left
    w.wait_count("p", 0, 5)


def test_leave_and_silence_follow_the_count(brokers, watchers, loads):
    keepalive, leave_at = 2, 5
    window = 1.5 * keepalive + 6
    node = brokers("n1", ws=True)
    w = watchers(node)
    load = loads(node, "--clients", 200, "--page", "p", "--keepalive", keepalive,
                 "--leave", 50, "--silence", 50, "--leave-at", leave_at,
                 "--duration", leave_at + window + 3)
    w.wait_count("p", 200, leave_at)
    # The leave happens leave_at s after the client started; its report says exactly when.
    seen_150 = w.wait_count("p", 150, leave_at + 3)
    seen_100 = w.wait_count("p", 100, window + 3)
    report = load.report()
    assert report["failures"] == 0, report
    assert report["leave"]["count"] == 50 and report["silence"]["count"] == 50, report
    # start_unix_ms is the wall clock at start: map the leave moment onto our monotonic clock.
    offset = time.time() - time.monotonic()
    left_at = (report["start_unix_ms"] + report["leave"]["t_ms"]) / 1000 - offset
    silent_at = (report["start_unix_ms"] + report["silence"]["t_ms"]) / 1000 - offset
    print(f"count 150 {seen_150 - left_at:.2f}s after leave, 100 {seen_100 - silent_at:.2f}s "
          "after silence")
    assert seen_150 - left_at < 1.0 + 0.3, f"150 came {seen_150 - left_at:.2f}s after the leave"
    assert seen_100 - silent_at < window + 1.5, \
        f"100 came {seen_100 - silent_at:.2f}s after silence"
    # Before 1x keepalive the silent ones still count: no early expiry.
    assert seen_100 - silent_at >= keepalive - 0.5, seen_100 - silent_at
    w.wait_count("p", 0, 5)


def test_three_nodes_sum_viewers_and_drop_a_killed_nodes_viewers(brokers, watchers, loads):
    peer_timeout = 3.0
    a, b, c = chain(brokers, ["a", "b", "c"], ws=True,
                    options={"peer_timeout_ms": str(int(peer_timeout * 1000))})
    wa, wb, wc = watchers(a), watchers(b), watchers(c)
    for node, n in ((a, 30), (b, 40), (c, 50)):
        loads(node, "--clients", n, "--page", "p", "--client-prefix", f"v{node.name}",
              "--duration", 40)
    for w in (wa, wb, wc):
        w.wait_count("p", 120, 15)
    for _ in range(7):
        assert c.pub("counters/k/inc").returncode == 0
    assert a.pub("counters/k/inc", "3").returncode == 0
    a.wait_total("k", 10, 10)
    b.wait_total("k", 10, 10)
    c.kill()
    killed = time.monotonic()
    seen_a = wa.wait_count("p", 70, peer_timeout + 5)
    seen_b = wb.wait_count("p", 70, peer_timeout + 5)
    print(f"c's viewers dropped at a {seen_a - killed:.2f}s, at b {seen_b - killed:.2f}s "
          "after the kill")
    for seen in (seen_a, seen_b):
        # Dropped after the peer timeout, not before, and not long after. c was last heard up to
        # one heartbeat (peer_timeout / 5) before the kill.
        assert seen - killed >= peer_timeout * 0.8 - 0.3, f"dropped {seen - killed:.2f}s early"
        assert seen - killed < peer_timeout + 2.5, f"dropped {seen - killed:.2f}s after kill"
    # c's counter contributions are kept.
    assert a.total("k") == 10 and b.total("k") == 10
    assert a.pub("counters/k/inc").returncode == 0
    a.wait_total("k", 11, 5)


def ws_viewer(node, client_id, page):
    """A paho client over WebSockets that views page; it never reconnects by itself (a taken
    over client that came back would take the id over again). Returns (client, its events)."""
    events = {"connected": threading.Event(), "subscribed": threading.Event(),
              "disconnected": threading.Event()}
    c = mqtt.Client(client_id=client_id, clean_session=True, transport="websockets")
    c.reconnect_delay_set(min_delay=120, max_delay=120)
    c.on_connect = lambda *a: events["connected"].set()
    c.on_subscribe = lambda *a: events["subscribed"].set()
    c.on_disconnect = lambda *a: events["disconnected"].set()
    c.connect("127.0.0.1", node.ws_port, 30)
    c.loop_start()
    assert events["connected"].wait(10), f"{client_id} did not connect over WebSockets"
    c.subscribe(f"presence/{page}", 0)
    assert events["subscribed"].wait(10), f"{client_id}: no SUBACK"
    return c, events


def test_takeover_over_websockets_counts_the_viewer_once(brokers, watchers):
    """A viewer over WebSockets replaced by a new WebSocket connection with the same client id
    (a browser tab reloaded with a fixed id): the broker takes the old one over, the page never
    counts more than one viewer, and the count drops as soon as the new connection leaves (the
    old connection's end must not be taken for the new one's, nor the reverse)."""
    node = brokers("n1", ws=True, options={"stats_interval_ms": "200"})
    w = watchers(node)
    first, first_events = ws_viewer(node, "tab-7", "lobby")
    w.wait_count("lobby", 1, 5)
    since = time.monotonic()
    second, _ = ws_viewer(node, "tab-7", "lobby")
    assert first_events["disconnected"].wait(10), "the old connection was not taken over"
    w.wait_count("lobby", 1, 5)
    time.sleep(1.0)  # several publish intervals: a double count would have been published
    # (a 0 may show between the takeover, which ends the old view, and the new SUBSCRIBE)
    assert set(w.values_since("lobby", since)) <= {"0", "1"}, w.values_since("lobby", since)
    assert w.last("lobby") == "1"
    wait_for(lambda: json.loads(node.retained("$tally/stats/n1") or "{}").get("viewers") == 1, 3,
             what="stats: one viewer")
    left = time.monotonic()
    second.disconnect()
    second.loop_stop()
    first.loop_stop()
    w.wait_count("lobby", 0, 3)
    print(f"taken-over viewer's leave counted {time.monotonic() - left:.2f}s after it left")
