"""Presence on one broker: a client that subscribes exactly to presence/<page> views it, and the
plugin publishes the retained viewer count there. Views end on unsubscribe, disconnect, take-over
by a newer connection with the same client id, and keepalive expiry; wildcard subscribers are not
viewers; one client is one viewer however often it subscribes.

Counts are read through a presence/# subscriber: it is not a viewer itself, where mosquitto_sub
-t presence/<page> would be one."""

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import RawClient, wait_for


@pytest.fixture
def node(brokers):
    return brokers("n1", options={"stats_interval_ms": "200"})


@pytest.fixture
def watcher(node):
    w = node.client("watcher")
    w.subscribe("presence/#")
    yield w
    w.close()


def wait_count(watcher, page, n, timeout=5.0):
    wait_for(lambda: watcher.last(f"presence/{page}") == str(n), timeout,
             what=f"presence/{page} == {n} (is {watcher.last(f'presence/{page}')})")


def stays(watcher, page, n, seconds=0.6):
    """The count is n and no other value is published for a while (several flush intervals)."""
    wait_count(watcher, page, n)
    before = len(watcher.values(f"presence/{page}"))
    time.sleep(seconds)
    later = watcher.values(f"presence/{page}")[before:]
    assert all(v == str(n) for v in later), later


def viewers(node):
    return json.loads(node.retained("$tally/stats/n1"))["viewers"]


def test_two_viewers_then_unsubscribe_and_disconnect(node, watcher):
    a = node.client("va")
    b = node.client("vb")
    try:
        a.subscribe("presence/p1")
        wait_count(watcher, "p1", 1)
        wait_for(lambda: a.last("presence/p1") == "1", 5, what="the viewer sees itself")
        b.subscribe("presence/p1")
        wait_count(watcher, "p1", 2)
        a.c.unsubscribe("presence/p1")
        wait_count(watcher, "p1", 1)
        b.close()
        wait_count(watcher, "p1", 0)
        wait_for(lambda: viewers(node) == 0, 5, what="no viewers in stats")
    finally:
        a.close()
        b.close()


def test_take_over_ends_the_old_connections_view(node, watcher):
    # Raw clients: paho would reconnect a taken-over client and take the id back.
    old = RawClient(node.port, "same-id", version=4)
    new = newer = None
    try:
        old.subscribe("presence/t")
        wait_count(watcher, "t", 1)
        new = RawClient(node.port, "same-id", version=4)  # clean session: no subscription
        wait_count(watcher, "t", 0)
        new.subscribe("presence/t")
        wait_count(watcher, "t", 1)
        newer = RawClient(node.port, "same-id", version=5)
        wait_count(watcher, "t", 0)
        newer.subscribe("presence/t")
        stays(watcher, "t", 1)
        newer.disconnect()
        wait_count(watcher, "t", 0)
    finally:
        for c in (old, new, newer):
            if c:
                c.close()


def test_take_over_by_a_subscribing_connection_keeps_one_view(node, watcher):
    old = RawClient(node.port, "dup", version=4)
    try:
        assert old.subscribe("presence/d") == 1
        wait_count(watcher, "d", 1)
        new = RawClient(node.port, "dup", version=4)
        assert new.subscribe("presence/d") == 1
        stays(watcher, "d", 1)
        new.disconnect()
        wait_count(watcher, "d", 0)
    finally:
        old.close()


def test_wildcard_subscribers_are_not_viewers(node, watcher):
    v = node.client("exact")
    others = [node.client(f"wild{i}") for i in range(3)]
    try:
        v.subscribe("presence/w")
        wait_count(watcher, "w", 1)
        others[0].subscribe("presence/+")
        others[1].subscribe("presence/#")
        others[2].subscribe("+/w")
        stays(watcher, "w", 1)
        wait_for(lambda: viewers(node) == 1, 5, what="one viewer in stats")
        v.close()
        wait_count(watcher, "w", 0)
        stays(watcher, "w", 0)
    finally:
        v.close()
        for o in others:
            o.close()


def test_one_client_subscribing_twice_counts_once(node, watcher):
    c = node.client("twice")
    try:
        c.subscribe("presence/s", qos=0)
        c.subscribe("presence/s", qos=1)
        c.subscribe("presence/s", qos=1)
        stays(watcher, "s", 1)
        c.subscribe("presence/other")
        wait_count(watcher, "other", 1)
        c.c.unsubscribe("presence/s")  # one unsubscribe ends the view
        wait_count(watcher, "s", 0)
        assert watcher.last("presence/other") == "1"
        c.close()
        wait_count(watcher, "other", 0)
    finally:
        c.close()


def test_keepalive_expiry_ends_the_view(node, watcher):
    silent = RawClient(node.port, "silent", version=4, keepalive=2)
    try:
        assert silent.subscribe("presence/ka") == 1
        t0 = time.monotonic()  # the last packet the client sends
        wait_count(watcher, "ka", 1)
        wait_count(watcher, "ka", 0, timeout=1.5 * 2 + 6)
        took = time.monotonic() - t0
        assert took >= 2.9, took  # not before 1.5 x keepalive
        assert "Client silent has exceeded timeout, disconnecting." in node.read_log()
        silent.sock.settimeout(2)
        with pytest.raises(ConnectionError):  # the broker closed it
            for _ in range(100):
                silent.recv()  # the counts it was sent, then the end of the stream
    finally:
        silent.close()


@pytest.mark.xfail(strict=True, reason="known limit, see README: Mosquitto 2.0.11 has no CONNECT "
                   "event, so a subscription restored from a persistent session is not seen")
def test_persistent_session_reconnect_views_again(node, watcher):
    """A client with a persistent session holds its subscription across a reconnect without
    sending SUBSCRIBE again: while connected it views the page."""
    def connect():
        c = mqtt.Client(client_id="keeper", clean_session=False)
        c.connect("127.0.0.1", node.port)
        c.loop_start()
        return c

    c = connect()
    c.subscribe("presence/k", 1)
    wait_count(watcher, "k", 1)
    c.disconnect()
    c.loop_stop()
    wait_count(watcher, "k", 0)
    c = connect()
    try:
        wait_count(watcher, "k", 1)
    finally:
        c.disconnect()
        c.loop_stop()


class Subscriber:
    """A paho client that subscribes to batches of topics, one SUBSCRIBE each."""

    def __init__(self, port, client_id):
        self.c = mqtt.Client(client_id=client_id, clean_session=True)
        self.acked = threading.Semaphore(0)
        self.c.on_subscribe = lambda *a: self.acked.release()
        self.c.connect("127.0.0.1", port, 60)
        self.c.loop_start()

    def send(self, topics):
        self.c.subscribe([(t, 0) for t in topics])

    def wait(self, n=1):
        for _ in range(n):
            assert self.acked.acquire(timeout=120), "a SUBACK did not come"

    def median_batch_s(self, pages, batch=200):
        """The median time from SUBSCRIBE to SUBACK of batches of pages."""
        times = []
        for i in range(0, len(pages), batch):
            started = time.monotonic()
            self.send([f"presence/{p}" for p in pages[i:i + batch]])
            self.wait()
            times.append(time.monotonic() - started)
        return sorted(times)[len(times) // 2]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


# Without sanitizers: under ASan, Mosquitto's own realloc of a client's
# subscription array per SUBSCRIBE copies it whole (ASan's realloc always
# moves), 180 ms a batch at 80,000; tally's views are in the unit test there.
@pytest.mark.nosan
@pytest.mark.alone  # compares two timings
def test_a_client_holding_many_views_adds_one_as_fast_as_at_first(brokers):
    """One anonymous client may hold every view max_views allows. Each new view
    used to walk the client's views: 80,000 pages took the broker 41 s (1.5 s
    without tally), so one client could keep it busy for hours. Now a batch of
    200 more views costs about what it did when the client held none (the walk
    added about 80 ms to it at 80,000), and the views end with the connection.
    Announcements are slowed (publish_interval_ms, sync_interval_ms) so that
    their cost, which grows with the pages, does not blur the comparison."""
    node = brokers("n1", options={"stats_interval_ms": "200", "publish_interval_ms": "5000",
                                  "sync_interval_ms": "5000"})
    held, probe = 80000, 5000
    hog = Subscriber(node.port, "hog")
    try:
        before = hog.median_batch_s([f"a{i}" for i in range(probe)])
        for i in range(0, held, 500):
            hog.send([f"presence/p{j}" for j in range(i, i + 500)])
        hog.wait(held // 500)
        after = hog.median_batch_s([f"b{i}" for i in range(probe)])
        print(f"200 views: {before * 1000:.1f} ms holding none, {after * 1000:.1f} ms holding "
              f"{held}")
        assert after <= before + 0.040, (before, after)
        total = held + 2 * probe
        wait_for(lambda: viewers(node) == total, 10, what=f"{total} viewers")
    finally:
        hog.close()
    wait_for(lambda: viewers(node) == 0, 10, what="the views to end")
