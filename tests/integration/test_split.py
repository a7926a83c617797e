"""Split hubs (plugin_opt_hub split, group.c "Split hubs"), real brokers on loopback: region r1
holds g1 (split hubs a1, a2) and g2 (c1); region r2 holds g3 (b1) and g4 (d1), as in
test_regions. a1 and a2 split g1's two levels: a1, first in order, holds the other groups of r1
(.g2), a2 the other regions (..r2); each holds g1's nodes' slots and one rest slot a level, and
shows every total exact. A reset at either takes what it saw, through each level's holder; a1
killed with -9, a2 holds both levels and its watchers see no total go down; a1 back, the levels
split again."""
from conftest import wait_for
from test_cluster import closing  # noqa: F401 (a fixture)
from test_groups import group_stats, state_nodes, watch_shared
from test_light import delete_and_count_again, reset_at
from test_regions import two_regions
from test_reset import control
from test_tier_faults import never_down
from test_tiers import exact_everywhere, increments

REST = {"....." + "1", "....." + "2"}  # the rest of the tree at levels 1 and 2 (REST_ID_LEN)
G1 = {"e1", "e2"}  # g1's nodes that write `shared`: its edges


def split_regions(brokers):
    """test_regions' two_regions, with a1 and a2 split hubs of g1."""
    return two_regions(brokers, g1={"hub": "split"})


def wait_holds(hub, levels, held):
    """hub holds levels (its stats' group.holds) and `shared` as `held`."""
    wait_for(lambda: group_stats(hub).get("holds") == levels, 20,
             what=f"{hub.name} to hold levels {levels}, holds {group_stats(hub).get('holds')}")
    wait_for(lambda: state_nodes(hub, "shared") == held, 20,
             what=f"{hub.name}: shared held as {sorted(held)}, "
                  f"is {sorted(state_nodes(hub, 'shared'))}")


def test_split_hubs_hold_a_level_each_and_count_everything(brokers, closing):
    hubs, edges = split_regions(brokers)
    a1, a2, c1, b1, d1 = hubs
    expected = {}
    increments(edges, 30, expected)
    exact_everywhere(hubs + edges, expected)
    wait_holds(a1, [1], G1 | REST | {".g2"})
    wait_holds(a2, [2], G1 | REST | {"..r2"})
    assert group_stats(a1).get("split") is True and group_stats(c1).get("split") is False
    # c1, of a group of hubs that are not split, as ever: its nodes, g1 and the other region
    wait_for(lambda: state_nodes(c1, "shared") == {"e3", ".g1", "..r2"}, 10,
             what=f"c1: shared held as {sorted(state_nodes(c1, 'shared'))}")
    # a reset at a2 takes what a2 saw: g1's nodes, and the rest slots, whose parts each
    # level's holder takes (a1 the other group's, a2 the other region's)
    reset_at(a2, "shared", hubs + edges, expected)
    increments(edges, 10, expected)
    exact_everywhere(hubs + edges, expected)
    # one at an edge of a1, one in the other region, a delete at a1
    resp = control(edges[0], [{"command": "resetCounter", "name": "own-e4"}])
    assert resp[0]["data"]["value"] == 0, resp
    expected["own-e4"] = 0
    reset_at(d1, "shared", hubs + edges, expected)
    increments(edges, 10, expected)
    exact_everywhere(hubs + edges, expected)
    delete_and_count_again(a1, "own-e3", (a2, d1), edges[2], hubs + edges, expected)


def test_a_split_hub_killed_the_other_holds_every_level(brokers, closing):
    """kill -9 of a1 under load: a2 comes to hold both levels (it calls for the other group's
    sums), e1 fails over to a2, c1's bridge moves to a2; every live node exact, and the watchers
    at a2 and e2 never see `shared` go down; a1 back (without its state), the levels split
    again, exact."""
    hubs, edges = split_regions(brokers)
    a1, a2, c1, b1, d1 = hubs
    watchers = watch_shared(closing, (a2, edges[1]))
    expected = {}
    increments(edges, 20, expected)
    exact_everywhere(hubs + edges, expected)
    wait_holds(a2, [2], G1 | REST | {"..r2"})
    a1.kill()
    increments(edges, 20, expected, pause=0.05)
    exact_everywhere([a2, c1, b1, d1] + edges, expected)
    wait_holds(a2, [1, 2], G1 | REST | {".g2", "..r2"})
    increments(edges, 10, expected)
    exact_everywhere([a2, c1, b1, d1] + edges, expected)
    a1.start()
    increments(edges, 20, expected, pause=0.05)
    exact_everywhere(hubs + edges, expected)
    wait_for(lambda: group_stats(a2).get("holds") == [2], 20, what="a2 to hold level 2 alone")
    wait_holds(a1, [1], G1 | REST | {".g2"})
    increments(edges, 10, expected)
    exact_everywhere(hubs + edges, expected)
    never_down(watchers, "counters/shared", expected["shared"], wait=10)
