"""Groups of hubs (plugin_opt_group, plugin/group.c), real brokers on loopback: two groups of
two hubs, each hub with an edge whose failover list stays in its group. Inside a group the hubs
replicate as any cluster; between groups a bridge carries GSUMs (each group's sum), viewers and
stats only. Every node ends exact, and a hub holds its own group's slots and one slot for the
other group, whatever the other group holds."""
import json
import struct
import threading
import subprocess
import time

import pytest

from conftest import wait_for
from test_cluster import closing  # noqa: F401 (a fixture)
from test_cluster import Watcher, close, publisher, str8, varint
from test_presence_changes import Reader
from test_reset import control
from tcpproxy import TcpProxy
from test_tier_faults import never_down
from test_tiers import (bridged_to, edge_bridge, exact_everywhere, increments, increments_of,
                        viewers)

OPTIONS = {"bridge_clientids": "*-to-*", "peer_timeout_ms": "3000", "sync_interval_ms": "500",
           "admin_usernames": "admin"}

BETWEEN_GROUPS = ["topic $tally/v1/gsum/# both 1", "topic $tally/v1/gviews/# both 1",
                  "topic $tally/stats/# both 1"]


def bridge(name, ports, topics):
    """A bridge to the first of ports that is up (Mosquitto's address list)."""
    addresses = " ".join(f"127.0.0.1:{p}" for p in ports)
    return "\n".join([f"connection {name}", f"address {addresses}", f"clientid {name}",
                      *topics, "restart_timeout 1 1", "cleansession true", "try_private true"])


def two_groups(brokers, between=BETWEEN_GROUPS, proxy=None, options=None):
    """g1 = a1, a2 and g2 = b1, b2, each pair bridged with all of $tally/; b1 bridged to g1
    (a1, or a2 while a1 is down) with `between`; edges e1 (a1, then a2), e2 (a2, a1), e3 (b1, b2), e4 (b2, b1).
    options: the hubs' besides OPTIONS."""
    opts = dict(OPTIONS, **(options or {}))
    a1 = brokers("a1", options=dict(opts, group="g1"))
    a2 = brokers("a2", options=dict(opts, group="g1"), bridges=[{"name": "a2-to-a1",
                                                                 "port": a1.port}])
    ports = (proxy(a1.port),) if proxy else (a1.port, a2.port)
    b1 = brokers("b1", options=dict(opts, group="g2"), extra=bridge("b1-to-g1", ports, between))
    b2 = brokers("b2", options=dict(opts, group="g2"), bridges=[{"name": "b2-to-b1",
                                                                 "port": b1.port}])
    edges = []
    for i, hubs in enumerate([(a1, a2), (a2, a1), (b1, b2), (b2, b1)], start=1):
        name = f"e{i}"
        edges.append(brokers(name, options=dict(OPTIONS, role="edge"),
                             extra=edge_bridge(name, hubs)))
    return [a1, a2, b1, b2], edges


def watch_shared(closing, nodes):
    """A watcher of `shared` at each node, every message kept."""
    watchers = [Watcher(n.port, ["counters/shared"], keep=True) for n in nodes]
    closing.extend(watchers)
    return watchers


def state_nodes(node, name):
    doc = node.retained(f"counters/{name}/state")
    return set(json.loads(doc)["nodes"]) if doc else set()


def group_stats(hub):
    return json.loads(hub.retained(f"$tally/stats/{hub.name}") or "{}").get("group", {})


def test_two_groups_exact_with_a_slot_per_group(brokers, closing):
    hubs, edges = two_groups(brokers)
    a1, a2, b1, b2 = hubs
    viewers(edges, closing)
    expected = {}
    increments(edges, 40, expected)
    for h in hubs:  # the hubs' own clients too
        p = publisher(h.port)
        p.publish("counters/shared/inc", "3", 1).wait_for_publish(10)
        close(p)
        expected["shared"] += 3
    exact_everywhere(hubs + edges, expected)
    # Each hub holds its group's nodes and the other group, as one replica.
    for h, own, other in ((a1, {"a1", "a2", "e1", "e2"}, ".g2"), (a2, {"a1", "a2", "e1", "e2"},
                          ".g2"), (b1, {"b1", "b2", "e3", "e4"}, ".g1"),
                          (b2, {"b1", "b2", "e3", "e4"}, ".g1")):
        wait_for(lambda: state_nodes(h, "shared") == own | {other}, 10,
                 what=f"{h.name}: shared held as {sorted(own | {other})}, "
                      f"is {sorted(state_nodes(h, 'shared'))}")
    for n in hubs + edges:
        wait_for(lambda: n.retained("presence/home") == "8", 20,
                 what=f"{n.name}: presence/home == 8 (is {n.retained('presence/home')})")
    # One hub speaks for each group: the first by node id.
    for h, speaks in ((a1, True), (a2, False), (b1, True), (b2, False)):
        wait_for(lambda: group_stats(h).get("speaking") is speaks, 15,
                 what=f"{h.name} {'to speak' if speaks else 'to keep quiet'} for its group")
    # The other group's replica is not a node to remove.
    (resp,) = control(a1, [{"command": "removeNode", "node": ".g2"}])
    assert "group" in resp.get("error", ""), resp
    exact_everywhere(hubs + edges, expected, timeout=5)


def counting(hub):
    """How many origins' viewers the hub counts (its stats' nodes.counting)."""
    doc = json.loads(hub.retained(f"$tally/stats/{hub.name}") or "{}")
    return doc.get("nodes", {}).get("counting")


def test_viewers_cross_groups_as_one_sum_per_group(brokers, closing):
    """Each hub counts its own group's edges and one sum for the other group (plugin/scope.c),
    which the group's speaker sends on gviews/, the one topic of viewers the bridge between the
    groups carries. a1, which
    speaks for g1, is killed with -9: a2 takes over g1's sum, and g2 never loses e1's viewers
    for longer than the takeover; e4 killed with -9 leaves every count, g1's included, within
    peer_timeout_ms (3 s) and a few publish intervals."""
    hubs, edges = two_groups(brokers)
    a1, a2, b1, b2 = hubs
    viewers(edges, closing)
    for n in hubs + edges:
        wait_for(lambda: n.retained("presence/home") == "8", 20,
                 what=f"{n.name}: presence/home == 8 (is {n.retained('presence/home')})")
    # e1, e2 and ".g2" at g1's hubs; e3, e4 and ".g1" at g2's
    for h in hubs:
        wait_for(lambda: counting(h) == 3, 15, what=f"{h.name} to count 3 origins' viewers, "
                                                    f"counts {counting(h)}")
    a1.kill()
    wait_for(lambda: group_stats(a2).get("speaking") is True, 15, what="a2 to speak for g1")
    for n in (a2, b1, b2):
        wait_for(lambda: n.retained("presence/home") == "8", 15,
                 what=f"{n.name}: presence/home == 8 after a1 died "
                      f"(is {n.retained('presence/home')})")
    e4 = edges[3]
    e4.kill()
    killed = time.monotonic()
    for n in (a2, b1, b2):
        wait_for(lambda: n.retained("presence/home") == "6", 15,
                 what=f"{n.name}: presence/home == 6 after e4 died "
                      f"(is {n.retained('presence/home')})")
    took = time.monotonic() - killed
    print(f"e4's viewers left every hub {took:.2f}s after kill -9 (peer_timeout_ms 3000)")
    assert took < 3.0 + 3.0, f"e4's viewers stayed {took:.2f}s"
    a1.start()
    for n in hubs + edges[:3]:
        wait_for(lambda: n.retained("presence/home") == "6", 20,
                 what=f"{n.name}: presence/home == 6 (is {n.retained('presence/home')})")
    wait_for(lambda: group_stats(a1).get("speaking") is True, 15, what="a1 to speak again")
    wait_for(lambda: group_stats(a2).get("speaking") is False, 15, what="a2 to keep quiet")


def stats_of(at, node):
    """node's stats document as hub `at` holds it (retained there), {} if none."""
    return json.loads(at.retained(f"$tally/stats/{node}") or "{}")


def test_a_flood_goes_on_only_where_a_neighbour_lacks_it(brokers, closing):
    """Rule 2b (plugin/repl.c): g1 = a1, a2, a3 in a full mesh, g2 = b1, bridged to g1 at a2 (or
    a3 while a2 is down); a1 speaks for g1. g2's sums, viewer sums and stats come in at a2, which
    sends them on; a1 and a3 each had them from a2 and hold them (repl.floods_held), yet count
    g2 exactly. a1's sums come to a2 from a1, which every other neighbour hears: a2 sends them on
    for its bridge out of the group all the same, or b1 would never count g1. Stats are sent on
    everywhere: a1 shows a3's. a2 killed with -9: b1's bridge moves to a3, which now sends on
    what b1 needs from a1 and a1 needs from g2."""
    opts = dict(OPTIONS, stats_interval_ms="1000")
    a1 = brokers("a1", options=dict(opts, group="g1"))
    a2 = brokers("a2", options=dict(opts, group="g1"), bridges=[{"name": "a2-to-a1",
                                                                 "port": a1.port}])
    a3 = brokers("a3", options=dict(opts, group="g1"), bridges=[
        {"name": "a3-to-a1", "port": a1.port}, {"name": "a3-to-a2", "port": a2.port}])
    b1 = brokers("b1", options=dict(opts, group="g2"),
                 extra=bridge("b1-to-g1", (a2.port, a3.port), BETWEEN_GROUPS))
    hubs = [a1, a2, a3, b1]
    closing.append(Watcher(b1.port, ["presence/home"], client_id="b1-viewer"))
    closing.append(Watcher(a1.port, ["presence/home"], client_id="a1-viewer"))
    increments_of(b1.port, ["shared"], 5)
    increments_of(a1.port, ["shared"], 7)
    exact_everywhere(hubs, {"shared": 12})
    for h in hubs:
        wait_for(lambda: h.retained("+/home") == "2", 20,
                 what=f"{h.name}: presence/home == 2 (is {h.retained('+/home')})")
    wait_for(lambda: group_stats(a1).get("speaking") is True, 15, what="a1 to speak for g1")
    for h in (a1, a3):
        wait_for(lambda: stats_of(h, h.name).get("repl", {}).get("floods_held", 0) > 0, 15,
                 what=f"{h.name} to hold floods every neighbour had")
    for at, of in ((a1, "a3"), (b1, "a3"), (a3, "b1")):
        seq = stats_of(at, of).get("seq", 0)
        wait_for(lambda: stats_of(at, of).get("seq", 0) > seq, 10,
                 what=f"{of}'s stats to reach {at.name}")
    increments_of(a1.port, ["shared"], 3)
    exact_everywhere(hubs, {"shared": 15})
    a2.kill()
    closing.append(Watcher(b1.port, ["presence/home"], client_id="b1-viewer2"))
    increments_of(b1.port, ["shared"], 11)
    increments_of(a1.port, ["shared"], 13)
    exact_everywhere([a1, a3, b1], {"shared": 39})
    for h in (a1, a3, b1):
        wait_for(lambda: h.retained("+/home") == "3", 20,
                 what=f"{h.name}: presence/home == 3 (is {h.retained('+/home')})")


@pytest.mark.parametrize("every", [0, 1000])
def test_sums_go_once_a_sums_interval(brokers, closing, every):
    """sums_interval_ms: g1's speaker sends its sums once a publish interval (0, the default)
    or once a second (1000), whatever the rate of writes; the other group counts every
    increment either way."""
    hubs, edges = two_groups(brokers, options={"sums_interval_ms": str(every)})
    a1, a2, b1, b2 = hubs
    p = publisher(a2.port)
    start = time.monotonic()
    infos = []
    while time.monotonic() - start < 4:  # `busy` rises 20 times a second for 4 s
        infos.append(p.publish("counters/busy/inc", "1", 1))
        time.sleep(0.05)
    for info in infos:
        info.wait_for_publish(10)
    close(p)
    exact_everywhere(hubs, {"busy": len(infos)})
    time.sleep(3)  # the echoes
    learned = group_stats(b2).get("learned", 0)
    print(f"sums_interval_ms {every}: b2 took {learned} counters from GSUMs for "
          f"{len(infos)} increments of busy over 4 s")
    if every:
        assert learned <= 15, f"b2 took {learned} counters' sums: more than one a second"
    else:
        assert learned >= 20, f"b2 took {learned} counters' sums: fewer than one an interval"


def hub_lists(hub, name):
    (resp,) = control(hub, [{"command": "listCounters"}])
    return any(c["name"] == name for c in resp["data"]["counters"])


def test_a_reset_and_a_delete_in_a_group_reach_every_group(brokers, closing):
    """A reset at a2, a hub that keeps quiet: its base reaches a1 in SYNCs, and a1's GSUMs carry
    what it observed of g2's sum to b1 and b2, which take it from their own group's part. Every
    node, edges included, shows 0 and then counts exactly what came after; a meter's reset goes
    the same way. A delete sent to e4 runs at its hub b2: every hub clears `shared`, and an
    increment after it brings it back counting from zero everywhere."""
    hubs, edges = two_groups(brokers)
    a1, a2, b1, b2 = hubs
    watchers = watch_shared(closing, (edges[0], b1))
    expected = {}
    increments(edges, 20, expected)
    edges[2].pub("counters/meter/report", json.dumps({"device": "m-1", "total": 100}))
    expected["meter"] = 100
    exact_everywhere(hubs + edges, expected)
    wait_for(lambda: group_stats(a2).get("speaking") is False, 15, what="a2 to keep quiet")
    resp = control(a2, [{"command": "resetCounter", "name": "shared"},
                        {"command": "resetCounter", "name": "meter"}])
    assert resp[0]["data"] == {"name": "shared", "value": 0, "deleted": False}, resp
    assert resp[1]["data"] == {"name": "meter", "value": 0, "deleted": False}, resp
    expected.update(shared=0, meter=0)
    exact_everywhere(hubs + edges, expected)
    increments(edges, 10, expected)
    edges[3].pub("counters/meter/report", json.dumps({"device": "m-1", "total": 130}))
    expected["meter"] = 30
    exact_everywhere(hubs + edges, expected)
    for w in watchers:  # down once, to 0, and never again
        seen = [int(p) for t, p in w.messages() if t == "counters/shared" and p]
        drop = seen.index(0)
        assert seen[:drop] == sorted(seen[:drop]) and seen[drop:] == sorted(seen[drop:]), seen

    (resp,) = control(edges[3], [{"command": "deleteCounter", "name": "shared"}])
    assert resp["data"]["deleted"] is True, resp
    for h in hubs:
        wait_for(lambda: h.total("shared") is None and not hub_lists(h, "shared"), 20,
                 what=f"{h.name}: shared deleted")
    assert hub_lists(a1, "meter")
    expected["shared"] = 0
    increments(edges[:1], 3, expected)  # after the delete, at g1's edge
    exact_everywhere(hubs + edges, expected)


def test_an_edge_whose_failover_leaves_its_group_is_refused_not_counted_twice(brokers, closing):
    """A misconfigured edge, e5, whose bridge lists a1 (g1) and then b1 (g2). Once a1 answered,
    e5's UPs name g1 ($tally/up/e5@g1); a1 killed, e5 reaches b1, which refuses them (logged,
    counted in its stats) instead of putting e5's count in g2's sum as well as in g1's: no node
    shows more than was made. Once a1 is back (without its state), e5 returns to it, and every
    node is exact."""
    hubs, edges = two_groups(brokers)
    a1, a2, b1, b2 = hubs
    e5 = brokers("e5", options=dict(OPTIONS, role="edge"), extra=edge_bridge("e5", (a1, b1)))
    expected = {}
    increments(edges + [e5], 10, expected)
    exact_everywhere(hubs + edges + [e5], expected)
    a1.kill()
    wait_for(lambda: bridged_to(e5)[-1] == b1.port, 30, what="e5 to fail over to b1")
    wait_for(lambda: "refused the UP of edge e5: its count is in the sum of group 'g1'"
             in b1.read_log(), 15, what="b1 to refuse e5's UPs")
    increments([e5] + edges[1:], 5, expected)  # e5's acknowledged by e5 alone for now
    time.sleep(3)  # what b1 would have taken goes to every group within a publish interval
    for n in (a2, b1, b2):
        for name in ("shared", "own-e5"):
            assert (n.total(name) or 0) <= expected[name], f"{n.name}: {name} counted twice"
    wait_for(lambda: group_stats(b1).get("refused", 0) > 0, 10, what="b1's stats to count them")
    a1.start()
    wait_for(lambda: bridged_to(e5)[-1] == a1.port, 30, what="e5 back on a1")
    exact_everywhere(hubs + edges + [e5], expected, timeout=60)


def test_a_bridge_that_carries_everything_between_groups_counts_nothing_twice(brokers, closing):
    """The contract's one-line bridge (`topic $tally/# both 1`) between groups: each group's
    SYNCs and DIGESTs cross it and are dropped (their topic names the group), so the other
    group's nodes are counted once, under the group's sum; so are its nodes' own viewer counts,
    counted under the group's viewer sums."""
    hubs, edges = two_groups(brokers, between=["topic $tally/# both 1"])
    a1, a2, b1, b2 = hubs
    viewers(edges, closing)
    expected = {}
    increments(edges, 30, expected)
    exact_everywhere(hubs + edges, expected)
    for n in hubs + edges:
        wait_for(lambda: n.retained("presence/home") == "8", 20,
                 what=f"{n.name}: presence/home == 8 (is {n.retained('presence/home')})")
    wait_for(lambda: group_stats(a1).get("viewers_refused", 0) > 0, 10,
             what="a1 to drop g2's nodes' own viewer counts")
    wait_for(lambda: ".g2" in state_nodes(a1, "shared") and "e3" not in state_nodes(a1, "shared"),
             10, what="a1 to hold g2 as one replica")
    wait_for(lambda: "not of our group 'g1'" in a1.read_log(), 10,
             what="a1 to log the other group's SYNCs it drops")
    wait_for(lambda: group_stats(a1).get("refused", 0) > 0 and group_stats(a1)["learned"] > 0,
             15, what="a1's stats to count what it dropped and learned")


def test_a_hub_killed_its_edge_moves_within_its_group_exact(brokers, closing):
    """kill -9 of a1 under load: e1 fails over to a2, which speaks for g1 in a1's stead, and
    b1's bridge to g1 moves to a2; a1 comes back without its state and e1 returns; every
    total exact at every live node, and e1's and b1's watchers never see `shared` go down."""
    hubs, edges = two_groups(brokers)
    a1, a2, b1, b2 = hubs
    watchers = watch_shared(closing, (edges[0], b1))
    expected = {}
    increments(edges, 20, expected)
    exact_everywhere(hubs + edges, expected)
    a1.kill()
    increments(edges[:1] + edges[2:], 20, expected, pause=0.05)  # e1 over to a2
    exact_everywhere([a2, b1, b2] + edges, expected)
    wait_for(lambda: group_stats(a2).get("speaking") is True, 15, what="a2 to speak for g1")
    a1.start()
    increments(edges, 20, expected, pause=0.05)
    exact_everywhere(hubs + edges, expected)
    never_down(watchers, "counters/shared", expected["shared"], wait=10)


def test_the_bridge_between_groups_cut_and_healed_under_load(brokers, closing):
    """The one bridge between the groups cut while both take increments: each group goes on
    exact within itself, and once healed every node is exact, each counted once."""
    proxies = []

    def proxy(port):
        proxies.append(TcpProxy(port))
        closing.append(proxies[-1])
        return proxies[-1].port

    hubs, edges = two_groups(brokers, proxy=proxy)
    a1, a2, b1, b2 = hubs
    expected = {}
    increments(edges, 10, expected)
    exact_everywhere(hubs + edges, expected)
    proxies[0].cut()
    before = dict(expected)
    increments(edges, 20, expected, pause=0.02)
    mine = {k: v - before.get(k, 0) for k, v in expected.items()}
    # within a group: its own edges' part; the other group's is where the cut left it
    for n, own in (([a1, a2], ("e1", "e2")), ([b1, b2], ("e3", "e4"))):
        for h in n:
            h.wait_total(f"own-{own[0]}", expected[f"own-{own[0]}"], 15)
            h.wait_total("shared", before["shared"] + mine["shared"] // 2, 15)
    proxies[0].heal()
    exact_everywhere(hubs + edges, expected)


def speaking_groups(brokers, options):
    """two_groups' hubs, once b1 speaks for g2 and a1 has heard b1's stream (a counter `warm`,
    1 everywhere): a1's share of the budget is then one of two."""
    hubs, _ = two_groups(brokers, options=options)
    b1 = hubs[2]
    wait_for(lambda: group_stats(b1).get("speaking") is True, 15, what="b1 to speak for g2")
    b1.pub("counters/warm/inc", "1")
    exact_everywhere(hubs, {"warm": 1})
    return hubs


def test_a_budget_of_sums_holds_the_other_groups_view_back_not_the_counts(brokers, closing):
    """sums_budget 10: a hub takes at most 10 counters' sums a second of the other groups, so
    g1's speaker, hearing one other speaker (b1), sends at most 5 a second of what rose, oldest
    first (the refresh, every counter again, at half that pace at most, out of the same share).
    40 counters written at a2 at once: a1 holds sums back for the budget, and every node ends
    exact."""
    hubs = speaking_groups(brokers, {"sums_budget": "10", "stats_interval_ms": "1000",
                                     "sync_interval_ms": "3000"})
    a1, a2, b1, b2 = hubs
    assert group_stats(a1)["budget"] == 10  # as set
    names = [f"n{i:02d}" for i in range(40)]
    increments_of(a2.port, names, 1)
    acked = time.monotonic()
    totals = retained_totals(b1)
    there = [n for n in names if totals.get(n) == "1"]
    expected = {n: 1 for n in names}
    exact_everywhere([a1, a2], expected)
    wait_for(lambda: group_stats(a1).get("budget_held", 0) > 0, 10,
             what="a1 to hold sums back for the budget")
    exact_everywhere(hubs, dict(expected, warm=1))
    print(f"sums_budget 10: b1 had {len(there)} of 40 counters as they were acknowledged, every "
          f"node all of them {time.monotonic() - acked:.1f} s after")


def test_sums_are_under_a_budget_by_default(brokers, closing):
    """No option given, sums_budget is 1000 (a bound, never "0: none", as every bound of the
    contract): 1,500 counters written at a2 at once rise faster than a1's share (500 a second,
    hearing b1), so a1 holds sums back, and every hub ends exact."""
    hubs = speaking_groups(brokers, {"stats_interval_ms": "1000"})
    a1, a2, b1, b2 = hubs
    at_b1 = Watcher(b1.port, ["counters/+"])
    closing.append(at_b1)
    names = [f"n{i:04d}" for i in range(1500)]
    increments_of(a2.port, names, 1)
    acked = time.monotonic()
    wait_for(lambda: all(at_b1.get(f"counters/{n}") == b"1" for n in names), 30, interval=0.05,
             what="b1 to show all 1,500 counters")
    took = time.monotonic() - acked
    # its stats, each second, say so
    wait_for(lambda: group_stats(a1).get("budget_held", 0) > 0, 5,
             what="a1 to hold sums back for the default budget")
    expected = dict({n: "1" for n in names}, warm="1")
    for h in hubs:
        wait_for(lambda: retained_totals(h) == expected, 30, interval=0.5,
                 what=f"{h.name} exact on all 1,501 counters")
    print(f"default sums_budget: the other group's b1 showed all 1,500 counters {took:.2f} s "
          f"after they were acknowledged")


def retained_totals(node):
    """Every retained total at node, {name: payload}, read by one subscription."""
    r = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(node.port), "-t",
                        "counters/+", "-v", "--retained-only", "-W", "1"],
                       capture_output=True, text=True)
    totals = {}
    for line in r.stdout.splitlines():
        topic, _, payload = line.partition(" ")
        totals[topic.split("/", 1)[1]] = payload
    return totals


def test_sums_are_echoed_only_where_a_gap_shows_them_lost(brokers, closing):
    """The last sums again (plugin/group.c) go only where sums are lost on the way: a gap in
    another hub's stream of sums within a refresh interval (10 sync intervals). Over loopback
    nothing is lost: a1 and b1, which speak for g1 and g2, see no gap and echo nothing. The
    bridge between the groups cut and healed, each has missed the sums the other sent
    meanwhile and sees the gap; a counter that then rises once at a1 is sent again a heartbeat
    later (group.echoed), and every node counts it once."""
    proxies = []

    def proxy(port):
        proxies.append(TcpProxy(port))
        closing.append(proxies[-1])
        return proxies[-1].port

    hubs, edges = two_groups(brokers, proxy=proxy,
                             options={"stats_interval_ms": "1000", "sync_interval_ms": "2000"})
    a1, a2, b1, b2 = hubs
    expected = {}
    increments(edges, 10, expected)
    exact_everywhere(hubs + edges, expected)
    for h in (a1, b1):
        wait_for(lambda: group_stats(h).get("speaking") is True, 15,
                 what=f"{h.name} to speak for its group")
    time.sleep(2)  # the last sums went still a heartbeat ago
    for h in (a1, b1):
        g = group_stats(h)
        assert g["holes"] == 0 and g["echoed"] == 0, f"{h.name} over loopback: {g}"
    proxies[0].cut()
    time.sleep(3)  # each speaker sends at least a keepalive a heartbeat: lost
    proxies[0].heal()
    for h in (a1, b1):
        wait_for(lambda: group_stats(h).get("holes", 0) > 0, 15,
                 what=f"{h.name} to see a gap in the other group's sums")
    echoed = group_stats(a1)["echoed"]
    increments_of(a1.port, ["still"], 4)
    expected["still"] = 4
    wait_for(lambda: group_stats(a1)["echoed"] > echoed, 10,
             what="a1 to send still's sums again once they went still")
    exact_everywhere(hubs + edges, expected)


def test_a_hub_whose_group_or_region_changed_under_its_state_does_not_start(brokers, workdir):
    """A hub's state_dir records the group and region it was made in: started again under
    another group's name (or in a region), it would have the other groups count its group's
    sum twice, under the old replica and the new, so it does not start, and says why; under
    its own names it starts and keeps its counts."""
    import os
    a1 = brokers("a1", options=dict(OPTIONS, group="g1",
                                    state_dir=os.path.join(workdir, "state-a1")))
    a1.pub("counters/shared/inc", "5")
    a1.wait_total("shared", 5)
    for changed in ({"group": "g9"}, {"region": "r1"}):
        a1.stop()
        a1.options.update(changed)
        a1.start(wait=False)
        assert a1.proc.wait(15) != 0, f"a1 started with {changed}"
        wait_for(lambda: "holds counts made in group 'g1', region ''" in a1.read_log(), 5,
                 what="a1 to say why it does not start")
        a1.options.update(group="g1", region=None)
    a1.start()
    a1.wait_total("shared", 5)


def test_an_edge_restarted_remembers_its_group(brokers, closing, workdir):
    """e5's bridge lists a1 (g1) and then b1 (g2), and it keeps its state on disk. It learns
    g1 from a1's DOWNs and writes it there: restarted (kill -9) while a1 is down, it reaches
    b1 and still names g1 in its UPs, which b1 refuses, instead of putting e5's count in g2's
    sum as well (as an edge that forgot its group would). Once a1 is back, every node is
    exact."""
    import os
    hubs, edges = two_groups(brokers)
    a1, a2, b1, b2 = hubs
    e5 = brokers("e5", options=dict(OPTIONS, role="edge",
                                    state_dir=os.path.join(workdir, "state-e5")),
                 extra=edge_bridge("e5", (a1, b1)))
    expected = {}
    increments(edges + [e5], 10, expected)
    exact_everywhere(hubs + edges + [e5], expected)
    e5.kill()
    a1.kill()
    e5.start()
    wait_for(lambda: bridged_to(e5)[-1] == b1.port, 30, what="e5 to reach b1")
    wait_for(lambda: "refused the UP of edge e5: its count is in the sum of group 'g1'"
             in b1.read_log(), 15, what="b1 to refuse the restarted e5's UPs")
    increments([e5], 5, expected)
    time.sleep(3)  # what b1 would have taken goes to every group within a publish interval
    for n in (a2, b1, b2):
        for name in ("shared", "own-e5"):
            assert (n.total(name) or 0) <= expected[name], f"{n.name}: {name} counted twice"
    a1.start()
    wait_for(lambda: bridged_to(e5)[-1] == a1.port, 30, what="e5 back on a1")
    exact_everywhere(hubs + edges + [e5], expected, timeout=60)


def gsum(origin, session, seq, group, counters):
    """A GSUM (version 2, a hub in no region) of `counters`, {name: P}, by hand."""
    body = b"".join(str8(n) + varint(p) + varint(0) * 3 + b"\0" for n, p in counters.items())
    return (b"TL\x02\x07" + str8(origin) + struct.pack("<Q", session) + varint(seq) +
            str8(group) + varint(len(counters)) + body)


def ask(asker, group, target, session, seqs):
    """A GWANT: `asker` of `group` asks its neighbours for `target`'s messages `seqs`."""
    return (b"TL\x03\x09" + str8(asker) + struct.pack("<Q", 1) + varint(0) + str8(group) +
            str8("") + str8(target) + struct.pack("<Q", session) + varint(len(seqs)) +
            b"".join(varint(s) for s in seqs))


def read_ask(payload):
    """(asker, target, session, seqs, seq) of a GWANT, or None for another message: an ask
    (seq 0) names seqs, a call for the target's refresh (in the asker's stream) none."""
    if payload[:4] != b"TL\x03\x09":
        return None
    r = Reader(payload)
    r.p = 4
    asker, _, seq, _, _ = r.str8(), r.u64(), r.varint(), r.str8(), r.str8()
    target, session = r.str8(), r.u64()
    return asker, target, session, [r.varint() for _ in range(r.varint())], seq


class RawPeer:
    """A neighbour of a hub speaking the wire by hand: a client whose id the hub takes for a
    bridge's (OPTIONS' bridge_clientids), every payload on $tally/v1/gsum/# kept as bytes."""

    def __init__(self, port, client_id):
        import paho.mqtt.client as mqtt
        self.got = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(client_id=client_id, clean_session=True)
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        self.c.subscribe("$tally/v1/gsum/#", 1)
        assert subscribed.wait(10), "the neighbour did not subscribe"

    def _on_message(self, c, u, m):
        with self.lock:
            self.got.append((m.topic, bytes(m.payload)))

    def messages(self):
        with self.lock:
            return list(self.got)

    def send(self, payload):
        info = self.c.publish(f"$tally/v1/gsum/{self.c._client_id.decode()}", payload, 1)
        info.wait_for_publish(10)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_sums_lost_on_the_way_are_asked_of_a_neighbour_and_sent_again(brokers, closing):
    """Sums lost on the way (plugin/group.c): a hub that sees a gap in a stream of sums it
    takes asks its neighbours for the messages it lacks, a quarter heartbeat later; a neighbour
    that holds one sends it again, the same bytes, and the hub takes it and floods it on, long
    before the refresh (a hundred sync intervals). Here a raw neighbour of b1's speaks for a
    third group, g3, skips seq 2, and answers b1's ask; then asks b1 for a GSUM of b1's own,
    which b1 sends again byte for byte. Asks go to neighbours only: a1, which holds that
    message too, never hears the ask. A stream first heard past its 64th message has a past
    no neighbour keeps: b1 calls for that speaker's refresh instead, once."""
    hubs, edges = two_groups(brokers, options={"sync_interval_ms": "2000",
                                               "stats_interval_ms": "500"})
    a1, a2, b1, b2 = hubs
    for h in (a1, b1):
        wait_for(lambda: group_stats(h).get("speaking") is True, 15,
                 what=f"{h.name} to speak for its group")
    peer = RawPeer(b1.port, "x1-to-b1")
    closing.append(peer)
    session = 7
    peer.send(gsum("x1", session, 1, "g3", {"lostk": 2}))
    peer.send(gsum("x1", session, 3, "g3", {"lostk": 3}))
    b1.wait_total("lostk", 3)
    lost = gsum("x1", session, 2, "g3", {"lostk": 3, "other": 5})

    def asked():
        return [a for _, m in peer.messages() if (a := read_ask(m)) and a[1] == "x1"]
    wait_for(lambda: asked(), 5, what="b1 to ask for x1's seq 2")
    asker, _, s, seqs, seq = asked()[0]
    assert (asker, s, seqs, seq) == ("b1", session, [2], 0), asked()
    peer.send(lost)
    for n in hubs:  # taken, and flooded on to every hub
        n.wait_total("other", 5, timeout=10)
    assert b1.total("lostk") == 3
    time.sleep(1.5)  # a heartbeat: had, so asked for no more
    assert len(asked()) == 1, asked()
    time.sleep(1)  # every hub had it a heartbeat ago: the stats of the last asks are out
    wait_for(lambda: group_stats(b1).get("wants", 0) >= 1, 15, what="b1's stats to count its ask")
    # b1's own stream: its last message (a hub keeps its last 64), asked for again, comes
    # again, the same bytes. Not every GSUM on b1's topic is of b1's stream: b1 sends on it
    # what it sends again of others' (x1's seq 2, if a2 asked b1 for it)

    def b1s():
        return [m for t, m in peer.messages() if t == "$tally/v1/gsum/b1" and m[3] == 7 and
                m[5:5 + m[4]] == b"b1"]
    wait_for(b1s, 5, what="a GSUM of b1's")
    mine = b1s()[-1]
    r = Reader(mine)
    r.p = 4
    _, b1_session, seq = r.str8(), r.u64(), r.varint()
    before = sum(1 for _, m in peer.messages() if m == mine)
    a1_resent = group_stats(a1)["resent"]  # a2 may have asked a1 for x1's seq 2
    peer.send(ask("x1", "g3", "b1", b1_session, [seq]))
    wait_for(lambda: sum(1 for _, m in peer.messages() if m == mine) > before, 5,
             what=f"b1 to send its seq {seq} again")
    wait_for(lambda: group_stats(b1).get("resent", 0) >= 1, 15, what="b1's stats to count it")
    # A stream first heard past its 64th message: what came before, no neighbour holds, so b1
    # calls for the speaker's refresh, once, in its own stream (a seq), naming no seq
    peer.send(gsum("x2", 9, 100, "g3", {"late": 4}))
    b1.wait_total("late", 4)

    def called():
        return [a for _, m in peer.messages() if (a := read_ask(m)) and a[:2] == ("b1", "x2")]
    wait_for(lambda: called(), 5, what="b1 to call for x2's refresh")
    time.sleep(1.5)
    (call,) = called()
    assert call[:4] == ("b1", "x2", 9, []) and call[4] > 0, call
    wait_for(lambda: group_stats(b1).get("calls", 0) == 1, 15, what="b1's stats to count it")
    # a1 holds that message of b1's too: had the ask been flooded on, it would have answered
    time.sleep(2)
    assert group_stats(a1)["resent"] == a1_resent, group_stats(a1)
