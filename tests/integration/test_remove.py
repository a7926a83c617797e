"""Nodes removed from the cluster for good (removeNode, plugin/fold.c), on real brokers.

A node that will never come back leaves a slot in every counter it wrote. An
admin names a node to adopt it: once every member backs the claim, the
adopter folds the removed node's slots into its own, and once no member holds
any, every life of the removed node is retired. No total moves by it, and two
claims made on the two sides of a partition never both fold.
"""
import time

from conftest import wait_for
from test_cluster import Ledger, Watcher, closing, cluster, stats, wait_converged  # noqa: F401
from test_fold import FOLD_OPTIONS, TRIANGLE, get_counter, slot_counts
from test_reset import ADMIN, control

OPTIONS = dict(FOLD_OPTIONS, **ADMIN)


def remove(node, gone):
    """removeNode at node: (data, error) of its answer."""
    (resp,) = control(node, [{"command": "removeNode", "node": gone}])
    return resp.get("data"), resp.get("error")


def remove_once_dead(node, gone, timeout=10):
    """removeNode, retried while the node is still taken as alive (heard
    within peer_timeout_ms): returns the answer's data."""
    got = {}

    def accepted():
        got["data"], got["error"] = remove(node, gone)
        return got["error"] != "the node is alive: stop it for good first"

    wait_for(accepted, timeout, interval=0.3, what=f"{gone} taken as dead")
    assert got["error"] is None, got
    return got["data"]


def claim(watcher, node, gone):
    """The claim for gone in node's stats (full documents carry them)."""
    s = stats(watcher, node)
    return ((s or {}).get("fold") or {}).get("adopt", {}).get(gone)


def wait_two_slots(nodes, names):
    seen = {}

    def done():
        seen.update({n: slot_counts(nodes[n], names) for n in ("a", "b")})
        return all(v == (2, 0) for s in seen.values() for v in s.values())

    try:
        wait_for(done, 20, interval=0.3, what="2 slots and no fold entry in every counter")
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen (slots, fold entries): {seen}") from None


class Counted(Ledger):
    """A ledger that also keeps each node's own P and N (what its slot holds
    when nothing was folded into it)."""

    def __init__(self, seed):
        super().__init__(seed)
        self.own = {}

    def count_at(self, node, incs, qos):
        super().count_at(node, incs, qos)
        with self.lock:
            for name, delta, _ in incs:
                p, n = self.own.get((node.name, name), (0, 0))
                self.own[(node.name, name)] = (p + max(delta, 0), n + max(-delta, 0))


def test_removed_node_is_adopted_folded_and_collected(brokers, closing, workdir):  # noqa: F811
    """c dies for good; removeNode c at a: refused while c is alive, and for
    a itself or an unknown node; accepted once c is dead; a second claim at b
    is refused; c's slots leave every counter at a and b, totals exact
    throughout, with increments while it happens; a, killed with -9 and
    restarted with its state, still knows; c coming back under its old id is
    told it was removed, and what it counts then is not counted by a or b."""
    nodes, _, watchers = cluster(brokers, closing, TRIANGLE, options=dict(OPTIONS))
    # a keeps its state on disk, to show the claim survives kill -9
    nodes["a"].kill()
    nodes["a"].options["state_dir"] = f"{workdir}/state-a"
    nodes["a"].start()
    watchers["a"] = Watcher(nodes["a"].port, ["counters/+", "$tally/stats/a"])
    closing.append(watchers["a"])
    ledger = Ledger("remove")
    names = [f"rm-{i}" for i in range(6)]
    ledger.round(nodes.values(), names, 40)
    wait_converged(watchers, ledger)
    # a's life before it had a state_dir is folded and collected first
    wait_for(lambda: set(slot_counts(nodes["a"], names).values()) == {(3, 0)}, 20,
             what="3 slots in every counter")

    assert remove(nodes["a"], "c") == (None, "the node is alive: stop it for good first")
    assert remove(nodes["a"], "a") == (None, "a node cannot remove itself")
    wait_for(lambda: remove(nodes["a"], "zz") == (None, "unknown node"), 10,
             what="a to have heard the cluster (not ready before)")
    # not an admin: refused, unanswered (as a reset is)
    assert control(nodes["a"], [{"command": "removeNode", "node": "c"}], username="viewer") is None

    watchers.pop("c").close()
    nodes["c"].kill()
    assert remove_once_dead(nodes["a"], "c") == {"node": "c", "adopter": "a", "settled": False}
    t0 = time.monotonic()
    wait_for(lambda: (remove(nodes["b"], "c")[1] or "").startswith("already removed"), 10,
             what="b to refuse a second claim")
    ledger.round([nodes["a"], nodes["b"]], names, 20)
    wait_two_slots(nodes, names)
    print(f"removeNode c: c's slots gone from every counter at a and b "
          f"{time.monotonic() - t0:.2f}s after the claim")
    wait_converged(watchers, ledger)
    replicas = {r["node"] for n in names for r in get_counter(nodes["b"], n)[0]}
    assert replicas == {"a", "b"}, replicas

    # the claim is on a's disk
    watchers["a"].close()
    nodes["a"].kill()
    nodes["a"].start()
    watchers["a"] = Watcher(nodes["a"].port, ["counters/+", "$tally/stats/a"])
    closing.append(watchers["a"])
    assert remove(nodes["a"], "c")[1].startswith("already removed")
    ledger.round([nodes["a"], nodes["b"]], names, 10)
    wait_converged(watchers, ledger)
    assert set(slot_counts(nodes["a"], names).values()) == {(2, 0)}

    # c comes back under its old id, without its state: it is told, and not counted
    nodes["c"].start()
    wait_for(lambda: "was removed from the cluster" in nodes["c"].read_log(), 30,
             what="c to log that it was removed")
    assert nodes["c"].pub(f"counters/{names[0]}/inc", "1000").returncode == 0
    ledger.round([nodes["a"], nodes["b"]], names, 10)
    wait_converged(watchers, ledger)
    time.sleep(1.0)  # c's slot had time to arrive: it is discarded as a retired life's
    wait_converged(watchers, ledger, timeout=2)
    assert set(slot_counts(nodes["b"], names).values()) == {(2, 0)}


def test_two_adopters_across_a_partition_fold_once(brokers, closing):  # noqa: F811
    """c dies; a partition splits a from b; an admin removes c on both sides.
    Neither claim settles while they are apart (each waits for the other);
    both sides keep counting; once healed, b backs a's claim (the lower id),
    only a folds c's slots (b's slot holds exactly what b counted), and
    every total is exact."""
    links = {"a": ["b", "c"], "b": ["c"]}
    nodes, proxies, watchers = cluster(brokers, closing, links, options=dict(OPTIONS),
                                       proxied=[("a", "b")])
    ledger = Counted("remove-partition")
    names = [f"rp-{i}" for i in range(6)]
    ledger.round(nodes.values(), names, 40)
    wait_converged(watchers, ledger)

    watchers.pop("c").close()
    nodes["c"].kill()
    ab = proxies[("a", "b")]
    ab.cut()
    wait_for(lambda: ab.connections() == 0, 5, what="a|b cut")
    assert remove_once_dead(nodes["a"], "c")["adopter"] == "a"
    assert remove_once_dead(nodes["b"], "c")["adopter"] == "b"
    for _ in range(3):
        ledger.round([nodes["a"]], names, 10)
        ledger.round([nodes["b"]], names, 10)
        time.sleep(0.5)
    every = "ffffffffffffffff"  # a removal adopts every life
    assert claim(watchers["a"], "a", "c") == {"by": "a", "below": every, "settled": False}
    assert claim(watchers["b"], "b", "c") == {"by": "b", "below": every, "settled": False}
    assert set(slot_counts(nodes["a"], names).values()) == {(3, 0)}, "a folded while cut off"
    assert set(slot_counts(nodes["b"], names).values()) == {(3, 0)}, "b folded while cut off"

    t0 = time.monotonic()
    ab.heal()
    wait_two_slots(nodes, names)
    wait_converged(watchers, ledger)
    print(f"after the heal: c folded once and collected, exact on both sides, "
          f"{time.monotonic() - t0:.2f}s after it")
    for n in ("a", "b"):
        wait_for(lambda: claim(watchers[n], n, "c") in
                 (None, {"by": "a", "below": every, "settled": True}), 10,
                 what=f"{n} to back a's settled claim")
    for name in names:
        mine = {r["node"]: (r["p"], r["n"]) for r in get_counter(nodes["a"], name)[0]}
        assert mine["b"] == ledger.own[("b", name)], (name, mine, ledger.own[("b", name)])
