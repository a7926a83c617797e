#!/usr/bin/env python3
"""Scale benchmark: what replication costs as the cluster grows (issue 12).

1. Star. A hub and N leaves (N = 8, 24, 48 by default), each leaf bridged to the hub with
   `topic $tally/# both 1`. Each leaf takes 40 QoS 0 increments/s: 20 on the counter `shared`,
   20 spread over 50 counters of its own, for --seconds. One process drives every leaf with a
   paced loop (raw MQTT sockets, one per leaf, a batch every 50 ms), far below what it could
   send, so the rate is the one asked for. Printed per N: the hub's and one leaf's replication
   messages and bytes per second, in and out, and per increment of the whole cluster (from the
   `repl` counters of `$tally/stats/<node>`, which count every `$tally/` message: SYNC, DIGEST,
   presence heartbeats and flooded stats alike); repairs (`repl.repaired`, summed over every
   node, for the whole run); the hub's CPU per cluster increment; convergence of `shared` at the
   hub (1 hop from every writer) and at a leaf (2 hops from the other writers); each broker's RSS.
2. Chain of 5. n0 <- n1 <- n2 <- n3 <- n4 (each bridged to the one before). n0 takes 100
   increments/s on `shared`, every node 20/s over 50 counters of its own. Printed: convergence
   p50/p99 of `shared` at each hop, and each node's replication bytes per second.

Convergence of a batch at a node = first time the node's retained total of `shared` reaches the
running sum of increments sent up to that batch, minus the time the batch was sent.

Every broker, the load client and the subscribers share the machine's cores: with 48 leaves on
2 shared cores the figures are noisy, and worse when other work runs. Figures, not pass/fail.
Standard library only; needs the plugin built.
"""

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time

import bench_cluster as bc
import common

LEAF_SHARED_RATE = 20
LEAF_OWN_RATE = 20
OWN_COUNTERS = 50
TICK_S = 0.05


def opts(name):
    return {"node_id": name, "bridge_clientids": "*-to-*", "max_counters": 100000}


class StatsCollector(threading.Thread):
    """Keeps the latest `$tally/stats/<node>` of every node, as one node sees them all."""

    def __init__(self, port, client_id):
        super().__init__(daemon=True)
        self.conn = bc.raw_client(port, client_id)
        self.latest = {}
        self.lock = threading.Lock()
        if self.conn.subscribe("$tally/stats/+", qos=0) != 0:
            raise common.BenchError("subscription to $tally/stats/+ refused")
        self.conn.sock.settimeout(None)
        for _, payload, _ in self.conn.messages:
            self.keep(payload)
        self.start()

    def keep(self, payload):
        s = json.loads(payload)
        with self.lock:
            self.latest[s["node"]] = s

    def run(self):
        try:
            while True:
                kind, flags, body = self.conn.recv()
                if kind == 0x30:
                    self.keep(self.conn.take_publish(flags, body)[1])
        except (OSError, ValueError, ConnectionError):
            return

    def get(self, node):
        with self.lock:
            return self.latest.get(node)

    def fresh(self, node, after_uptime_ms, timeout=12):
        """Stats of node published after its uptime after_uptime_ms."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.get(node)
            if s and s["uptime_ms"] > after_uptime_ms:
                return s
            time.sleep(0.05)
        raise common.BenchError("no fresh stats of %s" % node)

    def stop(self):
        self.conn.close()
        self.join(5)


class PacedLoad:
    """Sends the per-leaf load to every writer from one thread, in batches every TICK_S.
    shared_at: the writers that take increments of `shared` (shared_rate/s each)."""

    def __init__(self, writers, shared_at, shared_rate, own_rate):
        self.conns = {n: bc.raw_client(b.port, "load-" + n) for n, b in writers.items()}
        self.shared_at = set(shared_at)
        self.shared_rate, self.own_rate = shared_rate, own_rate
        self.marks = []  # (running sum of shared sent, monotonic time)
        self.sent = 0

    def run(self, seconds):
        ticks = int(seconds / TICK_S)
        any_conn = next(iter(self.conns.values()))
        shared_inc = any_conn.publish_packet("counters/shared/inc", b"1", qos=0)
        own = {n: [any_conn.publish_packet("counters/%s-c%d/inc" % (n, k), b"1", qos=0)
                   for k in range(OWN_COUNTERS)] for n in self.conns}
        shared_total = 0
        t0 = time.monotonic()
        for k in range(ticks):
            delay = t0 + k * TICK_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # increments due by the end of this tick, so fractional rates come out exact
            n_shared = int((k + 1) * TICK_S * self.shared_rate) - int(k * TICK_S * self.shared_rate)
            n_own = int((k + 1) * TICK_S * self.own_rate) - int(k * TICK_S * self.own_rate)
            for name, conn in self.conns.items():
                chunk = b""
                if name in self.shared_at:
                    chunk += shared_inc * n_shared
                    shared_total += n_shared
                for j in range(n_own):
                    chunk += own[name][(k * n_own + j) % OWN_COUNTERS]
                    self.sent += 1
                if chunk:
                    conn.sock.sendall(chunk)
            self.sent += n_shared * len(self.shared_at)
            self.marks.append((shared_total, time.monotonic()))
        elapsed = time.monotonic() - t0
        return self.sent / elapsed, shared_total

    def close(self):
        for conn in self.conns.values():
            conn.disconnect()


def wait_heard(collector, names, timeout):
    """Until every node's stats count every other node alive (they list only neighbours)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = True
        for n in names:
            s = collector.get(n)
            if not s or s["nodes"]["alive"] < len(names) - 1:
                ok = False
                break
        if ok:
            return
        time.sleep(0.2)
    raise common.BenchError("the nodes did not all hear from each other in %d s" % timeout)


def wait_settled(collector, names, timeout):
    """Until no node's stats say all they know for folding (fold.c): a cluster that has just
    started exchanges its members' lives once; what is measured is the steady state after."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if all((collector.get(n) or {}).get("fold", {}).get("full") is False for n in names):
            print("fold membership settled %.0f s after every node was heard" % (
                time.monotonic() - started))
            return
        time.sleep(0.5)
    raise common.BenchError("folding's membership exchange did not settle in %d s" % timeout)


def rates(s1, s2, cluster_rate):
    secs = (s2["uptime_ms"] - s1["uptime_ms"]) / 1000
    if secs <= 0:
        raise common.BenchError("no stats published in the window: run longer (--seconds)")
    out = {}
    for k in ("msgs_in", "bytes_in", "msgs_out", "bytes_out"):
        out[k] = (s2["repl"][k] - s1["repl"][k]) / secs
    out["in_per_inc"] = out["bytes_in"] / cluster_rate
    out["out_per_inc"] = out["bytes_out"] / cluster_rate
    return out


def conv(marks, recorder):
    lat = bc.latencies(marks, recorder.arrivals)
    if len(lat) < len(marks):
        raise common.BenchError("a node never showed %d (last %s)" % (marks[-1][0],
                                                                       recorder.last()))
    return bc.percentile(lat, 50), bc.percentile(lat, 99)


def measure(nodes, collector, load, recorders, seconds):
    """Runs the load; returns (cluster rate, shared total, stats before/after per node, CPU s)."""
    before = {n: collector.get(n) for n in nodes}
    cpu0 = {n: b.cpu_seconds() for n, b in nodes.items()}
    result = {}
    runner = threading.Thread(target=lambda: result.update(zip(("rate", "shared"),
                                                               load.run(seconds))))
    runner.start()
    time.sleep(min(3.0, seconds / 4))
    # The replication window: from stats published after the load warmed up to the last
    # stats published while it still ran.
    watched = [n for n in ("hub", "leaf0") if n in nodes]
    now = {n: collector.get(n)["uptime_ms"] for n in watched}
    s1 = {n: collector.fresh(n, now[n]) for n in watched}
    runner.join()
    s2 = {n: collector.get(n) for n in s1}
    cpu = {n: b.cpu_seconds() - cpu0[n] for n, b in nodes.items()}
    deadline = time.monotonic() + 30
    while any(r.last() != result["shared"] for r in recorders.values()):
        if time.monotonic() > deadline:
            raise common.BenchError("shared did not converge: %s != %d" % (
                {n: r.last() for n, r in recorders.items()}, result["shared"]))
        time.sleep(0.05)
    return result, before, s1, s2, cpu


def star(workdir, n_leaves, args, table):
    print("\n== star: hub + %d leaves, %d inc/s per leaf for %d s ==" % (
        n_leaves, LEAF_SHARED_RATE + LEAF_OWN_RATE, args.seconds), flush=True)
    with contextlib.ExitStack() as stack:
        hub = stack.enter_context(common.Broker(workdir, "s%d-hub" % n_leaves, True,
                                                opts("hub")))
        nodes = {"hub": hub}
        for i in range(n_leaves):
            name = "leaf%d" % i
            nodes[name] = stack.enter_context(common.Broker(
                workdir, "s%d-%s" % (n_leaves, name), True, opts(name),
                extra=bc.bridge_lines("%s-to-hub" % name, hub.port)))
        collector = StatsCollector(hub.port, "bench-stats")
        stack.callback(collector.stop)
        wait_heard(collector, list(nodes), 60 + n_leaves)
        wait_settled(collector, list(nodes), 120)
        recorders = {n: bc.TotalRecorder(nodes[n].port, "counters/shared", "bench-sub-" + n)
                     for n in ("hub", "leaf0")}
        for r in recorders.values():
            stack.callback(r.stop)
        leaves = {n: b for n, b in nodes.items() if n != "hub"}
        load = PacedLoad(leaves, leaves, LEAF_SHARED_RATE, LEAF_OWN_RATE)
        stack.callback(load.close)
        result, before, s1, s2, cpu = measure(nodes, collector, load, recorders, args.seconds)
        cluster_rate = result["rate"]
        hub_r = rates(s1["hub"], s2["hub"], cluster_rate)
        leaf_r = rates(s1["leaf0"], s2["leaf0"], cluster_rate)
        time.sleep(5.5)  # every node's last stats, repairs of the tail included
        repaired = sum(collector.get(n)["repl"]["repaired"] - before[n]["repl"]["repaired"]
                       for n in nodes)
        hub_p = conv(load.marks, recorders["hub"])
        leaf_p = conv(load.marks, recorders["leaf0"])
        rss = {n: b.rss_bytes() for n, b in nodes.items()}
        leaf_rss = sorted(v for n, v in rss.items() if n != "hub")
        hub_cpu_us = cpu["hub"] / (cluster_rate * args.seconds) * 1e6
        print("cluster %.0f inc/s; shared = %d on hub and leaf0" % (cluster_rate,
                                                                    result["shared"]))
        for who, r in (("hub", hub_r), ("leaf0", leaf_r)):
            print("%-6s in %7.0f msg/s %9.1f KB/s %7.1f B/inc | out %7.0f msg/s %9.1f KB/s "
                  "%7.1f B/inc" % (who, r["msgs_in"], r["bytes_in"] / 1000, r["in_per_inc"],
                                   r["msgs_out"], r["bytes_out"] / 1000, r["out_per_inc"]))
        print("repairs (all nodes, whole run): %d" % repaired)
        print("convergence of shared: hub (1 hop) p50 %.0f p99 %.0f ms; leaf0 (2 hops) p50 %.0f "
              "p99 %.0f ms" % (hub_p + leaf_p))
        print("hub CPU %.0f us per cluster increment; RSS hub %.1f MB, leaves %.1f-%.1f MB "
              "(median %.1f)" % (hub_cpu_us, rss["hub"] / 1e6, leaf_rss[0] / 1e6,
                                 leaf_rss[-1] / 1e6, statistics.median(leaf_rss) / 1e6),
              flush=True)
        table.append((n_leaves, cluster_rate, hub_r, leaf_r, repaired, hub_p, leaf_p,
                      rss["hub"], statistics.median(leaf_rss), hub_cpu_us))


def chain5(workdir, args):
    print("\n== chain of 5: n0 <- n1 <- n2 <- n3 <- n4; 100 inc/s on shared at n0, 20/s own "
          "at each, %d s ==" % args.seconds, flush=True)
    with contextlib.ExitStack() as stack:
        nodes, prev = {}, None
        for i in range(5):
            name = "n%d" % i
            extra = bc.bridge_lines("%s-to-%s" % (name, prev), nodes[prev].port) if prev else []
            nodes[name] = stack.enter_context(common.Broker(workdir, "c5-" + name, True,
                                                            opts(name), extra=extra))
            prev = name
        collector = StatsCollector(nodes["n0"].port, "bench-stats")
        stack.callback(collector.stop)
        wait_heard(collector, list(nodes), 60)
        recorders = {n: bc.TotalRecorder(b.port, "counters/shared", "bench-sub-" + n)
                     for n, b in nodes.items()}
        for r in recorders.values():
            stack.callback(r.stop)
        load = PacedLoad(nodes, ["n0"], 100, LEAF_OWN_RATE)
        stack.callback(load.close)
        result, before, _, _, cpu = measure(nodes, collector, load, recorders, args.seconds)
        time.sleep(5.5)
        print("cluster %.0f inc/s; shared = %d everywhere" % (result["rate"], result["shared"]))
        print("%-4s %5s %8s %8s %14s %14s %9s %8s" % ("node", "hops", "p50 ms", "p99 ms",
                                                       "repl in B/s", "repl out B/s", "repairs",
                                                       "RSS MB"))
        for i, (n, b) in enumerate(nodes.items()):
            p50, p99 = conv(load.marks, recorders[n])
            s0, s = before[n], collector.get(n)
            secs = (s["uptime_ms"] - s0["uptime_ms"]) / 1000
            print("%-4s %5d %8.0f %8.0f %14.0f %14.0f %9d %8.1f" % (
                n, i, p50, p99, (s["repl"]["bytes_in"] - s0["repl"]["bytes_in"]) / secs,
                (s["repl"]["bytes_out"] - s0["repl"]["bytes_out"]) / secs,
                s["repl"]["repaired"] - s0["repl"]["repaired"], b.rss_bytes() / 1e6), flush=True)


def summary(table):
    print("\n== summary: replication per increment of the cluster ==")
    print("| leaves | cluster inc/s | hub in | hub B/inc in/out | leaf in | leaf B/inc in/out "
          "| repairs | shared p50/p99 hub, leaf (ms) | RSS hub / leaf MB | hub CPU us/inc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, rate, h, l, rep, hp, lp, rh, rl, cpu in table:
        print("| %d | %.0f | %.0f msg/s, %.1f KB/s | %.0f / %.0f | %.0f msg/s, %.1f KB/s | "
              "%.0f / %.0f | %d | %.0f/%.0f, %.0f/%.0f | %.1f / %.1f | %.0f |" % (
                  n, rate, h["msgs_in"], h["bytes_in"] / 1000, h["in_per_inc"],
                  h["out_per_inc"], l["msgs_in"], l["bytes_in"] / 1000, l["in_per_inc"],
                  l["out_per_inc"], rep, hp[0], hp[1], lp[0], lp[1], rh / 1e6, rl / 1e6, cpu))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leaves", type=int, nargs="*", default=[8, 24, 48], metavar="N",
                   help="star sizes to run (none: only the chain)")
    p.add_argument("--seconds", type=int, default=15, help="seconds of load per run")
    p.add_argument("--no-chain", action="store_true", help="skip the chain of 5")
    return p.parse_args()


def bench(workdir, args):
    if not common.PLUGIN.is_file():
        raise common.BenchError("%s not built" % common.PLUGIN)
    table = []
    for n in args.leaves:
        star(workdir, n, args, table)
    if not args.no_chain:
        chain5(workdir, args)
    if table:
        summary(table)


def main():
    args = parse_args()
    return common.run_bench("tally-bench-scale-", lambda workdir: bench(workdir, args))


if __name__ == "__main__":
    sys.exit(main())
