"""Tiers (issue 14): edges (plugin_opt_role edge) bridged to two hubs by a bridge with an
address list, real brokers on loopback. Every edge takes increments and has viewers; every
node ends exact. Then a hub is killed with -9 under load: its edges fail over to the other hub
and, once it is back, return to it; totals stay exact, nothing is counted twice, and no edge's
clients ever see a total go down."""
import json
import re
import subprocess
import threading
import time

from conftest import wait_for
from tcpproxy import TcpProxy
from test_fold import disk_slots
from test_remove import remove_once_dead
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


def tree(brokers, options=None, hub_options=None):
    """Hubs h1 and h2 (a cluster of two); edges e1, e2 on h1 (h2 second), e3, e4 on h2.
    options: every node's; hub_options: the hubs' besides."""
    opts = dict(OPTIONS, **(options or {}))
    hub_opts = dict(opts, **(hub_options or {}))
    h1 = brokers("h1", options=dict(hub_opts))
    h2 = brokers("h2", options=dict(hub_opts), bridges=[{"name": "h2-to-h1", "port": h1.port}])
    edges = []
    for i, hubs in enumerate([(h1, h2), (h1, h2), (h2, h1), (h2, h1)], start=1):
        name = f"e{i}"
        edges.append(brokers(name, options=dict(opts, role="edge"),
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
    # Stats list direct neighbours only: a hub the other hub and its own edges (not the other
    # hub's, which it hears through it), an edge its hub.
    def peers(n):
        return set(json.loads(n.retained(f"$tally/stats/{n.name}") or "{}").get("peers", {}))

    for hub, want in ((h1, {"h2", "e1", "e2"}), (h2, {"h1", "e3", "e4"})):
        wait_for(lambda: peers(hub) == want, 10, what=f"{hub.name} to list {sorted(want)}")
    for e in edges:
        wait_for(lambda: peers(e) == {"(hub)"}, 10, what=f"{e.name} to list its hub")


def test_a_hubs_downs_go_to_its_edges_alone(brokers, closing):
    """A hub sends each DOWN only to the bridge its edge's UPs came over: a client holding a
    bridge's name and `$tally/#` at each hub (as a hub bridged to it does) hears the cluster's
    own traffic but none of the DOWNs. Published to all, they would go to every hub bridged to
    this one, a DOWN per edge per publish interval, for nothing (a hub reads none)."""
    h1, h2, edges = tree(brokers)
    spies = [Watcher(h.port, ["$tally/#"], client_id=f"spy-to-{h.name}", keep=True)
             for h in (h1, h2)]
    closing.extend(spies)
    viewers(edges, closing, per_edge=1)
    closing.extend(Watcher(e.port, ["counters/shared"]) for e in edges)
    expected = {}
    increments(edges, 20, expected, pause=0.05)
    exact_everywhere([h1, h2] + edges, expected)
    time.sleep(1.5)  # every edge's DOWN heartbeat (sync_interval_ms 500) has gone out
    for spy in spies:
        topics = {t.split("/")[1] + "/" + t.split("/")[2] for t, _ in spy.messages()}
        assert "v1/sync" in topics and "v1/presence" in topics, topics
        downs = [t for t, _ in spy.messages() if t.startswith("$tally/down/")]
        assert downs == [], f"{len(downs)} DOWNs reached a bridge other than their edge's"


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


ADMIN = dict(OPTIONS, admin_usernames="admin")


def admin_tree(brokers):
    """tree(), with `admin` allowed the control API on every node."""
    h1 = brokers("h1", options=dict(ADMIN))
    h2 = brokers("h2", options=dict(ADMIN), bridges=[{"name": "h2-to-h1", "port": h1.port}])
    edges = [brokers(f"e{i}", options=dict(ADMIN, role="edge"),
                     extra=edge_bridge(f"e{i}", hubs))
             for i, hubs in enumerate([(h1, h2), (h1, h2), (h2, h1), (h2, h1)], start=1)]
    return h1, h2, edges


def ask_ok(node, commands, username="admin", wait=5):
    """A control request that must be answered without an error; the responses."""
    args = ["mosquitto_rr", "-p", str(node.port), "-t", "$CONTROL/tally/v1", "-e",
            "$CONTROL/tally/v1/response", "-q", "1", "-W", str(wait),
            "-m", json.dumps({"commands": commands}), "-u", username]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip(), f"{node.name}: no answer ({r.stderr})"
    responses = json.loads(r.stdout)["responses"]
    for resp in responses:
        assert "error" not in resp, f"{node.name}: {resp}"
    return responses


def test_a_reset_or_delete_sent_to_an_edge_is_the_clusters(brokers, closing):
    """Issue 14 follow-up: resetCounter and deleteCounter sent to an edge go to its hub, which
    runs them as if sent there: every node, and the clients of every edge, see the reset."""
    h1, h2, edges = admin_tree(brokers)
    e1, e3 = edges[0], edges[2]  # e1 on h1, e3 on h2
    seen = Watcher(e1.port, ["counters/likes"], keep=True)
    closing.append(seen)
    closing.append(Watcher(e3.port, ["counters/likes"]))
    increments_of(e1.port, ["likes"] * 5, 1)
    increments_of(e3.port, ["likes"] * 7, 1)
    exact_everywhere([h1, h2, e1, e3], {"likes": 12})

    ask_ok(e1, [{"command": "resetCounter", "name": "likes"}])
    exact_everywhere([h1, h2, e1, e3], {"likes": 0})
    wait_for(lambda: seen.get("counters/likes") == b"0", 10, what="e1's watcher to see 0")
    increments_of(e3.port, ["likes"] * 2, 1)  # after the reset: counted from 0
    exact_everywhere([h1, h2, e1, e3], {"likes": 2})

    ask_ok(e3, [{"command": "deleteCounter", "name": "likes"}])
    for hub in (h1, h2):
        wait_for(lambda: not any(c["name"] == "likes" for c in ask_ok(
            hub, [{"command": "listCounters"}])[0]["data"]["counters"]), 10,
            what=f"{hub.name} no longer to list likes")
    assert "reset or deleted counter likes" in h1.read_log() + h2.read_log()


def test_the_control_api_at_an_edge_answers_for_the_cluster(brokers, closing):
    """listCounters, getCounter and topCounters sent to an edge are answered by its hub: every
    counter of the cluster, not only the two the edge holds; a reader still may not reset."""
    h1, h2, edges = admin_tree(brokers)
    expected = {}
    increments(edges, 3, expected)
    exact_everywhere([h1, h2], expected)
    e1 = edges[0]
    listed, got, top = ask_ok(e1, [{"command": "listCounters"},
                                   {"command": "getCounter", "name": "own-e3"},
                                   {"command": "topCounters", "count": 10}])
    assert listed["data"]["totalCount"] == 5
    assert {c["name"]: c["value"] for c in listed["data"]["counters"]} == expected
    assert got["data"]["counter"]["value"] == expected["own-e3"]
    assert {c["name"] for c in top["data"]["counters"]} == set(expected)
    # The edge's own ACL still decides who may do what: a reader's reset is refused there.
    args = ["mosquitto_rr", "-p", str(e1.port), "-t", "$CONTROL/tally/v1", "-e",
            "$CONTROL/tally/v1/response", "-q", "1", "-W", "2", "-u", "reader",
            "-m", json.dumps({"commands": [{"command": "resetCounter", "name": "shared"}]})]
    subprocess.run(args, capture_output=True, text=True, timeout=20)
    time.sleep(1)
    exact_everywhere([h1, h2] + edges, {"shared": expected["shared"]})


def test_an_edge_without_a_hub_answers_with_an_error(brokers):
    """With every hub gone, a request to an edge is answered, with an error per command,
    after the edge's 5 s wait; nothing is reset at the edge alone."""
    h1, h2, edges = admin_tree(brokers)
    e1 = edges[0]
    increments_of(e1.port, ["likes"] * 3, 1)
    exact_everywhere([h1, e1], {"likes": 3})
    h1.kill()
    h2.kill()
    args = ["mosquitto_rr", "-p", str(e1.port), "-t", "$CONTROL/tally/v1", "-e",
            "$CONTROL/tally/v1/response", "-q", "1", "-W", "15", "-u", "admin",
            "-m", json.dumps({"commands": [{"command": "resetCounter", "name": "likes",
                                            "correlationData": "r-1"}]})]
    start = time.monotonic()
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    (resp,) = json.loads(r.stdout)["responses"]
    assert resp["command"] == "resetCounter" and resp["correlationData"] == "r-1"
    assert "hub did not answer" in resp["error"]
    assert time.monotonic() - start >= 4.5
    assert e1.total("likes") == 3


def test_a_request_queued_on_a_cut_bridge_is_not_run_when_it_heals(brokers, closing):
    """Regression: e1's bridge keeps its session (cleansession false, Mosquitto's default and
    the README's example) and is cut; an admin's reset sent to e1 meanwhile is answered, after
    the edge's 5 s wait, with "the hub did not answer", and waited in the bridge's queue: once
    healed, the hub ran it (likes 5, then 6, read 1). A request that reaches the hub more than
    FORWARD_TIMEOUT_MS / 2 after the edge sent it is answered with an error, not run."""
    h1 = brokers("h1", options=dict(ADMIN))
    link = TcpProxy(h1.port)
    closing.append(link)
    extra = edge_bridge("e1", []).replace("address ", f"address 127.0.0.1:{link.port}")
    e1 = brokers("e1", options=dict(ADMIN, role="edge"),
                 extra=extra.replace("cleansession true", "cleansession false"))
    increments_of(e1.port, ["likes"] * 5, 1)
    exact_everywhere([h1, e1], {"likes": 5})
    link.cut()
    args = ["mosquitto_rr", "-p", str(e1.port), "-t", "$CONTROL/tally/v1", "-e",
            "$CONTROL/tally/v1/response", "-q", "1", "-W", "15", "-u", "admin",
            "-m", json.dumps({"commands": [{"command": "resetCounter", "name": "likes"}]})]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    (resp,) = json.loads(r.stdout)["responses"]
    assert "hub did not answer" in resp["error"]
    link.heal()
    # the queue goes first: once this increment is at h1, so is the reset, if it was run
    increments_of(e1.port, ["likes"], 1)
    exact_everywhere([h1, e1], {"likes": 6})
    time.sleep(0.5)
    assert h1.total("likes") == 6


def get_counter(node, name):
    """(replicas, folds) of getCounter at node."""
    (resp,) = ask_ok(node, [{"command": "getCounter", "name": name}], username="viewer")
    return resp["data"]["replicas"], resp["data"]["folds"]


def test_an_edge_restarted_without_state_leaves_one_slot(brokers, closing):
    """Issue 12's bounded metadata through the tree: e1 (no state_dir) is killed with -9 and
    restarted 8 times, each time followed by increments at every edge; exact everywhere after
    each. Its hubs adopt its past lives (fold.c, "Edges' past lives"): in the end each hub
    holds one slot of e1 per counter, its running life's, and no fold entry. Then e4 is lost
    for good and removed at its hub: no slot of it is left, and its counts still are."""
    h1, h2, edges = tree(brokers, {"stats_interval_ms": "200", "admin_usernames": "admin"})
    e1 = edges[0]
    expected = {}
    increments(edges, 10, expected)
    exact_everywhere([h1, h2] + edges, expected)
    for _ in range(8):
        e1.kill()
        e1.start()
        increments(edges, 5, expected)
        exact_everywhere([h1, h2] + edges, expected)

    def e1_lives():
        out = {}
        for hub in (h1, h2):
            for name in ("shared", "own-e1"):
                reps, folds = get_counter(hub, name)
                out[(hub.name, name)] = (sum(r["node"] == "e1" for r in reps), len(folds))
        return out

    seen = {}
    wait_for(lambda: seen.update(e1_lives()) or set(seen.values()) == {(1, 0)}, 30,
             interval=0.5, what="one slot of e1 per counter at both hubs, no fold entry")
    exact_everywhere([h1, h2] + edges, expected, timeout=5)
    increments(edges, 3, expected)
    exact_everywhere([h1, h2] + edges, expected)

    # e4 is lost for good: removeNode at its hub adopts it; its counts stay, its slots go
    e4 = edges.pop()
    e4.kill()

    assert remove_once_dead(h2, "e4", timeout=15)["adopter"] == "h2"

    def e4_slots():
        return {(hub.name, name): sum(r["node"] == "e4" for r in get_counter(hub, name)[0])
                for hub in (h1, h2) for name in ("shared", "own-e4")}

    wait_for(lambda: set(e4_slots().values()) == {0}, 30, interval=0.5,
             what=f"no slot of e4 at either hub (now {e4_slots()})")
    increments(edges, 3, expected)
    exact_everywhere([h1, h2] + edges, expected)


def test_an_edge_rebooted_with_its_state_counts_its_past_life_once(brokers, closing, workdir):
    """An edge with a state_dir whose machine reboots starts a new life (its disk may lack
    the fsync window), with its past life's slots loaded. Here e5's last increments never
    reached a hub (its link cut), are on its disk, and it stops; the machine "reboots" (another
    boot id in its meta); it comes back: it shows its past life once (not also in the hub's
    view), sends that life's slots up (UP version 2), and the hubs count them: exact
    everywhere. Then the hubs adopt the past life and retire it, and e5 drops it too."""
    h1, h2, edges = tree(brokers, {"stats_interval_ms": "200"})
    link = TcpProxy(h1.port)
    closing.append(link)
    e5 = brokers("e5", options=dict(OPTIONS, role="edge", stats_interval_ms="200",
                                     state_dir=f"{workdir}/state-e5"),
                 extra=edge_bridge("e5", []).replace("address ", f"address 127.0.0.1:{link.port}"))
    nodes = [h1, h2, e5] + edges
    expected = {}
    increments([e5] + edges, 10, expected)
    exact_everywhere(nodes, expected)
    link.cut()
    wait_for(lambda: link.connections() == 0, 5, what="e5's link cut")
    increments([e5], 7, expected)  # acknowledged by e5, on its disk, not at any hub
    assert e5.stop() == 0
    meta = f"{workdir}/state-e5/meta"
    text = open(meta).read()
    open(meta, "w").write(re.sub(r"boot .*", "boot 00000000-0000-0000-0000-000000000000", text))
    link.heal()
    e5.start()
    assert "0 counters loaded" not in e5.read_log().split("tally: node e5")[-1]
    exact_everywhere(nodes, expected)
    increments([e5] + edges, 3, expected)
    exact_everywhere(nodes, expected)

    def e5_lives():
        return {(hub.name, name): tuple(len(x) for x in get_counter(hub, name))
                for hub in (h1, h2) for name in ("shared", "own-e5")}

    def e5_slots():
        return {(hub.name, name): sum(r["node"] == "e5" for r in get_counter(hub, name)[0])
                for hub in (h1, h2) for name in ("shared", "own-e5")}

    wait_for(lambda: set(e5_slots().values()) == {1}, 30, interval=0.5,
             what=f"one slot of e5 per counter at both hubs (now {e5_slots()})")
    wait_for(lambda: all(f == 0 for _, f in e5_lives().values()), 30, interval=0.5,
             what=f"no fold entry left (now {e5_lives()})")
    exact_everywhere(nodes, expected, timeout=5)
    # e5 drops its past life too: after a clean stop, its disk holds its running life only
    assert e5.stop() == 0
    slots, _, _ = disk_slots(f"{workdir}/state-e5")
    lives = {inc for held in slots.values() for node, inc in held if node == "e5"}
    assert len(lives) == 1, lives


def likes_from_two_edges(h1, h2, e1, e2):
    """`likes` at 1000 everywhere: 990 written at e2, 10 at e1."""
    for edge, amount in ((e2, 990), (e1, 10)):
        p = publisher(edge.port)
        p.publish("counters/likes/inc", str(amount), 1).wait_for_publish(10)
        close(p)
    exact_everywhere([h1, h2], {"likes": 1000})


def test_an_edge_shows_no_own_only_total_once_its_view_has_gone(brokers, closing):
    """e1 and e2 (edges of h1) both write `likes`; nobody at e1 watches it once a poller has
    left. Past the 30 s linger e1 holds no view of the rest of the world, and its device writes
    again: a `counters/+` reader at e1 must not see the total step back to e1's own part, a new
    exact subscriber at e1 must first read at least the last cluster-wide figure, and the
    Response Topic answer to that increment must not be e1's own part alone."""
    from test_response import Requester
    h1, h2, (e1, e2, _, _) = tree(brokers)
    likes_from_two_edges(h1, h2, e1, e2)
    poller = Watcher(e1.port, ["counters/likes"])
    closing.append(poller)
    wait_for(lambda: poller.get("counters/likes") == b"1000", 15, what="e1 to show 1000")
    poller.close()
    time.sleep(30 + 3)  # tier.c's TIER_VIEW_LINGER_MS, and a few UP intervals: the view is gone
    reader = Watcher(e1.port, ["counters/+", "counters/+/state"], keep=True)  # no views
    closing.append(reader)
    wait_for(lambda: reader.get("counters/likes") == b"1000", 5, what="the retained 1000 at e1")
    rr = Requester(e1.port)
    answer = rr.ask("counters/likes/inc")
    rr.close()
    exact_everywhere([h1, h2], {"likes": 1001})
    late = Watcher(e1.port, ["counters/likes"], keep=True)
    closing.append(late)
    wait_for(lambda: late.get("counters/likes") == b"1001", 15, what="e1 to show 1001 again")
    seen = [int(v) for t, v in reader.messages() if t == "counters/likes"]
    first = [int(v) for t, v in late.messages()]
    docs = [json.loads(v) for t, v in reader.messages() if t == "counters/likes/state"]
    states = [d["value"] for d in docs]
    print(f"counters/+ at e1 saw {seen}, counters/+/state {states}; the new subscriber {first}; "
          f"the answer {answer}")
    assert seen == sorted(seen), f"a counters/+ reader at e1 saw likes step back: {seen}"
    assert all(v >= 1000 for v in states), f"e1's state document showed {states}"
    # its parts are the cluster's too, not e1's own table's (p was e1's 11)
    assert [(d["p"], d["n"], d["devices_total"]) for d in docs] == [(v, 0, 0) for v in states], \
        f"e1's state documents: {docs}"
    assert first[0] >= 1000, f"a new subscriber at e1 first read {first}, below 1000"
    assert answer["value"] >= 1000, f"the answer at e1 says {answer}"


def test_a_wildcard_reader_at_an_edge_holds_no_view(brokers, closing):
    """A `counters/+` reader at e1 while an exact watcher of `likes` leaves: 30 s later e1 must
    have dropped its view (a wildcard is no watcher, README Tiers), so it no longer follows what
    the other edges add (it kept following for as long as it lived); watched again by name,
    it shows the cluster's total, never below the one it left."""
    h1, h2, (e1, e2, _, _) = tree(brokers)
    likes_from_two_edges(h1, h2, e1, e2)
    reader = Watcher(e1.port, ["counters/+"], keep=True)
    closing.append(reader)
    poller = Watcher(e1.port, ["counters/likes"])
    closing.append(poller)
    wait_for(lambda: poller.get("counters/likes") == b"1000", 15, what="e1 to show 1000")
    poller.close()
    time.sleep(30 + 3)  # tier.c's TIER_VIEW_LINGER_MS, and a few UP intervals: the view is gone
    p = publisher(e2.port)
    p.publish("counters/likes/inc", "5", 1).wait_for_publish(10)
    close(p)
    exact_everywhere([h1, h2], {"likes": 1005})
    time.sleep(3)  # six of e1's heartbeats (sync_interval_ms 500): a DOWN it followed would be in
    assert reader.get("counters/likes") == b"1000", "e1 still follows likes (a wildcard held it)"
    late = Watcher(e1.port, ["counters/likes"], keep=True)
    closing.append(late)
    wait_for(lambda: late.get("counters/likes") == b"1005", 15, what="e1 to show 1005")
    seen = [int(v) for t, v in reader.messages() if t == "counters/likes"]
    assert seen == sorted(seen), f"a counters/+ reader at e1 saw likes step back: {seen}"
