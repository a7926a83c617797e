"""Tiers (issue 14): edges (plugin_opt_role edge) bridged to two hubs by a bridge with an
address list, real brokers on loopback. Every edge takes increments and has viewers; every
node ends exact. Then a hub is killed with -9 under load: its edges fail over to the other hub
and, once it is back, return to it; totals stay exact, nothing is counted twice, and no edge's
clients ever see a total go down."""
import json
import re
import threading
import time

from conftest import wait_for
from test_cluster import Watcher, close, closing, publisher  # noqa: F401 (closing: a fixture)

OPTIONS = {"bridge_clientids": "*-to-*", "peer_timeout_ms": "3000", "sync_interval_ms": "500"}


def edge_bridge(name, hubs):
    """The edge's one bridge: up to its hubs in order, down only its own DOWN."""
    addresses = " ".join(f"127.0.0.1:{h.port}" for h in hubs)
    return "\n".join([
        f"connection {name}-to-hub",
        f"address {addresses}",
        f"clientid {name}-to-hub",
        "topic $tally/up/# out 1",
        f"topic $tally/down/{name} in 1",
        "restart_timeout 1 1",
        "cleansession true",
        "try_private true",
    ])


def bridged_to(edge):
    """The ports the edge's bridge connected to, in order (from its log)."""
    return [int(m) for m in re.findall(r"Connecting bridge[^\n]*-to-hub \(127\.0\.0\.1:(\d+)\)",
                                       edge.read_log())]


def tree(brokers):
    """Hubs h1 and h2 (a cluster of two); edges e1, e2 on h1 (h2 second), e3, e4 on h2."""
    h1 = brokers("h1", options=dict(OPTIONS))
    h2 = brokers("h2", options=dict(OPTIONS), bridges=[{"name": "h2-to-h1", "port": h1.port}])
    edges = []
    for i, hubs in enumerate([(h1, h2), (h1, h2), (h2, h1), (h2, h1)], start=1):
        name = f"e{i}"
        edges.append(brokers(name, options=dict(OPTIONS, role="edge"),
                             extra=edge_bridge(name, hubs)))
    return h1, h2, edges


def viewers(edges, closing, per_edge=2):
    for e in edges:
        for k in range(per_edge):
            closing.append(Watcher(e.port, ["presence/home"], client_id=f"{e.name}-viewer{k}"))


def increments(edges, rounds, expected, pause=0.0):
    """Each edge: `rounds` increments of `shared` and of its own counter, QoS 1, all
    acknowledged; expected totals are added to `expected`."""
    pubs = [publisher(e.port) for e in edges]
    infos = []
    for r in range(rounds):
        for e, p in zip(edges, pubs):
            for name in ("shared", f"own-{e.name}"):
                infos.append(p.publish(f"counters/{name}/inc", "1", 1))
                expected[name] = expected.get(name, 0) + 1
        if pause:
            time.sleep(pause)
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published(), "an increment was not acknowledged"
    for p in pubs:
        close(p)


def exact_everywhere(nodes, expected, timeout=30):
    for n in nodes:
        for name, value in expected.items():
            n.wait_total(name, value, timeout)


def test_small_tree_exact_everywhere(brokers, closing):
    h1, h2, edges = tree(brokers)
    viewers(edges, closing)
    expected = {}
    increments(edges, 50, expected)
    exact_everywhere([h1, h2], expected)
    # An edge holds only what its clients write or watch: `shared` and its own counter,
    # while each hub holds all five.
    for n, count in [(h1, 5), (h2, 5)] + [(e, 2) for e in edges]:
        wait_for(lambda: json.loads(n.retained(f"$tally/stats/{n.name}"))["counters"] == count,
                 10, what=f"{n.name} to hold {count} counters")
    exact_everywhere(edges, expected)
    for n in [h1, h2] + edges:
        wait_for(lambda: n.retained("presence/home") == "8", 20,
                 what=f"{n.name}: presence/home == 8 (is {n.retained('presence/home')})")


def test_edge_failover_under_load_and_back(brokers, closing):
    h1, h2, edges = tree(brokers)
    viewers(edges, closing, per_edge=1)
    # Every edge's clients watch `shared`: what they see must never go down.
    seen = [Watcher(e.port, ["counters/shared"], keep=True) for e in edges]
    closing.extend(seen)
    expected = {}
    increments(edges, 20, expected)
    exact_everywhere([h1, h2] + edges, expected)

    load = threading.Thread(target=increments, args=(edges, 60, expected, 0.05))
    load.start()
    time.sleep(1.0)
    h1.kill()  # -9: e1 and e2 fail over to h2
    load.join(60)
    assert not load.is_alive(), "the load did not finish"
    for e in edges[:2]:
        assert bridged_to(e)[-1] == h2.port, f"{e.name} did not fail over to h2"
    exact_everywhere([h2] + edges, expected)
    wait_for(lambda: all(e.retained("presence/home") == "4" for e in edges + [h2]), 20,
             what="4 viewers of home at h2 and every edge after the failover")

    h1.start()  # empty (no state_dir); h2's bridge and the edges come back to it
    more = {}
    increments(edges, 10, more)
    for k, v in more.items():
        expected[k] += v
    for e in edges[:2]:
        wait_for(lambda: bridged_to(e)[-1] == h1.port, 30, what=f"{e.name} back on h1")
    exact_everywhere([h1, h2] + edges, expected, timeout=60)
    wait_for(lambda: all(n.retained("presence/home") == "4" for n in edges + [h1, h2]), 30,
             what="4 viewers of home everywhere once h1 is back")
    for w in seen:
        values = [int(p) for t, p in w.messages() if t == "counters/shared"]
        assert values == sorted(values), f"a total went down: {values}"
        assert values[-1] == expected["shared"]


MANY = 2000


def many_names():
    return [f"c{i:04d}" for i in range(MANY)]


def increments_of(port, names, delta):
    """One QoS 1 increment of `delta` on each name, all acknowledged."""
    p = publisher(port)
    infos = [p.publish(f"counters/{n}/inc", str(delta), 1) for n in names]
    for info in infos:
        info.wait_for_publish(60)
        assert info.is_published(), "an increment was not acknowledged"
    close(p)


def all_equal(watcher, names, value):
    want = str(value).encode()
    return all(watcher.get(f"counters/{n}") == want for n in names)


def test_an_up_and_a_down_past_max_message_bytes_go_in_parts(brokers, closing):
    """Issue 14 follow-up: an edge writing and watching 2,000 counters sends UPs (its slots,
    its watch list) and hears DOWNs far past max_message_bytes 4096: they go in parts of at
    most 4096 bytes, each taken alone, and every node is exact; nothing is dropped."""
    options = dict(OPTIONS, max_message_bytes="4096")
    big_queues = "max_queued_messages 100000"
    h1 = brokers("h1", options=dict(options), extra=big_queues)
    h2 = brokers("h2", options=dict(options), extra=big_queues,
                 bridges=[{"name": "h2-to-h1", "port": h1.port}])
    e1 = brokers("e1", options=dict(options, role="edge"),
                 extra=edge_bridge("e1", [h1, h2]) + "\n" + big_queues)
    e2 = brokers("e2", options=dict(options, role="edge"),
                 extra=edge_bridge("e2", [h2, h1]) + "\n" + big_queues)
    names = many_names()
    at_edge = Watcher(e1.port, [f"counters/{n}" for n in names])
    at_hubs = [Watcher(h.port, ["counters/+"]) for h in (h1, h2)]
    closing.extend([at_edge] + at_hubs)
    increments_of(e1.port, names, 1)
    increments_of(e2.port, names, 2)  # e1 learns these only from DOWNs
    for w, where in [(at_hubs[0], "h1"), (at_hubs[1], "h2"), (at_edge, "e1")]:
        wait_for(lambda: all_equal(w, names, 3), 60,
                 what=f"{where}: all {MANY} counters == 3")
    for n in (h1, h2, e1, e2):
        stats = json.loads(n.retained(f"$tally/stats/{n.name}"))
        assert stats["repl"]["too_large"] == 0, f"{n.name} refused a message over 4096 bytes"
        assert stats["repl"]["too_large_out"] == 0, f"{n.name} dropped one of its own"
        assert "not sending" not in n.read_log()
