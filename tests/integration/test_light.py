"""Light hubs (plugin_opt_hub light, group.c "Light hubs"), real brokers on loopback: group g1 of
full hubs a1, a2 and light hub a3, group g2 of b1, b2 (no light hubs), an edge on each hub. a3
holds g1's nodes' slots and one rest slot a level, never the other group's, never speaks for
g1, and shows every total exact; a reset sent to it, or to its edge, runs at g1's speaker; a1
killed, a2 speaks and keeps a3's rest slot, and a3's clients see no total step back."""
from conftest import wait_for
from test_cluster import closing  # noqa: F401 (a fixture)
from test_cluster import close, publisher
from test_groups import BETWEEN_GROUPS, OPTIONS, bridge, group_stats, state_nodes, watch_shared
from test_reset import control
from test_tier_faults import never_down
from test_tiers import edge_bridge, exact_everywhere, increments

REST = "....." + "1"  # the rest of the tree at level 1 (REST_ID_LEN)


def light_group(brokers):
    """g1: a1, a2 (full), a3 (light), a mesh of $tally/ bridges; g2: b1, b2, bridged to g1 (a1,
    or a2 while a1 is down) with GSUMs; edges e1 (a3, then a1), e2 (a1, a2), e3 (b1, b2),
    e4 (b2, b1)."""
    full = dict(OPTIONS, group="g1", hub="full")
    a1 = brokers("a1", options=full)
    a2 = brokers("a2", options=full, bridges=[{"name": "a2-to-a1", "port": a1.port}])
    a3 = brokers("a3", options=dict(full, hub="light"),
                 bridges=[{"name": "a3-to-a1", "port": a1.port},
                          {"name": "a3-to-a2", "port": a2.port}])
    b1 = brokers("b1", options=dict(OPTIONS, group="g2"),
                 extra=bridge("b1-to-g1", (a1.port, a2.port), BETWEEN_GROUPS))
    b2 = brokers("b2", options=dict(OPTIONS, group="g2"),
                 bridges=[{"name": "b2-to-b1", "port": b1.port}])
    edges = []
    for i, hubs in enumerate([(a3, a1), (a1, a2), (b1, b2), (b2, b1)], start=1):
        name = f"e{i}"
        edges.append(brokers(name, options=dict(OPTIONS, role="edge"),
                             extra=edge_bridge(name, hubs)))
    return [a1, a2, a3, b1, b2], edges


def add_at_hubs(hubs, expected, n=3):
    for h in hubs:
        p = publisher(h.port)
        p.publish("counters/shared/inc", str(n), 1).wait_for_publish(10)
        close(p)
        expected["shared"] += n


def test_a_light_hub_holds_its_group_and_one_slot_a_level_and_counts_everything(brokers,
                                                                                  closing):
    hubs, edges = light_group(brokers)
    a1, a2, a3, b1, b2 = hubs
    expected = {}
    increments(edges, 30, expected)
    add_at_hubs(hubs, expected)
    exact_everywhere(hubs + edges, expected)
    g1 = {"a1", "a2", "a3", "e1", "e2"}
    wait_for(lambda: state_nodes(a3, "shared") == g1 | {REST}, 10,
             what=f"a3: shared held as g1's nodes and {REST}, is "
                  f"{sorted(state_nodes(a3, 'shared'))}")
    # a1 and a2 hold g2's sum (and the rest slot, which they do not count); b1 and b2 as ever
    for h in (a1, a2):
        wait_for(lambda: state_nodes(h, "shared") == g1 | {".g2", REST}, 10,
                 what=f"{h.name}: shared held as {sorted(state_nodes(h, 'shared'))}")
    wait_for(lambda: state_nodes(b1, "shared") == {"b1", "b2", "e3", "e4", ".g1"}, 10,
             what=f"b1: shared held as {sorted(state_nodes(b1, 'shared'))}")
    for h, speaks in ((a1, True), (a2, False), (a3, False)):
        wait_for(lambda: group_stats(h).get("speaking") is speaks, 15,
                 what=f"{h.name} {'to speak' if speaks else 'to keep quiet'} for g1")
    assert group_stats(a3).get("light") is True and group_stats(a1).get("light") is False
    assert "set plugin_opt_hub full" not in a3.read_log()  # its rest slots came
    # a light hub's rest slot is a sum whose parts no reset it ran could name: a reset sent to
    # it goes on to g1's speaker, a1, which runs it and answers through a3; one sent to a3's
    # edge goes up to a3 and on to a1 the same way; a reset at a2, a full hub, runs there
    (resp,) = control(a3, [{"command": "resetCounter", "name": "shared"}])
    assert resp["data"] == {"name": "shared", "value": 0, "deleted": False}, resp
    expected["shared"] = 0
    exact_everywhere(hubs + edges, expected)
    increments(edges, 10, expected)
    exact_everywhere(hubs + edges, expected)
    resp = control(edges[0], [{"command": "resetCounter", "name": "own-e1"},
                              {"command": "getCounter", "name": "own-e1"}])
    assert resp[0]["data"]["value"] == 0, resp
    assert resp[1]["data"]["counter"]["value"] == 0 and resp[1]["data"]["counter"]["node"] == "a1"
    expected["own-e1"] = 0
    exact_everywhere(hubs + edges, expected)
    reset_at(a2, "shared", hubs + edges, expected)
    increments(edges, 10, expected)
    exact_everywhere(hubs + edges, expected)
    delete_and_count_again(a1, "own-e3", (a3,), edges[2], hubs + edges, expected)


def reset_at(node, name, nodes, expected):
    """resetCounter of name at node answers 0, and every one of nodes comes to show 0."""
    (resp,) = control(node, [{"command": "resetCounter", "name": name}])
    assert resp["data"]["value"] == 0, resp
    expected[name] = 0
    exact_everywhere(nodes, expected)


def delete_and_count_again(node, name, gone_at, writer, nodes, expected):
    """deleteCounter of name at node: gone at each of gone_at; 4 more at writer count from 0,
    at every one of nodes."""
    (resp,) = control(node, [{"command": "deleteCounter", "name": name}])
    assert resp["data"]["deleted"] is True, resp
    for h in gone_at:
        wait_for(lambda: h.total(name) is None, 20, what=f"{h.name}: {name} deleted")
    writer.pub(f"counters/{name}/inc", "4")
    expected[name] = 4
    exact_everywhere(nodes, expected)


def test_the_speaker_killed_the_other_full_hub_keeps_the_light_hubs_rest(brokers, closing):
    """kill -9 of a1, g1's speaker, under load: a2 speaks for g1 and keeps a3's rest slot, b1's
    bridge moves to a2, e2 fails over to a2; every live node exact, and the watchers at a3 and
    its edge never see `shared` go down; a1 back without its state, exact again. Then kill -9
    of a3, the light hub: e1 fails over to a1, a full hub, and back once a3 is up again (without
    its state), exact, counted once, and e1's watcher never sees `shared` go down."""
    hubs, edges = light_group(brokers)
    a1, a2, a3, b1, b2 = hubs
    watchers = watch_shared(closing, (a3, edges[0]))
    expected = {}
    increments(edges, 20, expected)
    exact_everywhere(hubs + edges, expected)
    a1.kill()
    increments(edges, 20, expected, pause=0.05)
    exact_everywhere([a2, a3, b1, b2] + edges, expected)
    wait_for(lambda: group_stats(a2).get("speaking") is True, 15, what="a2 to speak for g1")
    increments(edges, 10, expected)
    exact_everywhere([a2, a3, b1, b2] + edges, expected)
    a1.start()
    increments(edges, 20, expected, pause=0.05)
    exact_everywhere(hubs + edges, expected)
    never_down(watchers, "counters/shared", expected["shared"], wait=10)
    a3.kill()
    increments(edges, 20, expected, pause=0.05)  # e1 over to a1
    exact_everywhere([a1, a2, b1, b2] + edges, expected)
    a3.start()
    increments(edges, 20, expected, pause=0.05)
    exact_everywhere(hubs + edges, expected)
    never_down(watchers[1:], "counters/shared", expected["shared"], wait=10)



def test_a_light_hub_whose_group_keeps_no_rest_slot_says_so(brokers, closing):
    """A light hub in a group whose other hub does not set `hub full` gets no rest slot: its
    totals leave the other group out, and it says so in its log (once a minute)."""
    a1 = brokers("a1", options=dict(OPTIONS, group="g1"))
    a3 = brokers("a3", options=dict(OPTIONS, group="g1", hub="light"),
                 bridges=[{"name": "a3-to-a1", "port": a1.port}])
    b1 = brokers("b1", options=dict(OPTIONS, group="g2"),
                 extra=bridge("b1-to-g1", (a1.port,), BETWEEN_GROUPS))
    for h, n in ((a1, 2), (b1, 5)):
        h.pub("counters/shared/inc", str(n))
    a1.wait_total("shared", 7)
    b1.wait_total("shared", 7)
    wait_for(lambda: "set plugin_opt_hub full on the other hubs of group 'g1'" in a3.read_log(),
             20, what="a3 to log that it gets no rest slot")
    assert a3.total("shared") == 2  # g1's part alone
