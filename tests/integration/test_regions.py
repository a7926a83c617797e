"""Regions: groups of groups of hubs (plugin_opt_region, plugin/group.c), real brokers on
loopback. Region r1 holds g1 (a1, a2) and g2 (c1); region r2 holds g3 (b1) and g4 (d1). Inside a
region, bridges between groups carry GSUMs and RSUMs; between regions, one bridge carries RSUMs
(each region's sum), viewers and stats only. A hub holds its own group's slots, one slot per
other group of its region and one per other region, never a slot of another region's group; every
node ends exact, through a hub killed with -9, a reset and a delete."""
import json

from conftest import wait_for
from test_cluster import Watcher, closing  # noqa: F401 (closing: a fixture)
from test_groups import OPTIONS, bridge, state_nodes
from test_reset import control
from test_tiers import edge_bridge, exact_everywhere, increments, viewers

SUMS = ["topic $tally/v1/gsum/# both 1", "topic $tally/v1/rsum/# both 1",
        "topic $tally/v1/gviews/# both 1", "topic $tally/v1/rviews/# both 1",
        "topic $tally/stats/# both 1"]
BETWEEN_REGIONS = [t for t in SUMS if "gsum" not in t and "gviews" not in t]


def two_regions(brokers, between=BETWEEN_REGIONS, g1=None):
    """Hubs a1, a2 (g1, with options g1 too), c1 (g2) in r1; b1 (g3), d1 (g4) in r2; c1 bridged
    to g1 (a1, then a2), d1 to b1, b1 to c1 (the one bridge between the regions). Edges e1 (a1,
    a2), e2 (a2, a1), e3 (c1), e4 (b1), e5 (d1)."""
    def hub(name, group, region, **kw):
        more = g1 if g1 and group == "g1" else {}
        return brokers(name, options=dict(OPTIONS, group=group, region=region, **more), **kw)
    a1 = hub("a1", "g1", "r1")
    a2 = hub("a2", "g1", "r1", bridges=[{"name": "a2-to-a1", "port": a1.port}])
    c1 = hub("c1", "g2", "r1", extra=bridge("c1-to-g1", (a1.port, a2.port), SUMS))
    b1 = hub("b1", "g3", "r2", extra=bridge("b1-to-r1", (c1.port,), between))
    d1 = hub("d1", "g4", "r2", extra=bridge("d1-to-g3", (b1.port,), SUMS))
    edges = []
    for i, hubs in enumerate([(a1, a2), (a2, a1), (c1,), (b1,), (d1,)], start=1):
        name = f"e{i}"
        edges.append(brokers(name, options=dict(OPTIONS, role="edge"),
                             extra=edge_bridge(name, hubs)))
    return [a1, a2, c1, b1, d1], edges


def stats(hub, key):
    return json.loads(hub.retained(f"$tally/stats/{hub.name}") or "{}").get(key, {})


def wait_held(held_by):
    """Each (hub, nodes): the hub holds `shared` as exactly those slots (its state's nodes)."""
    for h, held in held_by:
        wait_for(lambda: state_nodes(h, "shared") == held, 10,
                 what=f"{h.name}: shared held as {sorted(held)}, "
                      f"is {sorted(state_nodes(h, 'shared'))}")


def wait_counting(counts):
    """Each (hub, n): the hub counts n origins' viewers (its stats' nodes.counting)."""
    for h, n in counts:
        wait_for(lambda: stats(h, "nodes").get("counting") == n, 15,
                 what=f"{h.name} to count {n} origins' viewers, "
                      f"counts {stats(h, 'nodes').get('counting')}")


def wait_viewers(nodes, n):
    """Every node shows n viewers of home."""
    for node in nodes:
        wait_for(lambda: node.retained("presence/home") == str(n), 20,
                 what=f"{node.name}: presence/home == {n} (is {node.retained('presence/home')})")


def test_two_regions_exact_with_a_slot_per_group_and_per_region(brokers, closing):
    hubs, edges = two_regions(brokers)
    a1, a2, c1, b1, d1 = hubs
    viewers(edges, closing)
    expected = {}
    increments(edges, 30, expected)
    exact_everywhere(hubs + edges, expected)
    # (the hubs' own clients wrote nothing: their edges' slots only)
    wait_held(((a1, {"e1", "e2", ".g2", "..r2"}), (a2, {"e1", "e2", ".g2", "..r2"}),
               (c1, {"e3", ".g1", "..r2"}), (b1, {"e4", ".g4", "..r1"}),
               (d1, {"e5", ".g3", "..r1"})))
    wait_viewers(hubs + edges, 10)
    # Viewers likewise: each hub counts its own group's edges, one sum per other group of its
    # region and one per other region (plugin/scope.c): a1 and a2 count e1, e2, .g2 and ..r2.
    wait_counting(((a1, 4), (a2, 4), (c1, 3), (b1, 3), (d1, 3)))
    # One hub speaks for each region: the first by node id; the others keep quiet.
    for h, speaks in ((a1, True), (a2, False), (c1, False), (b1, True), (d1, False)):
        wait_for(lambda: stats(h, "region").get("speaking") is speaks, 15,
                 what=f"{h.name} {'to speak' if speaks else 'to keep quiet'} for its region")
    # b1 takes r1's RSUMs, and no group's of r1 (its bridge carries none).
    wait_for(lambda: stats(b1, "region").get("learned", 0) > 0, 10, what="b1 to learn r1's sums")
    # No sums_budget given: 1,000 records a second at each of the two levels.
    assert stats(b1, "group")["budget"] == stats(b1, "region")["budget"] == 1000
    (resp,) = control(a1, [{"command": "removeNode", "node": "..r2"}])
    assert "group" in resp.get("error", ""), resp


def test_a_hub_killed_a_reset_and_a_delete_across_regions(brokers, closing):
    """kill -9 of a1, which speaks for g1 and r1: e1 fails over to a2, c1's bridge to g1 moves to
    a2, and a2 takes over both; every live node exact, the watcher at d1 never sees `shared` go
    down. Then a reset at d1 (r2) observes r1's sum: every node shows 0 and counts exactly what
    came after; a delete at c1 (r1) clears `shared` everywhere, and an increment brings it back
    from zero."""
    hubs, edges = two_regions(brokers)
    kill_reset_delete(hubs, edges, closing, "region", far_edges=edges[3:])


def kill_reset_delete(hubs, edges, closing, top, far_edges):
    """Hubs a1, a2, c1, b1, d1, a1 speaking for every unit it is in and d1 far from it: a1
    killed under load, a2 speaking for its unit `top` in its place (a stats key), d1's watcher
    seeing no step back; a reset at d1, a delete at c1, increments at far_edges (d1's side)
    after it, and a1 back: exact everywhere at each step."""
    a1, a2, c1, b1, d1 = hubs
    watcher = Watcher(d1.port, ["counters/shared"], keep=True)
    closing.append(watcher)
    expected = {}
    increments(edges, 15, expected)
    exact_everywhere(hubs + edges, expected)
    a1.kill()
    increments(edges, 15, expected, pause=0.05)
    live = [a2, c1, b1, d1]
    exact_everywhere(live + edges, expected)
    wait_for(lambda: stats(a2, top).get("speaking") is True, 15, what=f"a2 to speak for its {top}")
    seen = [int(p) for t, p in watcher.messages() if t == "counters/shared"]
    assert seen == sorted(seen), f"a total went down at d1: {seen}"

    resp = control(d1, [{"command": "resetCounter", "name": "shared"}])
    assert resp[0]["data"] == {"name": "shared", "value": 0, "deleted": False}, resp
    expected["shared"] = 0
    exact_everywhere(live + edges, expected)
    increments(edges, 5, expected)
    exact_everywhere(live + edges, expected)

    (resp,) = control(c1, [{"command": "deleteCounter", "name": "shared"}])
    assert resp["data"]["deleted"] is True, resp
    for h in live:
        wait_for(lambda: h.total("shared") is None, 20, what=f"{h.name}: shared deleted")
    expected["shared"] = 0
    increments(far_edges, 3, expected)  # after the delete
    a1.start()
    exact_everywhere(hubs + edges, expected, timeout=60)


def test_a_bridge_that_carries_everything_between_regions_counts_nothing_twice(brokers, closing):
    """The contract's one-line bridge (`topic $tally/# both 1`) between the regions: each
    region's GSUMs cross it and are refused (they name their region), so a group of the other
    region is counted once, in its region's sum."""
    hubs, edges = two_regions(brokers, between=["topic $tally/# both 1"])
    a1, a2, c1, b1, d1 = hubs
    expected = {}
    increments(edges, 20, expected)
    exact_everywhere(hubs + edges, expected)
    wait_held(((c1, {"e3", ".g1", "..r2"}), (b1, {"e4", ".g4", "..r1"})))
    wait_for(lambda: stats(b1, "group").get("refused", 0) > 0, 15,
             what="b1's stats to count the other region's GSUMs it refused")
    exact_everywhere(hubs + edges, expected, timeout=5)


# ---- A region above regions: plugin_opt_region "r1/z1" (a zone, level 3) ----

ZONE_SUMS = SUMS + ["topic $tally/v1/rsum3/# both 1", "topic $tally/v1/rviews3/# both 1"]
BETWEEN_REGIONS_OF_A_ZONE = [t for t in ZONE_SUMS if "gsum" not in t and "gviews" not in t]
BETWEEN_ZONES = ["topic $tally/v1/rsum3/# both 1", "topic $tally/v1/rviews3/# both 1",
                 "topic $tally/stats/# both 1"]


def two_zones(brokers, between=BETWEEN_ZONES):
    """Hubs a1, a2 (g1) and c1 (g2) in region r1, b1 (g3) in region r2, both regions in zone
    z1 (plugin_opt_region "r1/z1", "r2/z1"); d1 (g4) in region r3 in zone z2 ("r3/z2"). c1
    bridged to g1 (a1, then a2) with every kind of sums, b1 to c1 (between the regions of z1:
    no GSUM), d1 to b1 (between the zones: the zones' sums alone, or `between`). Edges e1
    (a1, a2), e2 (c1), e3 (b1), e4 (d1)."""
    def hub(name, group, region, **kw):
        return brokers(name, options=dict(OPTIONS, group=group, region=region), **kw)
    a1 = hub("a1", "g1", "r1/z1")
    a2 = hub("a2", "g1", "r1/z1", bridges=[{"name": "a2-to-a1", "port": a1.port}])
    c1 = hub("c1", "g2", "r1/z1", extra=bridge("c1-to-g1", (a1.port, a2.port), ZONE_SUMS))
    b1 = hub("b1", "g3", "r2/z1",
             extra=bridge("b1-to-r1", (c1.port,), BETWEEN_REGIONS_OF_A_ZONE))
    d1 = hub("d1", "g4", "r3/z2", extra=bridge("d1-to-z1", (b1.port,), between))
    edges = []
    for i, hubs in enumerate([(a1, a2), (c1,), (b1,), (d1,)], start=1):
        name = f"e{i}"
        edges.append(brokers(name, options=dict(OPTIONS, role="edge"),
                             extra=edge_bridge(name, hubs)))
    return [a1, a2, c1, b1, d1], edges


def test_two_zones_exact_with_a_slot_per_group_region_and_zone(brokers, closing):
    """A hub holds its group's slots, one per other group of its region, one per other region
    of its zone and one per other zone: d1, alone in z2, holds e4's slot and z1's sum."""
    hubs, edges = two_zones(brokers)
    a1, a2, c1, b1, d1 = hubs
    viewers(edges, closing)
    expected = {}
    increments(edges, 30, expected)
    exact_everywhere(hubs + edges, expected)
    wait_held(((a1, {"e1", ".g2", "..r2", "...z2"}), (a2, {"e1", ".g2", "..r2", "...z2"}),
               (c1, {"e2", ".g1", "..r2", "...z2"}), (b1, {"e3", "..r1", "...z2"}),
               (d1, {"e4", "...z1"})))
    wait_viewers(hubs + edges, 8)
    # Viewers likewise, one sum per other unit at each level (scope.c).
    wait_counting(((a1, 4), (a2, 4), (c1, 4), (b1, 3), (d1, 2)))
    # One hub speaks for each zone: the first of it by node id.
    for h, speaks in ((a1, True), (a2, False), (c1, False), (b1, False), (d1, True)):
        wait_for(lambda: stats(h, "region3").get("speaking") is speaks, 15,
                 what=f"{h.name} {'to speak' if speaks else 'to keep quiet'} for its zone")
    for h, zone, region in ((b1, "z1", "r2"), (d1, "z2", "r3")):
        assert stats(h, "region3").get("name") == zone and stats(h, "region").get("name") == region
    wait_for(lambda: stats(d1, "region3").get("learned", 0) > 0, 10, what="d1 to learn z1's sums")
    assert stats(d1, "region").get("learned", 0) == 0, "d1 took a region's sums from z1"
    # No sums_budget given: two levels' 2,000 records a second shared by the three.
    assert [stats(d1, k)["budget"] for k in ("group", "region", "region3")] == [667] * 3


def test_a_hub_killed_a_reset_and_a_delete_across_zones(brokers, closing):
    """kill -9 of a1, which speaks for g1, r1 and z1: e1 fails over to a2, which takes over all
    three; every live node exact, the watcher at d1 (the other zone) never sees `shared` go
    down. A reset at d1 observes z1's sum; a delete at c1 clears `shared` in both zones."""
    hubs, edges = two_zones(brokers)
    kill_reset_delete(hubs, edges, closing, "region3", far_edges=edges[3:])


def test_a_bridge_that_carries_everything_between_zones_counts_nothing_twice(brokers, closing):
    """The contract's one-line bridge between the zones: the groups' and regions' sums of each
    zone cross it and are refused (they name their region, and the zone above it)."""
    hubs, edges = two_zones(brokers, between=["topic $tally/# both 1"])
    a1, a2, c1, b1, d1 = hubs
    viewers(edges, closing)
    expected = {}
    increments(edges, 20, expected)
    exact_everywhere(hubs + edges, expected)
    wait_held(((b1, {"e3", "..r1", "...z2"}), (d1, {"e4", "...z1"})))
    wait_for(lambda: stats(d1, "region").get("refused", 0) > 0, 15,
             what="d1's stats to count the other zone's region sums it refused")
    wait_viewers(hubs + edges, 8)
    exact_everywhere(hubs + edges, expected, timeout=5)


def test_a_hub_whose_zone_changed_under_its_state_does_not_start(brokers, workdir):
    """The state_dir records the whole region path: a hub made in r1/z1 and started again in
    r1/z2 would have z1's sum and z2's count its group twice, so it does not start; under its
    own path it starts and keeps its counts."""
    import os
    a1 = brokers("a1", options=dict(OPTIONS, group="g1", region="r1/z1",
                                    state_dir=os.path.join(workdir, "state-a1")))
    a1.pub("counters/shared/inc", "5")
    a1.wait_total("shared", 5)
    for changed in ("r1/z2", "r1"):
        a1.stop()
        a1.options.update(region=changed)
        a1.start(wait=False)
        assert a1.proc.wait(15) != 0, f"a1 started in {changed}"
        wait_for(lambda: "holds counts made in group 'g1', region 'r1/z1'" in a1.read_log(), 5,
                 what="a1 to say why it does not start")
    a1.options.update(region="r1/z1")
    a1.start()
    a1.wait_total("shared", 5)


def test_four_levels_two_hubs_in_two_top_regions(brokers, closing):
    """plugin_opt_region "r1/z1/w1" and "r2/z2/w2": a1 and b1 are in no common unit below the
    top, so each holds the other's level-4 sum ("....w2") and refuses every sum below it; the
    bridge between them carries rsum4/# and rviews4/# (and stats) only."""
    between = ["topic $tally/v1/rsum4/# both 1", "topic $tally/v1/rviews4/# both 1",
               "topic $tally/stats/# both 1"]
    a1 = brokers("a1", options=dict(OPTIONS, group="g1", region="r1/z1/w1"))
    b1 = brokers("b1", options=dict(OPTIONS, group="g2", region="r2/z2/w2"),
                 extra=bridge("b1-to-w1", (a1.port,), between))
    edges = [brokers(f"e{i}", options=dict(OPTIONS, role="edge"),
                     extra=edge_bridge(f"e{i}", (h,))) for i, h in ((1, a1), (2, b1))]
    viewers(edges, closing)
    expected = {}
    increments(edges, 20, expected)
    exact_everywhere([a1, b1] + edges, expected)
    wait_held(((a1, {"e1", "....w2"}), (b1, {"e2", "....w1"})))
    wait_viewers([a1, b1] + edges, 4)
    for h, unit in ((a1, "w1"), (b1, "w2")):
        wait_for(lambda: stats(h, "region4").get("speaking") is True, 15,
                 what=f"{h.name} to speak for {unit}")
        assert stats(h, "region4").get("name") == unit
    wait_for(lambda: stats(a1, "region4").get("learned", 0) > 0, 10, what="a1 to learn w2's sums")
    assert [stats(a1, k)["budget"] for k in ("group", "region", "region3", "region4")] == [500] * 4


def test_hubs_that_name_other_levels_say_so(brokers):
    """a1 names a level above its region (r1/z1) and b1 none (r2): each refuses the other's
    sums, which name a unit above or none, so their counts never meet. Both say why in their
    logs and stats (`mismatched`), where a legitimate refusal (another region's group) says
    nothing."""
    a1 = brokers("a1", options=dict(OPTIONS, group="g1", region="r1/z1"))
    b1 = brokers("b1", options=dict(OPTIONS, group="g2", region="r2"),
                 extra=bridge("b1-to-a1", (a1.port,), ["topic $tally/# both 1"]))
    a1.pub("counters/x/inc", "1")
    b1.pub("counters/x/inc", "1")
    for h in (a1, b1):
        wait_for(lambda: "are not as many as ours" in h.read_log(), 15,
                 what=f"{h.name} to log the levels it does not share")
        wait_for(lambda: stats(h, "region").get("mismatched", 0) > 0, 15,
                 what=f"{h.name}'s stats to count the mismatched sums")
        assert h.total("x") == 1  # never counted across
