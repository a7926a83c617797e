"""Reset and delete through the control API (issue 16), on real brokers: one
node, then a three-node chain with a concurrent increment and a partition
that heals afterwards. The README's semantics, checked exactly on every node:

- a reset takes away what the resetting node had observed; an increment made
  elsewhere at the same moment (here: behind a cut link) survives it;
- a delete clears the retained total and state (empty retained messages) and
  the listing on every node, including one that was cut off when it happened;
- an increment after a delete brings the counter back, counting from zero;
- nothing is ever counted twice.
"""
import json
import subprocess
import threading
import time

import paho.mqtt.client as mqtt

from conftest import wait_for
from test_cluster import TOPOLOGIES, Watcher, closing, cluster  # noqa: F401 (closing: fixture)

REQUEST = "$CONTROL/tally/v1"
RESPONSE = "$CONTROL/tally/v1/response"
ADMIN = {"admin_usernames": "admin"}


def control(node, commands, username="admin"):
    args = ["mosquitto_rr", "-p", str(node.port), "-t", REQUEST, "-e", RESPONSE, "-q", "1",
            "-W", "5", "-V", "5", "-m", json.dumps({"commands": commands})]
    if username:
        args += ["-u", username]
    r = subprocess.run(args, capture_output=True, text=True, timeout=20)
    return json.loads(r.stdout)["responses"] if r.stdout.strip() else None


def listed(node, prefix=""):
    (resp,) = control(node, [{"command": "listCounters", "prefix": prefix}])
    return {c["name"]: c["value"] for c in resp["data"]["counters"]}


def inc(node, name, delta):
    r = node.pub(f"counters/{name}/inc", str(delta))
    assert r.returncode == 0, r.stderr


def test_reset_and_delete_on_one_node(brokers, closing):  # noqa: F811
    node = brokers("n1", options=dict(ADMIN, reader_usernames="viewer"))
    w = Watcher(node.port, ["counters/+", "counters/+/state"])
    closing.append(w)
    inc(node, "likes", 40)
    inc(node, "likes", 2)
    node.pub("counters/meter/report", json.dumps({"device": "m-1", "total": 100}))
    node.wait_total("likes", 42)
    node.wait_total("meter", 100)

    reset, missing = control(node, [{"command": "resetCounter", "name": "likes"},
                                    {"command": "resetCounter", "name": "nope"}])
    assert reset["data"] == {"name": "likes", "value": 0, "deleted": False}
    assert missing["error"] == "counter not found"
    node.wait_total("likes", 0)
    wait_for(lambda: json.loads(w.get("counters/likes/state"))["value"] == 0, 5)
    inc(node, "likes", 3)
    node.wait_total("likes", 3)
    # a meter's next reading counts from its reading at the reset
    control(node, [{"command": "resetCounter", "name": "meter"}])
    node.pub("counters/meter/report", json.dumps({"device": "m-1", "total": 130}))
    node.wait_total("meter", 30)

    (deleted,) = control(node, [{"command": "deleteCounter", "name": "likes"}])
    assert deleted["data"] == {"name": "likes", "value": 0, "deleted": True}
    wait_for(lambda: w.get("counters/likes") == b"" and w.get("counters/likes/state") == b"", 5,
             what="retained total and state cleared")
    assert node.retained("counters/likes", timeout=1) is None  # nothing retained for newcomers
    assert "likes" not in listed(node) and listed(node) == {"meter": 30}
    (got,) = control(node, [{"command": "getCounter", "name": "likes"}])
    assert got["error"] == "counter not found"
    # back, counting from zero
    inc(node, "likes", 5)
    node.wait_total("likes", 5)
    assert listed(node) == {"likes": 5, "meter": 30}
    # a 0 increment creates a counter, a deleted one too: listed again at 0
    control(node, [{"command": "deleteCounter", "name": "meter"}])
    wait_for(lambda: "meter" not in listed(node), 5, what="meter deleted")
    inc(node, "meter", 0)
    node.wait_total("meter", 0)
    assert listed(node) == {"likes": 5, "meter": 0}
    # readers may not reset; their request is refused whole
    assert control(node, [{"command": "resetCounter", "name": "likes"}], username="viewer") is None
    assert control(node, [{"command": "deleteCounter", "name": "likes"}], username=None) is None
    assert listed(node)["likes"] == 5


def test_reset_and_delete_across_a_partition(brokers, closing):  # noqa: F811
    """Chain a <- b <- c, c's link cut while a resets and b deletes; c counts
    meanwhile; after the heal every node holds exactly the documented result."""
    nodes, proxies, _ = cluster(brokers, closing, TOPOLOGIES["chain"], options=ADMIN,
                                proxied=[("c", "b")])
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    w = {n: Watcher(nodes[n].port, ["counters/+", "counters/+/state"]) for n in nodes}
    closing.extend(w.values())
    for node, delta in ((a, 10), (b, 20), (c, 30)):
        inc(node, "votes", delta)
        inc(node, "gone", delta)
        inc(node, "quiet", delta)
    for node in nodes.values():
        for name in ("votes", "gone", "quiet"):
            node.wait_total(name, 60, timeout=20)

    proxy = proxies[("c", "b")]
    proxy.cut()
    wait_for(lambda: proxy.connections() == 0, 5, what="c cut off")
    control(a, [{"command": "resetCounter", "name": "votes"}])
    control(b, [{"command": "deleteCounter", "name": "gone"},
                {"command": "deleteCounter", "name": "quiet"}])
    for node in (a, b):
        node.wait_total("votes", 0)
        wait_for(lambda: w[node.name].get("counters/gone") == b"", 10, what="gone cleared")
    inc(c, "votes", 7)   # concurrent with the reset: c has not seen it
    inc(c, "gone", 2)    # concurrent with the delete
    inc(b, "votes", 5)   # after the reset, where it was seen
    c.wait_total("votes", 67)
    a.wait_total("votes", 5)
    assert w["c"].get("counters/quiet") == b"60"  # c still shows what it had

    proxy.heal()
    for name, node in nodes.items():
        node.wait_total("votes", 12, timeout=30)  # 5 + 7: nothing lost, nothing twice
        node.wait_total("gone", 2, timeout=30)    # c's concurrent increment survives the delete
        wait_for(lambda: w[name].get("counters/quiet") == b"" and
                 w[name].get("counters/quiet/state") == b"", 30, what=f"{name}: quiet cleared")
        assert listed(node) == {"votes": 12, "gone": 2}, name
    # an increment after the delete, at the node that was cut off
    inc(c, "quiet", 1)
    for node in nodes.values():
        node.wait_total("quiet", 1, timeout=20)
        assert listed(node) == {"votes": 12, "gone": 2, "quiet": 1}


class Incrementer:
    """One client publishing delta to counters/<name>/inc at QoS 1, one at a
    time, as fast as the PUBACKs come; `acked` sums what was acknowledged."""

    def __init__(self, node, name, delta):
        self.topic, self.delta, self.acked, self.error = f"counters/{name}/inc", delta, 0, None
        self.stop = threading.Event()
        self.c = mqtt.Client(client_id=f"inc-{node.name}", clean_session=True)
        self.c.connect("127.0.0.1", node.port, 30)
        self.c.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            info = self.c.publish(self.topic, str(self.delta), 1)
            info.wait_for_publish(30)
            if not info.is_published():
                self.error = "an increment was not acknowledged within 30 s"
                return
            self.acked += self.delta

    def close(self):
        self.stop.set()
        self.thread.join(40)
        self.c.disconnect()
        self.c.loop_stop()
        assert self.error is None, self.error


def test_resets_and_deletes_racing_increments_through_cuts_count_each_once(brokers, closing):  # noqa: F811
    """A triangle whose two bridges into c and b are cut and healed three
    times while every node takes increments without pause (+1 at a, +3 at b,
    -2 at c) and resets and deletes run at all three, cut off or not. Once
    converged, every node holds the same total, retained and in its state
    document, and every acknowledged increment is in the slots exactly once:
    the replicas' P and N are the sums acknowledged, and the total is what the
    bases (what the resets saw) leave of them."""
    nodes, proxies, _ = cluster(brokers, closing, TOPOLOGIES["triangle"], options=ADMIN,
                                proxied=[("c", "b"), ("a", "c")])
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    w = {n: Watcher(nodes[n].port, ["counters/+", "counters/+/state"]) for n in nodes}
    closing.extend(w.values())
    incs = {n: Incrementer(nodes[n], "race", d) for n, d in (("a", 1), ("b", 3), ("c", -2))}
    closing.extend(incs.values())
    wait_for(lambda: all(i.acked for i in incs.values()), 10, what="increments at every node")
    for _ in range(3):
        for p in proxies.values():
            p.cut()
        wait_for(lambda: all(p.connections() == 0 for p in proxies.values()), 5,
                 what="the bridges cut")
        control(a, [{"command": "resetCounter", "name": "race"}])
        control(c, [{"command": "deleteCounter", "name": "race"}])
        control(b, [{"command": "resetCounter", "name": "race"}])
        for p in proxies.values():
            p.heal()
        time.sleep(0.3)
        control(b, [{"command": "resetCounter", "name": "race"}])
        time.sleep(0.5)
    for i in incs.values():
        i.close()
    acked = {n: i.acked for n, i in incs.items()}

    def converged():
        got = {n: control(node, [{"command": "getCounter", "name": "race"}])[0].get("data")
               for n, node in nodes.items()}
        if not all(got.values()):
            return None
        value = got["a"]["counter"]["value"]
        for n, node in nodes.items():
            state = json.loads(w[n].get("counters/race/state") or b"{}")
            if (got[n]["counter"]["value"], node.total("race"), state.get("value")) != \
                    (value,) * 3:
                return None
        return got
    got = wait_for(converged, 30, interval=0.5, what="every node to show the same total")
    for n, data in got.items():
        replicas = data["replicas"]
        p, n_ = sum(r["p"] for r in replicas), sum(r["n"] for r in replicas)
        assert (p, n_) == (acked["a"] + acked["b"], -acked["c"]), (n, replicas, acked)
        taken = sum(r.get("base_p", 0) - r.get("base_n", 0) for r in replicas)
        assert data["counter"]["value"] == p - n_ - taken, (n, data)
