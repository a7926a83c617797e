"""Counters replicated across bridged brokers: three real mosquitto nodes
with the plugin, bridged in a chain, a star and a triangle (a loop), on
127.0.0.1.

What the contract promises and these tests check: every node publishes the
exact cluster-wide total; replication stops once the nodes agree (no message
circulates forever in a loop); a partition heals by itself; duplicated,
reordered and stale replication messages change nothing; a node killed
without its state gets its old counts back from its peers; only bridges may
write under $tally/; viewers are counted over the cluster and a dead node's
viewers drop out after peer_timeout_ms while its counts stay.
"""
import json
import os
import random
import struct
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import wait_for
from tcpproxy import TcpProxy

NODES = ("a", "b", "c")
# node -> the nodes it bridges to (the connecting side of each bridge)
TOPOLOGIES = {
    "chain": {"b": ["a"], "c": ["b"]},
    "star": {"b": ["a"], "c": ["a"]},
    "triangle": {"b": ["a"], "c": ["b"], "a": ["c"]},
}
CONVERGE_TIMEOUT = 30.0  # seconds; convergence normally takes well under 5
BASE_OPTIONS = {"bridge_clientids": "*-to-*", "stats_interval_ms": "500"}


# ---- clients -------------------------------------------------------------

class Watcher:
    """A paho client that keeps the latest payload (bytes) of every topic it
    receives and, with keep=True, every message in arrival order."""

    def __init__(self, port, topics, client_id="", keep=False):
        self.latest = {}
        self.received = []
        self.keep = keep
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(client_id=client_id, clean_session=True)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        connected = threading.Event()
        self.c.on_connect = lambda *a: connected.set()
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        assert connected.wait(10), f"watcher {client_id!r} did not connect to {port}"
        self.c.subscribe([(t, 1) for t in topics])
        assert self.subscribed.wait(10), f"watcher {client_id!r}: no SUBACK"

    def _on_message(self, client, userdata, m):
        with self.lock:
            self.latest[m.topic] = m.payload
            if self.keep:
                self.received.append((m.topic, m.payload))

    def get(self, topic):
        with self.lock:
            return self.latest.get(topic)

    def messages(self):
        with self.lock:
            return list(self.received)

    def count(self):
        with self.lock:
            return len(self.received)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def publisher(port, client_id=""):
    """A connected MQTT 3.1.1 paho client, network loop running."""
    c = mqtt.Client(client_id=client_id, clean_session=True)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    connected = threading.Event()
    c.on_connect = lambda *a, **k: connected.set()
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    assert connected.wait(10), f"publisher {client_id!r} did not connect to {port}"
    return c


def publish_all(c, messages, qos, timeout=30.0):
    """Publishes (topic, payload) pairs and waits until paho has sent them all
    (QoS 0) or had them acknowledged (QoS 1)."""
    infos = [c.publish(topic, payload, qos) for topic, payload in messages]
    deadline = time.monotonic() + timeout
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert info.is_published(), "publish not completed in time"


def close(c):
    c.disconnect()
    c.loop_stop()


class Closer:
    def __init__(self, fn):
        self.close = fn


# ---- increments and expected totals ----------------------------------------

def payload_for(rng, delta):
    """One of the accepted increment forms for delta."""
    forms = [str(delta), json.dumps({"delta": delta})]
    if delta > 0:
        forms.append(f"+{delta}")
    if delta == 1:
        forms.append("")
    return rng.choice(forms)


class Ledger:
    """What has been acknowledged so far: the exact expected total per name."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.expected = {}
        self.lock = threading.Lock()

    def batch(self, names, n):
        """n random increments (random signs and payload forms) over names."""
        out = []
        for _ in range(n):
            name = self.rng.choice(names)
            delta = self.rng.choice([1, 1, -1]) * self.rng.randint(1, 1000)
            out.append((name, delta, payload_for(self.rng, delta)))
        return out

    def count_at(self, node, incs, qos):
        c = publisher(node.port)
        try:
            publish_all(c, [(f"counters/{n}/inc", p) for n, _, p in incs], qos)
        finally:
            close(c)
        with self.lock:
            for name, delta, _ in incs:
                self.expected[name] = self.expected.get(name, 0) + delta

    def round(self, nodes, names, per_node):
        """per_node increments at every node, half QoS 0 and half QoS 1, all
        nodes at once."""
        threads = []
        for node in nodes:
            for qos in (0, 1):
                incs = self.batch(names, per_node // 2)
                threads.append(threading.Thread(target=self.count_at, args=(node, incs, qos)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "publishers did not finish"


def totals(watcher, names):
    out = {}
    for name in names:
        v = watcher.get(f"counters/{name}")
        out[name] = int(v) if v is not None else None
    return out


def wait_converged(watchers, ledger, timeout=CONVERGE_TIMEOUT):
    """Waits until every node's retained totals equal the ledger exactly;
    returns the seconds it took."""
    t0 = time.monotonic()
    names = sorted(ledger.expected)

    def wrong():
        bad = {}
        for node, w in watchers.items():
            got = totals(w, names)
            diff = {n: (got[n], ledger.expected[n]) for n in names if got[n] != ledger.expected[n]}
            if diff:
                bad[node] = dict(list(diff.items())[:3]) | {"wrong": len(diff)}
        return bad

    wait_for(lambda: not wrong(), timeout, interval=0.1,
             what=f"exact totals everywhere (wrong now: {wrong()})")
    return time.monotonic() - t0


def stats(watcher, node):
    raw = watcher.get(f"$tally/stats/{node}")
    return json.loads(raw) if raw else None


# ---- cluster set-up ----------------------------------------------------------

def make_cluster(brokers, links, options=None, proxied=(), delay=0.0):
    """Nodes a, b, c; links maps a node to the nodes it bridges to; a
    (src, dst) pair in proxied goes through a TcpProxy (holding every byte
    `delay` seconds). Returns (nodes by name, proxies by pair, watchers by
    name) once every node has heard from every other."""
    opts = dict(BASE_OPTIONS, **(options or {}))
    nodes = {n: brokers(n, options=dict(opts), start=False) for n in NODES}
    proxies = {}
    for src, dsts in links.items():
        for dst in dsts:
            port = nodes[dst].port
            if (src, dst) in proxied:
                proxies[(src, dst)] = TcpProxy(port, delay=delay)
                port = proxies[(src, dst)].port
            nodes[src].bridges.append({"name": f"{src}-to-{dst}", "port": port})
    for n in NODES:
        nodes[n].start()
    watchers = {n: Watcher(nodes[n].port, ["counters/+", "presence/+", f"$tally/stats/{n}"])
                for n in NODES}
    neighbours = {n: set(links.get(n, ())) | {m for m in links if n in links[m]} for n in NODES}
    wait_for(lambda: all(hears_all(watchers[n], n, neighbours[n]) for n in NODES), 20,
             what="every node to hear from every other")
    return nodes, proxies, watchers


def hears_all(watcher, node, neighbours):
    """node's stats list exactly its neighbours, alive, and count every other node alive."""
    s = stats(watcher, node)
    return bool(s) and s["nodes"]["alive"] == len(NODES) - 1 and set(s["peers"]) == neighbours \
        and all(p["alive"] for p in s["peers"].values())


@pytest.fixture
def closing():
    """Things with a close() method, closed at the end of the test (before
    the brokers stop)."""
    things = []
    yield things
    for t in reversed(things):
        try:
            t.close()
        except Exception:
            pass


def cluster(brokers, closing, links, **kw):
    nodes, proxies, watchers = make_cluster(brokers, links, **kw)
    closing.extend(list(proxies.values()) + list(watchers.values()))
    return nodes, proxies, watchers


# ---- topologies --------------------------------------------------------------

@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_exact_totals_and_quiet_after_convergence(brokers, closing, topology):
    nodes, _, watchers = cluster(brokers, closing, TOPOLOGIES[topology])
    ledger = Ledger(f"topo-{topology}")
    names = [f"{topology}-{i}" for i in range(40)]
    for _ in range(2):
        ledger.round(nodes.values(), names, 400)
    wait_converged(watchers, ledger)

    # A trusted subscriber (its id matches bridge_clientids) on each node sees
    # every SYNC that node sends; incoming replication is consumed, not routed.
    spies = {n: Watcher(nodes[n].port, ["$tally/v1/sync/+"], client_id=f"spy-to-{n}", keep=True)
             for n in NODES}
    closing.extend(spies.values())
    time.sleep(2.0)  # let the last merges settle
    before = {n: (spies[n].count(), stats(watchers[n], n)) for n in NODES}
    window = 5.0
    time.sleep(window)
    after = {n: (spies[n].count(), stats(watchers[n], n)) for n in NODES}
    for n in NODES:
        syncs = after[n][0] - before[n][0]
        assert syncs == 0, (
            f"{topology}: {n} still sends SYNC after convergence ({syncs} in {window}s)")
        seconds = (after[n][1]["uptime_ms"] - before[n][1]["uptime_ms"]) / 1000
        out = after[n][1]["repl"]["msgs_out"] - before[n][1]["repl"]["msgs_out"]
        # per second at most: own presence heartbeat, own digest, and the two
        # other nodes' presence forwarded once each
        assert out <= 4 * (seconds + 1), (
            f"{topology}: {n} sent {out} replication messages in {seconds:.1f}s after convergence")
    for n in NODES:
        assert totals(watchers[n], names) == {k: ledger.expected[k] for k in names}


# ---- partition ---------------------------------------------------------------

def test_partition_heals_to_exact_totals(brokers, closing):
    nodes, proxies, watchers = cluster(brokers, closing, TOPOLOGIES["chain"],
                                       proxied=[("c", "b")])
    proxy = proxies[("c", "b")]
    ledger = Ledger("partition")
    names = [f"part-{i}" for i in range(30)]
    ledger.round(nodes.values(), names, 200)
    wait_converged(watchers, ledger)

    proxy.cut()
    wait_for(lambda: proxy.connections() == 0, 5, what="proxy connections closed")
    cut_at_c = sum(totals(watchers["c"], names).values())
    for _ in range(3):  # every side keeps counting while cut
        ledger.round(nodes.values(), names, 200)
        time.sleep(0.5)
    time.sleep(1.0)
    # c has its own new counts, not the others'; a and b agree without c's
    c_now = totals(watchers["c"], names)
    assert c_now != {k: ledger.expected[k] for k in names}, "c saw increments across the cut"
    assert sum(c_now.values()) != cut_at_c, "c did not take its own increments while cut"

    proxy.heal()
    took = wait_converged(watchers, ledger, timeout=20)
    print(f"partition healed: exact totals everywhere {took:.2f}s after heal")


# ---- a full mesh: nothing forwarded that a neighbour hears itself (rule 2a) ------

def read_varint(b, at):
    """(the varint at b[at], where it ends)."""
    v, shift = 0, 0
    while True:
        byte = b[at]
        at += 1
        v |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return v, at


def stream_seq(msg):
    """The seq of a SYNC in its sender's stream (0: a repair, outside it)."""
    return read_varint(msg, 5 + msg[4] + 8)[0]  # after the header, str8 sender, u64 session


def test_a_triangle_forwards_only_what_a_neighbour_does_not_hear(brokers, closing):
    """repl.c's rule 2a, in a full mesh of three. Each node's DIGEST lists the neighbours it
    hears; b takes what it learns from a to be owed to nobody, since c hears a itself, and sends
    no SYNC for a's increments (nor does c), nor routes a's own presence heartbeats on. With the
    a-c bridge cut, c hears a no more after three missed heartbeats: it asks b for a repair and
    stops listing a, and b forwards a's increments and heartbeats; c stays exact. Healed, b
    leaves them out again."""
    nodes, proxies, watchers = cluster(brokers, closing, TOPOLOGIES["triangle"],
                                       options={"sync_interval_ms": "1000"},
                                       proxied=[("a", "c")])
    spies = {n: Watcher(nodes[n].port, [f"$tally/v1/sync/{n}"], client_id=f"spy-to-{n}",
                        keep=True) for n in "bc"}
    # a's heartbeats as b routes them on (to c, and to this subscriber)
    routed = Watcher(nodes["b"].port, ["$tally/v1/presence/a"], client_id="routed-to-b",
                     keep=True)
    closing.extend(list(spies.values()) + [routed])
    ledger = Ledger("mesh")
    names = [f"mesh-{i}" for i in range(20)]

    def streamed(n, since):
        """How many SYNCs of n's stream went since mark `since`."""
        return sum(1 for _, m in spies[n].messages()[since:] if stream_seq(m) > 0)

    def a_round():
        mark = {n: spies[n].count() for n in "bc"}
        ledger.round([nodes["a"]], names, 200)
        took = wait_converged(watchers, ledger, timeout=20)
        time.sleep(0.5)
        return {n: streamed(n, mark[n]) for n in "bc"}, took

    time.sleep(2.5)  # every node's DIGEST has listed the neighbours it hears
    mark = routed.count()
    sent, _ = a_round()
    assert sent == {"b": 0, "c": 0}, f"SYNCs forwarded of what a sent to both: {sent}"
    assert routed.count() == mark, "b routed a's heartbeats on, which c hears from a"

    proxy = proxies[("a", "c")]
    proxy.cut()
    wait_for(lambda: proxy.connections() == 0, 5, what="proxy connections closed")
    _, first = a_round()  # at once: what b left out, c's repair brings
    time.sleep(3.0)  # c no longer lists a: b forwards what it learns from a
    mark = routed.count()
    sent, then = a_round()
    assert sent["b"] > 0, "b did not forward a's increments to c across the cut"
    # a heartbeats once a second, and the round may take less: the next one is routed on
    wait_for(lambda: routed.count() > mark, 3, interval=0.1,
             what="b to route a's heartbeats on to c across the cut")

    proxy.heal()
    wait_for(lambda: proxy.connections() > 0, 10, what="the a-c bridge back")
    time.sleep(4.0)  # c hears a again, and its DIGEST says so
    mark = routed.count()
    sent, _ = a_round()
    assert sent == {"b": 0, "c": 0}, f"SYNCs forwarded once healed: {sent}"
    assert routed.count() == mark, "b routed a's heartbeats on once healed"
    print(f"a triangle: nothing forwarded while every node heard a; cut a-c: c exact "
          f"{first:.2f} s after a round at once, {then:.2f} s once b forwarded; healed: "
          f"nothing forwarded again")


# ---- duplicated, reordered, replayed replication ----------------------------

def captured_rounds(closing, watchers, at, client_id, writers, names, rounds, per_node):
    """A client with a bridge's name keeping every SYNC at node `at` while `rounds` rounds of
    per_node increments over names go to writers; (the capture, the ledger), converged."""
    capture = Watcher(at.port, ["$tally/v1/sync/+"], client_id=client_id, keep=True)
    closing.append(capture)
    ledger = Ledger(client_id)
    for _ in range(rounds):
        ledger.round(writers, names, per_node)
        time.sleep(0.3)
    wait_converged(watchers, ledger)
    return capture, ledger


def test_replayed_replication_changes_nothing(brokers, closing):
    nodes, _, watchers = cluster(brokers, closing, TOPOLOGIES["chain"])
    names = [f"rep-{i}" for i in range(20)]
    capture, ledger = captured_rounds(closing, watchers, nodes["a"], "replay-to-x",
                                      [nodes["a"], nodes["b"]], names, 3, 100)
    captured = capture.messages()
    assert len(captured) >= 3, f"captured only {len(captured)} SYNC messages from a"
    assert all(t == "$tally/v1/sync/a" for t, _ in captured)

    replayer = publisher(nodes["c"].port, client_id="replay-to-x")
    closing.append(Closer(lambda: close(replayer)))
    c_before = stats(watchers["c"], "c")

    def replay(msgs, node_watchers):
        publish_all(replayer, msgs, 1)
        time.sleep(1.5)  # longer than publish_interval_ms and a digest round
        for w in node_watchers.values():
            assert totals(w, names) == {k: ledger.expected[k] for k in names}

    # duplicated and reversed
    replay([m for m in reversed(captured) for _ in range(2)], watchers)
    wait_for(lambda: stats(watchers["c"], "c")["repl"]["msgs_in"]
             >= c_before["repl"]["msgs_in"] + 2 * len(captured), 5,
             what="c to take in the replayed messages")
    assert stats(watchers["c"], "c")["repl"]["refused"] == c_before["repl"]["refused"]

    # stale: the cluster moves on, then the old states arrive again
    ledger.round(nodes.values(), names, 200)
    wait_converged(watchers, ledger)
    replay(list(captured) + list(captured[:1]) * 3, watchers)
    wait_converged(watchers, ledger, timeout=5)

    # garbage from the trusted client is refused whole
    refused0 = stats(watchers["c"], "c")["repl"]["refused"]
    good = captured[-1][1]
    garbage = [b"", b"garbage", b"TL", b"TL\x09\x01" + good[4:], good[:len(good) // 2],
               good + b"\x00", b"TL\x01\x07" + good[4:], os.urandom(300)]
    publish_all(replayer, [("$tally/v1/sync/x", g) for g in garbage], 1)
    wait_for(lambda: stats(watchers["c"], "c")["repl"]["refused"] >= refused0 + len(garbage), 5,
             what=f"c to count {len(garbage)} refused replication messages")
    time.sleep(1.0)
    for w in watchers.values():
        assert totals(w, names) == {k: ledger.expected[k] for k in names}
    assert "bad_replication_message" in nodes["c"].read_log()


# ---- kill -9 without state ----------------------------------------------------

def test_killed_node_without_state_gets_its_counts_back(brokers, closing):
    nodes, _, watchers = cluster(brokers, closing, TOPOLOGIES["chain"])
    ledger = Ledger("kill")
    names = [f"kill-{i}" for i in range(30)]
    ledger.round(nodes.values(), names, 300)
    wait_converged(watchers, ledger)

    watchers["b"].close()
    nodes["b"].kill()  # the middle node: a and c are cut off from each other
    ledger.round([nodes["a"], nodes["c"]], names, 200)
    nodes["b"].start()
    watchers["b"] = Watcher(nodes["b"].port, ["counters/+", "presence/+", "$tally/stats/b"])
    closing.append(watchers["b"])
    ledger.round([nodes["b"]], names, 300)  # increments right after coming back
    took = wait_converged(watchers, ledger)
    print(f"restarted node: exact totals everywhere {took:.2f}s after its new increments")
    s = stats(watchers["b"], "b")
    assert s["persist"] == "memory"


def test_a_repair_goes_to_its_asker_alone(brokers, closing):
    """c (a leaf of the star around a) comes back without its state: a sends it every counter
    whole, to c alone (a publish to c's bridge). A client holding a bridge's name and
    `$tally/v1/sync/+` at a, as b's bridge does, hears none of it; published to all, as before,
    every neighbour of a took the whole state again at every restart of any other."""
    nodes, _, watchers = cluster(brokers, closing, TOPOLOGIES["star"])
    ledger = Ledger("repair")
    names = [f"repair-{i}" for i in range(300)]
    ledger.round([nodes["b"]], names, 600)
    wait_converged(watchers, ledger)
    spy = Watcher(nodes["a"].port, ["$tally/v1/sync/+"], client_id="spy-to-a", keep=True)
    closing.append(spy)
    time.sleep(1.0)  # the last deltas have gone
    before = sum(len(p) for _, p in spy.messages())
    watchers["c"].close()
    nodes["c"].kill()
    nodes["c"].start()
    watchers["c"] = Watcher(nodes["c"].port, ["counters/+", "presence/+", "$tally/stats/c"])
    closing.append(watchers["c"])
    wait_converged(watchers, ledger)  # c has every counter back, from a's repair
    heard = sum(len(p) for _, p in spy.messages()) - before
    assert heard < 1000, f"a's repair to c reached another bridge: {heard} bytes of SYNC"
    held = len(ledger.expected)  # the names the round wrote
    wait_for(lambda: (stats(watchers["c"], "c") or {}).get("counters") == held, 10,
             what=f"c to hold {held} counters")


# ---- forged replication from an ordinary client --------------------------------

def varint(v):
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def str8(s):
    b = s.encode()
    return bytes([len(b)]) + b


def forged_sync(sender, counter, p):
    """A well-formed SYNC (wire.c) claiming that sender's replica has p
    increments on counter."""
    return (b"TL\x01\x01" + str8(sender) + varint(1) + str8(sender) + struct.pack("<Q", 1)
            + varint(0) + varint(1) + str8(counter) + varint(1) + varint(0) + varint(p)
            + varint(0) + varint(0))


def test_ordinary_client_cannot_forge_replication(brokers, closing, workdir):
    nodes, _, watchers = cluster(brokers, closing, TOPOLOGIES["chain"])
    ledger = Ledger("forge")
    names = ["forge-0", "forge-1"]
    ledger.round(nodes.values(), names, 50)
    wait_converged(watchers, ledger)
    snoop = Watcher(nodes["a"].port, ["$tally/v1/sync/+", "$tally/v1/digest/+"], client_id="snoop",
                    keep=True)
    closing.append(snoop)

    path = os.path.join(workdir, "forged.bin")
    with open(path, "wb") as f:
        f.write(forged_sync("a", "forge-0", 10 ** 9))
    for topic in ("$tally/v1/sync/a", "$tally/v1/sync/b", "$tally/v1/digest/a",
                  "$tally/v1/presence/a"):
        r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(nodes["a"].port),
                            "-V", "5", "-q", "1", "-d", "-i", "mallory", "-t", topic, "-f", path],
                           capture_output=True, text=True, timeout=20)
        assert "RC:135" in r.stdout + r.stderr, (
            f"{topic}: no reason code 0x87:\n{r.stdout}{r.stderr}")
    r = nodes["a"].pub("$tally/stats/a", '{"node":"a","incarnation":"1","seq":99999}', qos=1,
                       extra=["-V", "5", "-d", "-i", "mallory"])
    assert "RC:135" in r.stdout + r.stderr

    time.sleep(1.5)
    for w in watchers.values():
        assert totals(w, names) == ledger.expected
    log = nodes["a"].read_log()
    assert ("tally: refused publish from client 'mallory' to '$tally/v1/sync/a': "
            "forbidden_topic") in log
    assert snoop.count() == 0, "an ordinary client read replication traffic"


# ---- presence over the cluster -------------------------------------------------

def test_presence_summed_and_dead_node_dropped(brokers, closing):
    nodes, _, watchers = cluster(brokers, closing, TOPOLOGIES["chain"],
                                 options={"peer_timeout_ms": "3000"})
    viewers = {"a": 2, "b": 3, "c": 4}
    for n, k in viewers.items():
        for i in range(k):
            closing.append(Watcher(nodes[n].port, ["presence/home"], client_id=f"viewer-{n}-{i}"))
    ledger = Ledger("presence")
    ledger.round(nodes.values(), ["pc"], 60)
    wait_converged(watchers, ledger)

    def page(n):
        v = watchers[n].get("presence/home")
        return int(v) if v is not None else None

    wait_for(lambda: all(page(n) == 9 for n in NODES), 10,
             what=f"presence/home == 9 everywhere (is {[page(n) for n in NODES]})")

    watchers["c"].close()
    killed = time.monotonic()
    nodes["c"].kill()
    wait_for(lambda: page("a") == 5 and page("b") == 5, 3.0 + 3.0,
             what=f"c's viewers dropped at a and b (is {page('a')}, {page('b')})")
    took = time.monotonic() - killed
    print(f"dead node's viewers dropped {took:.2f}s after kill -9 (peer_timeout_ms 3000)")
    assert took >= 2.0, f"viewers dropped after {took:.2f}s, before peer_timeout_ms"
    time.sleep(1.0)
    for n in ("a", "b"):
        assert totals(watchers[n], ["pc"]) == ledger.expected, "dead node's counts were dropped"
        assert page(n) == 5
        heard = stats(watchers[n], n)["nodes"]
        assert (heard["heard"], heard["alive"]) == (2, 1), heard
    # c is listed dead by its one neighbour; a, which it never bridged to, only counts it
    assert stats(watchers["b"], "b")["peers"]["c"]["alive"] is False
    assert set(stats(watchers["a"], "a")["peers"]) == {"b"}

    # c comes back (new incarnation, no state): its new viewers count again
    nodes["c"].start()
    watchers["c"] = Watcher(nodes["c"].port, ["counters/+", "presence/+", "$tally/stats/c"])
    closing.append(watchers["c"])
    for i in range(4):
        closing.append(Watcher(nodes["c"].port, ["presence/home"], client_id=f"viewer-c2-{i}"))
    wait_for(lambda: all(page(n) == 9 for n in NODES), 10,
             what=f"presence/home == 9 again (is {[page(n) for n in NODES]})")
    wait_converged(watchers, ledger)


# ---- device reports across nodes -------------------------------------------------

def test_device_reports_counted_once_across_nodes(brokers, closing):
    nodes, _, watchers = cluster(brokers, closing, TOPOLOGIES["triangle"])
    for node, total in (("a", 100), ("c", 150), ("b", 120), ("a", 90)):
        r = nodes[node].pub("counters/meters/report", json.dumps({"device": "meter-7",
                                                                   "total": total}))
        assert r.returncode == 0, r.stderr
    r = nodes["b"].pub("counters/meters/inc", "-5")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: all(totals(w, ["meters"]) == {"meters": 145} for w in watchers.values()), 10,
             what="meters == 150 - 5 everywhere")


# ---- presence and stats flooded from many nodes -------------------------------------

def presence_msg(origin, incarnation, seq):
    """A PRESENCE (wire.c) from origin with no viewers on any page."""
    return (b"TL\x02\x03" + str8(origin) + struct.pack("<QQ", incarnation, seq)
            + struct.pack("<QQ", 0, 2**64 - 1) + varint(0))  # all pages: [0, 2^64-1]


def digest_msg(sender):
    """A DIGEST (wire.c, version 2) from sender: new stream, nothing asked, empty buckets."""
    return (b"TL\x02\x02" + str8(sender) + struct.pack("<Q", 7) + varint(0) + varint(0)
            + varint(256) + bytes(8 * 256))


def test_stats_flood_with_many_peers(brokers, closing):
    """A node with 40 more neighbours with long (46-byte) ids, each a trusted client that
    sent a DIGEST: a's stats list them all (about 4 kB of JSON); its peers must still take
    a's stats in and keep flooding them, not refuse them as bad_replication_message."""
    nodes, _, watchers = cluster(brokers, closing, TOPOLOGIES["chain"])
    origins = [f"broker-{i:02d}.eu-west-1.cluster.example.internal" for i in range(40)]
    for i, o in enumerate(origins):
        fake = publisher(nodes["a"].port, client_id=f"fake{i:02d}-to-a")
        publish_all(fake, [(f"$tally/v1/digest/{o}", digest_msg(o))], 1)
        close(fake)
    wait_for(lambda: len(stats(watchers["a"], "a")["peers"]) == 41, 5, what="a lists 41 peers")
    size = len(watchers["a"].get("$tally/stats/a"))
    b_view = Watcher(nodes["b"].port, ["$tally/stats/a"])
    closing.append(b_view)
    seq_at_a = stats(watchers["a"], "a")["seq"]
    refused_b = stats(watchers["b"], "b")["repl"]["refused"]
    time.sleep(2.0)
    got = b_view.get("$tally/stats/a")
    seq_at_b = json.loads(got)["seq"] if got else None
    refusals = [line for line in nodes["b"].read_log().splitlines()
                if "to '$tally/stats/a'" in line][-1:]
    assert seq_at_b is not None and seq_at_b >= seq_at_a, (
        f"b holds a's stats seq {seq_at_b}, a is at {seq_at_a} (a's stats are {size} bytes); "
        f"b's log: {refusals}")
    assert stats(watchers["b"], "b")["repl"]["refused"] == refused_b


# ---- a node restarted with its state ------------------------------------------------

def test_restarted_node_with_state_is_heard_at_once(brokers, closing, workdir):
    """Issue 10 #3: a node restarted with its state_dir keeps its incarnation; its presence and
    stats sequence numbers started again at 1, so its peers dropped its announcements as old for
    as long as it had been up: departed viewers stayed counted, new ones were not. Sequence
    numbers now follow the wall clock, so the peers take them at once."""
    opts = dict(BASE_OPTIONS, peer_timeout_ms="1000")  # a heartbeat every 200 ms
    a = brokers("a", options=dict(opts, state_dir=os.path.join(workdir, "state-a")), start=False)
    b = brokers("b", options=dict(opts), start=False)
    b.bridges.append({"name": "b-to-a", "port": a.port})
    a.start()
    b.start()
    at_b = Watcher(b.port, ["presence/+", "$tally/stats/a"])
    closing.append(at_b)

    def page():
        v = at_b.get("presence/lobby")
        return int(v) if v is not None else None

    def a_stats():
        raw = at_b.get("$tally/stats/a")
        return json.loads(raw) if raw else None

    viewer = Watcher(a.port, ["presence/lobby"], client_id="viewer-1")
    wait_for(lambda: page() == 1, 10, what=f"b counts a's viewer (is {page()})")
    time.sleep(8.0)  # a has sent about 40 announcements and 16 stats
    viewer.close()
    wait_for(lambda: page() == 0, 5, what="b drops a's viewer")
    before = a_stats()
    assert before and before["uptime_ms"] > 7000

    a.stop()
    a.start()
    restarted = time.monotonic()
    closing.append(Watcher(a.port, ["presence/lobby"], client_id="viewer-2"))
    wait_for(lambda: page() == 1, 4.0, what=f"b counts the restarted a's new viewer (is {page()})")
    took = time.monotonic() - restarted
    st = wait_for(lambda: (a_stats() or {}).get("uptime_ms", 1e12) < 5000 and a_stats(), 4.0,
                  what=f"b takes the restarted a's stats (has {a_stats()})")
    assert st["incarnation"] == before["incarnation"], "the state was not kept"
    closing[-1].close()
    wait_for(lambda: page() == 0, 4.0, what=f"b drops the restarted a's viewer (is {page()})")
    print(f"restarted node's viewer counted at its peer {took:.2f}s after the restart")


# ---- stats read whatever the order of their fields -------------------------------------

def test_stats_taken_whatever_the_order_of_their_fields(brokers, closing):
    """The stats handler read only the first 256 bytes with strstr/sscanf and relied on
    "incarnation" and "seq" coming first; stats are JSON and are now read as JSON."""
    nodes, _, watchers = cluster(brokers, closing, TOPOLOGIES["chain"])
    fake = publisher(nodes["a"].port, client_id="fake-to-a")
    closing.append(Closer(lambda: close(fake)))
    refused = stats(watchers["a"], "a")["repl"]["refused"]
    peers = {f"peer-{i:02d}": {"last_heard_ms": 1, "alive": True} for i in range(20)}
    doc = {"node": "zz", "peers": peers, "seq": 5, "incarnation": "77"}
    # retained, as a node publishes its own stats: nodes pass them on as they came
    fake.publish("$tally/stats/zz", json.dumps(doc), 1, retain=True).wait_for_publish(5)
    at_c = Watcher(nodes["c"].port, ["$tally/stats/zz"])
    closing.append(at_c)
    wait_for(lambda: at_c.get("$tally/stats/zz"), 5, what="c holds zz's stats, flooded via a, b")
    assert json.loads(at_c.get("$tally/stats/zz"))["seq"] == 5
    # an older seq of the same incarnation is not taken; a bad document is refused
    publish_all(fake, [("$tally/stats/zz", json.dumps(dict(doc, seq=4, node="old"))),
                       ("$tally/stats/zz", '{"seq": 9, "incarnation": 77}'),
                       ("$tally/stats/zz", '{"seq": 9')], 1)
    wait_for(lambda: stats(watchers["a"], "a")["repl"]["refused"] == refused + 2, 5,
             what="a refuses the two bad documents")
    assert json.loads(at_c.get("$tally/stats/zz"))["node"] == "zz"


# ---- every replication message within max_message_bytes ------------------------------

def test_every_replication_message_is_within_max_message_bytes(brokers, closing):
    """Issue 10 #7: one client viewing many long page names made a presence announcement of
    hundreds of KB, sent every heartbeat to every node, and a state message could pass
    max_message_bytes too. Every message a node sends, of any type, is at most
    max_message_bytes (split over several), and a larger one arriving is refused and counted."""
    limit = 4096
    opts = {"max_message_bytes": str(limit)}
    nodes, _, watchers = cluster(brokers, closing, {"b": ["a"], "c": ["b"]}, options=opts)
    spy = Watcher(nodes["a"].port, ["$tally/#"], client_id="spy-to-a", keep=True)
    closing.append(spy)
    pages = [f"{i:03d}-" + "p" * 150 for i in range(300)]
    viewer = mqtt.Client(client_id="many-pages", clean_session=True)
    viewer.connect("127.0.0.1", nodes["a"].port, 30)
    viewer.loop_start()
    closing.append(Closer(lambda: (viewer.disconnect(), viewer.loop_stop())))
    viewer.subscribe([(f"presence/{p}", 0) for p in pages])
    lines = "\n".join(json.dumps({"device": f"device-{i:04d}-" + "d" * 30, "total": 1})
                      for i in range(600)) + "\n"
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(nodes["a"].port), "-q", "1",
                        "-t", "counters/wide/report", "-l", "-i", "feeder"], input=lines,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr

    def counted(w):
        return sum(1 for p in pages if w.get(f"presence/{p}") == b"1")

    for n in ("b", "c"):
        wait_for(lambda: counted(watchers[n]) == len(pages), 15,
                 what=f"{n} counts the viewer on all {len(pages)} pages "
                      f"(does on {counted(watchers[n])})")
        wait_for(lambda: totals(watchers[n], ["wide"]) == {"wide": 600}, 15,
                 what=f"{n}: wide == 600 (is {totals(watchers[n], ['wide'])})")
    time.sleep(1.5)  # a few more heartbeats and stats
    sizes = {}
    for topic, payload in spy.messages():
        kind = topic.split("/")[2] if topic.startswith("$tally/v1/") else "stats"
        sizes.setdefault(kind, []).append(len(payload))
    assert max(max(v) for v in sizes.values()) <= limit, {k: max(v) for k, v in sizes.items()}
    assert len(sizes.get("presence", [])) >= 12 and len(sizes.get("sync", [])) >= 7, {
        k: len(v) for k, v in sizes.items()}

    # the viewer leaves: every page goes back to 0 on the other nodes
    viewer.unsubscribe([f"presence/{p}" for p in pages[1:]])
    wait_for(lambda: counted(watchers["c"]) == 1, 10,
             what=f"c drops the views that ended (counts {counted(watchers['c'])})")

    big = publisher(nodes["b"].port, client_id="big-to-b")
    closing.append(Closer(lambda: close(big)))
    publish_all(big, [("$tally/v1/sync/x", b"TL\x01\x01" + bytes(limit)),
                      ("$tally/v1/presence/x", b"TL\x01\x03" + bytes(limit))], 1)
    s = wait_for(lambda: (stats(watchers["b"], "b") or {}).get("repl", {}).get("too_large") == 2
                 and stats(watchers["b"], "b"), 5, what="b counts two messages too large")
    assert s["rejected"]["message_too_large"] == 2
    assert "to '$tally/v1/sync/x': message_too_large" in nodes["b"].read_log()
