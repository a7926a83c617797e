#!/usr/bin/env python3
"""Tiers benchmark (issue 14): what one edge costs as the tree grows.

Three hubs (hub1 and hub2 bridged to hub0 with `topic $tally/# both 1`) and E edges per hub
(E = 3 and 15 by default: 9 and 45 edges), each edge a broker with `plugin_opt_role edge` whose
bridge lists its hub and then the next one. Each edge takes 40 QoS 0 increments/s: 20 on
`shared` (written at every edge), 20 over 50 counters of its own, for --seconds, from one paced
loop (bench_scale.PacedLoad); a subscriber at each edge watches `shared`. Printed per size: an
edge's and a hub's replication messages and bytes per second in and out (the `repl` counters of
their `$tally/stats/<node>`, which count UP and DOWN at an edge, and SYNC, DIGEST, presence,
UP and DOWN at a hub), their RSS once settled, the hub's CPU per increment of the whole tree,
and whether `shared` ended exact at hub0 and at every edge. With --failover, hub1 is killed
with -9 in the middle of the load: its edges fail over to hub2, and the totals must still end
exact at hub0, hub2 and every edge. With --mesh, hub2 bridges to hub1 too: a full mesh of hubs,
where each hub hears each change from its writer's hub alone (repl.c, rule 2a), not once per
neighbour.

With --pairs, four hubs in two pairs: hub1 bridged to hub0, hub3 to hub2, and hub2 to the first
pair (hub0, or hub1 while it is down); each edge's backup is the other hub of its pair. With
--groups too, each pair is a group of hubs (plugin_opt_group, README "Groups of hubs"): the
bridge between the pairs carries GSUMs, the groups' viewer sums and stats only, and hub0 holds the other pair's
nodes as one replica. With --regions instead, each hub is a group of its own and each pair a
region (plugin_opt_region, README "Regions: groups of groups"): the bridge between the pairs
carries RSUMs, the regions' viewer sums and stats only, and an edge lists its own hub alone (its failover list
stays in its group). Printed besides: how many slots of `shared` hub0 holds (its state
document's `nodes`).

With --trios, six hubs in two groups of three (plugin_opt_group), each group a full mesh, and one
bridge between the groups (hub3 to hub0, or hub1 while it is down) that carries GSUMs, the groups'
viewer sums and stats: hub1 and hub2 have no bridge out of their group, and take each flood from
the other group once, from hub0 (repl.c, rule 2b); printed for hub1 too.

With --line G, G hubs, each a group of its own, in a line (hub h bridged to hub h-1 with the
bridge between groups), each edge listing its own hub alone: hub0, at the end of the line, takes
the sums of G - 1 groups. With --sums-budget N, every hub runs with plugin_opt_sums_budget N
(README, "Groups of hubs"): what hub0 takes of the other groups' sums stays under N a second
however many groups there are, and the totals come later. Printed besides: how long after the
load every node was exact. With --light too, one more hub in hub0's group, light
(plugin_opt_hub light, README "Light hubs"; hub0 full), bridged to hub0, with its own edges
(which fail over to hub0): printed for it too, with its RSS, CPU and slots of `shared`, which
stay its group's nodes and one rest slot however long the line. With --split instead, the line's
groups go in regions of two consecutive groups (bridges inside a region carry GSUMs and RSUMs,
between regions RSUMs), and hub0's group is two split hubs, hub0 and one more (plugin_opt_hub
split, README "Split hubs"): hub0 holds level 1 (the other group of its region), the other hub
level 2 (the other regions); printed for both, with the levels each holds.

With --churn R, viewers too: at each edge two clients view `presence/home`, and one more views
and leaves one of ten pages R times a second (so that every edge's counts keep changing); hub0
must end counting every edge's viewers of `presence/home`. With --plugin, another build of the
plugin runs (to compare a change with the code before it; --old-bridges for a build before
2026-12-05, whose bridges between groups carry presence/# instead of gviews/# and rviews/#).

Every broker and the load share the machine's cores: figures, not pass/fail, and noisy when
other work runs. Standard library only; needs the plugin built.
"""

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import bench_cluster as bc
import bench_scale as bs
import common

HUBS = 3
PLUGIN = common.PLUGIN  # --plugin
OLD_BRIDGES = False  # --old-bridges
SUMS_BUDGET = 0  # --sums-budget
LIGHT = 0  # --light or --split: one more hub in hub0's group
SPLIT = False  # --split
BETWEEN_GROUPS = ["topic $tally/v1/gsum/# both 1", "topic $tally/v1/gviews/# both 1",
                  "topic $tally/stats/# both 1"]
BETWEEN_REGIONS = ["topic $tally/v1/rsum/# both 1", "topic $tally/v1/rviews/# both 1",
                   "topic $tally/stats/# both 1"]
IN_REGION = BETWEEN_GROUPS + BETWEEN_REGIONS[:2]


def opts(name, edge, group=None, region=None, hub=None):
    o = {"node_id": name, "bridge_clientids": "*-to-*", "max_counters": 100000,
         "sync_interval_ms": 1000, "stats_interval_ms": 1000}
    if hub:
        o["hub"] = hub
    if edge:
        o["role"] = "edge"
    elif SUMS_BUDGET:
        o["sums_budget"] = SUMS_BUDGET
    if group:
        o["group"] = group
    if region:
        o["region"] = region
    return o


def edge_bridge(name, ports):
    return ["connection %s-to-hub" % name,
            "address %s" % " ".join("127.0.0.1:%d" % p for p in ports),
            "clientid %s-to-hub" % name, "topic $tally/up/# out 1",
            "topic $tally/down/%s in 1" % name, "restart_timeout 1 1", "cleansession true",
            "try_private true"]


def own_stats(broker, name):
    """A node's own latest stats, from a collector on that node (edges do not flood theirs)."""
    c = bs.StatsCollector(broker.port, "bench-stats-" + name)
    return c


def edges_under(stack, workdir, tag, per_hub, hubs, hub_list):
    """per_hub edges under each hub h of hubs (hub0, hub1, ...), each bridged to the ports
    hub_list(h) gives in order (its hub first, then its backup, if any)."""
    edges = {}
    for h in range(len(hubs)):
        for k in range(per_hub):
            name = "edge%d" % (h * per_hub + k)
            edges[name] = stack.enter_context(common.Broker(
                workdir, "%s%d-%s" % (tag, per_hub, name), True, opts(name, True),
                extra=edge_bridge(name, hub_list(h)), plugin=PLUGIN))
    return edges


def pairs(stack, workdir, per_hub, groups, regions=False):
    """Four hubs in two pairs, as groups of hubs with `groups`, as two regions of two groups
    of one hub with `regions` (see the docstring)."""
    hubs = {}
    for h in range(4):
        name = "hub%d" % h
        extra = []
        if h % 2:
            extra = bc.bridge_lines("%s-to-hub%d" % (name, h - 1), hubs["hub%d" % (h - 1)].port)
        elif h == 2:
            ports = " ".join("127.0.0.1:%d" % hubs[n].port for n in ("hub0", "hub1"))
            extra = ["connection hub2-to-pair0", "address " + ports, "clientid hub2-to-pair0"]
            extra += (BETWEEN_REGIONS if regions else BETWEEN_GROUPS if groups
                      else ["topic $tally/# both 1"])
            if OLD_BRIDGES:  # an earlier build's viewers cross on presence/
                extra = [t.replace("gviews", "presence").replace("rviews", "presence")
                         for t in extra]
            extra += ["restart_timeout 1 1", "cleansession true", "try_private true"]
        group = "hub%d" % h if regions else "pair%d" % (h // 2) if groups else None
        region = "pair%d" % (h // 2) if regions else None
        hubs[name] = stack.enter_context(common.Broker(
            workdir, "p%d-%s" % (per_hub, name), True, opts(name, False, group, region),
            extra=extra, plugin=PLUGIN))
    return hubs, edges_under(stack, workdir, "p", per_hub, hubs, lambda h: [
        hubs["hub%d" % h].port] + ([] if regions else [hubs["hub%d" % (h ^ 1)].port]))


def trios(stack, workdir, per_hub):
    """Six hubs in two groups of three, each group a full mesh; hub3 bridged to the first group
    (hub0, or hub1 while it is down) with BETWEEN_GROUPS; each edge's backup is the next hub of
    its group (see the docstring)."""
    hubs = {}
    for h in range(6):
        name, first = "hub%d" % h, h - h % 3
        extra = []
        for to in range(first, h):
            extra += bc.bridge_lines("%s-to-hub%d" % (name, to), hubs["hub%d" % to].port)
        if h == 3:
            ports = " ".join("127.0.0.1:%d" % hubs[n].port for n in ("hub0", "hub1"))
            extra += ["connection hub3-to-trio0", "address " + ports, "clientid hub3-to-trio0"]
            extra += BETWEEN_GROUPS + ["restart_timeout 1 1", "cleansession true",
                                       "try_private true"]
        hubs[name] = stack.enter_context(common.Broker(
            workdir, "r%d-%s" % (per_hub, name), True, opts(name, False, "trio%d" % (h // 3)),
            extra=extra, plugin=PLUGIN))
    return hubs, edges_under(stack, workdir, "r", per_hub, hubs, lambda h: [
        hubs["hub%d" % h].port, hubs["hub%d" % (h - h % 3 + (h + 1) % 3)].port])


def line(stack, workdir, per_hub, n):
    """n hubs, each a group of its own, hub h bridged to hub h-1 with BETWEEN_GROUPS (with
    --split, in regions of two groups); per_hub edges under each, listing their own hub alone
    (see the docstring)."""
    hubs = {}
    region = (lambda h: "r%d" % (h // 2)) if SPLIT else (lambda h: None)
    for h in range(n):
        name, extra = "hub%d" % h, []
        if h:
            to = "hub%d" % (h - 1)
            topics = (IN_REGION if h % 2 else BETWEEN_REGIONS) if SPLIT else BETWEEN_GROUPS
            extra = ["connection %s-to-%s" % (name, to), "address 127.0.0.1:%d" % hubs[to].port,
                     "clientid %s-to-%s" % (name, to)] + topics + [
                         "restart_timeout 1 1", "cleansession true", "try_private true"]
        kind = ("split" if SPLIT else "full") if LIGHT and not h else None
        hubs[name] = stack.enter_context(common.Broker(
            workdir, "l%d-%s" % (per_hub, name), True,
            opts(name, False, "g%d" % h, region(h), hub=kind), extra=extra, plugin=PLUGIN))
    if LIGHT:  # hub<n>, light or split, in hub0's group, bridged to it; its edges fail over to hub0
        name = "hub%d" % n
        hubs[name] = stack.enter_context(common.Broker(
            workdir, "l%d-%s" % (per_hub, name), True,
            opts(name, False, "g0", region(0), hub="split" if SPLIT else "light"),
            extra=bc.bridge_lines("%s-to-hub0" % name, hubs["hub0"].port), plugin=PLUGIN))
    return hubs, edges_under(stack, workdir, "l", per_hub, hubs,
                             lambda h: [hubs["hub%d" % k].port for k in (h, 0)[:1 + (h == n)]])


def levels_held(stats, who):
    """', levels [..]' a split hub holds (its stats' group.holds), else ''."""
    g = stats.get(who, {}).get("group", {})
    return ", levels %s" % g["holds"] if g.get("split") else ""


def slots_held(hub, name):
    raw = hub.retained("counters/%s/state" % name, wait=3)
    return len(json.loads(raw)["nodes"]) if raw else 0


def tree(stack, workdir, per_hub, mesh):
    hubs = {}
    for h in range(HUBS):
        name = "hub%d" % h
        extra = []
        for to in range(h if mesh else min(h, 1)):  # to hub0; with --mesh, to every hub before
            extra += bc.bridge_lines("%s-to-hub%d" % (name, to), hubs["hub%d" % to].port)
        hubs[name] = stack.enter_context(common.Broker(
            workdir, "t%d-%s" % (per_hub, name), True, opts(name, False), extra=extra, plugin=PLUGIN))
    edges = edges_under(stack, workdir, "t", per_hub, hubs, lambda h: [
        hubs["hub%d" % h].port, hubs["hub%d" % ((h + 1) % HUBS)].port])
    return hubs, edges


class Churn(threading.Thread):
    """Two viewers of presence/home at each edge, and one that views and leaves one of ten
    pages `rate` times a second at each (raw MQTT clients, paced in one loop)."""

    def __init__(self, edges, rate):
        super().__init__(daemon=True)
        self.viewers = [bc.raw_client(e.port, "bench-view-%s-%d" % (n, k))
                        for n, e in edges.items() for k in range(2)]
        for v in self.viewers:
            v.subscribe("presence/home", qos=0)
        self.churners = [bc.raw_client(e.port, "bench-churn-" + n) for n, e in edges.items()]
        self.rate, self.stopped, self.changes = rate, threading.Event(), 0
        self.start()

    def run(self):
        period, k, viewing = 1.0 / self.rate, 0, [None] * len(self.churners)
        next_at = time.monotonic()
        while not self.stopped.is_set():
            for i, c in enumerate(self.churners):
                if viewing[i]:
                    c.unsubscribe(viewing[i])
                    viewing[i] = None
                else:
                    viewing[i] = "presence/churn%d" % (k % 10)
                    c.subscribe(viewing[i], qos=0)
                self.changes += 1
            k += 1
            next_at += period
            self.stopped.wait(max(0.0, next_at - time.monotonic()))

    def stop(self):
        """Stops the churn; the viewers stay until close."""
        self.stopped.set()
        self.join(10)

    def close(self):
        self.stop()
        for c in self.viewers + self.churners:
            c.close()


def wait_connected(hubs, edges, timeout=120):
    """Until one increment of `warmup` at every edge shows at hub0: every edge is up."""
    for name, e in edges.items():
        conn = bc.raw_client(e.port, "warm-" + name)
        conn.publish("counters/warmup/inc", b"1", qos=1)
        conn.disconnect()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hubs["hub0"].retained("counters/warmup", wait=1) == str(len(edges)):
            return
        time.sleep(0.5)
    raise common.BenchError("not every edge reached the hubs in %d s" % timeout)


def run(workdir, per_hub, args, table):
    n_hubs = 4 if args.pairs else 6 if args.trios else args.line + LIGHT or HUBS
    n_edges = n_hubs * per_hub
    shape = (" in two regions of two groups of one" if args.regions else
             " in two groups of two" if args.groups else " in two pairs") if args.pairs else (
        " in two groups of three, each a full mesh" if args.trios else
        ", each a group, in a line%s%s" % (
            ", sums_budget %d" % SUMS_BUDGET if SUMS_BUDGET else "",
            ", in regions of two, hub0's group two split hubs" if SPLIT else
            ", and a light hub in hub0's group" if LIGHT else "") if args.line else
        " in a full mesh" if args.mesh else "")
    print("\n== %d hubs%s, %d edges (%d a hub), %d inc/s an edge for %d s%s ==" % (
        n_hubs, shape, n_edges, per_hub,
        bs.LEAF_SHARED_RATE + bs.LEAF_OWN_RATE, args.seconds,
        ", hub1 killed in the middle" if args.failover else ""), flush=True)
    with contextlib.ExitStack() as stack:
        hubs, edges = (pairs(stack, workdir, per_hub, args.groups, args.regions) if args.pairs
                       else trios(stack, workdir, per_hub) if args.trios
                       else line(stack, workdir, per_hub, args.line) if args.line
                       else tree(stack, workdir, per_hub, args.mesh))
        wait_connected(hubs, edges)
        collectors = {"hub0": own_stats(hubs["hub0"], "hub0"),
                      "edge0": own_stats(edges["edge0"], "edge0")}
        if args.trios:  # a hub with no bridge out of its group
            collectors["hub1"] = own_stats(hubs["hub1"], "hub1")
        light = "hub%d" % args.line if LIGHT else None
        if light:
            collectors[light] = own_stats(hubs[light], light)
        for c in collectors.values():
            stack.callback(c.stop)
        recorders = {n: bc.TotalRecorder(b.port, "counters/shared", "bench-sub-" + n)
                     for n, b in list(edges.items()) + [("hub0", hubs["hub0"])]}
        for r in recorders.values():
            stack.callback(r.stop)
        churn = Churn(edges, args.churn) if args.churn else None
        if churn:
            stack.callback(churn.close)
        load = bs.PacedLoad(edges, edges, bs.LEAF_SHARED_RATE, bs.LEAF_OWN_RATE)
        stack.callback(load.close)
        cpu0 = hubs["hub0"].cpu_seconds()
        light_cpu0 = hubs[light].cpu_seconds() if light else 0
        result = {}
        runner = threading.Thread(target=lambda: result.update(
            zip(("rate", "shared"), load.run(args.seconds))))
        runner.start()
        time.sleep(min(3.0, args.seconds / 4))
        s1 = {n: c.fresh(n, c.get(n)["uptime_ms"]) for n, c in collectors.items()}
        if args.failover:
            time.sleep(args.seconds / 4)
            hubs["hub1"].proc.kill()
        runner.join()
        ended = time.monotonic()
        s2 = {n: c.get(n) for n, c in collectors.items()}
        cpu = hubs["hub0"].cpu_seconds() - cpu0
        light_cpu = hubs[light].cpu_seconds() - light_cpu0 if light else 0
        rate = result["rate"]
        deadline = time.monotonic() + 60
        wrong = {}
        while time.monotonic() < deadline:
            wrong = {n: r.last() for n, r in recorders.items() if r.last() != result["shared"]}
            if not wrong:
                break
            time.sleep(0.2)
        exact_at = time.monotonic()
        viewers = None
        if churn:
            churn.stop()
            want = str(2 * n_edges)
            # read through +/home: a wildcard, so the reader is no viewer itself
            while time.monotonic() < deadline and hubs["hub0"].retained(
                    "+/home", wait=1) != want:
                time.sleep(0.2)
            viewers = hubs["hub0"].retained("+/home", wait=1)
            print("viewers: %d page changes at the edges; hub0 counts %s of presence/home (%s)" % (
                churn.changes, viewers, "exact" if viewers == want else "NOT exact"))
            if viewers != want:
                wrong["hub0 viewers"] = viewers
        edge_r = bs.rates(s1["edge0"], s2["edge0"], rate)
        hub_r = bs.rates(s1["hub0"], s2["hub0"], rate)
        rss_e = [e.settled_rss(10, 50) for e in list(edges.values())[:3]]
        rss_h = hubs["hub0"].settled_rss(10, 50)
        hub_cpu_us = cpu / (rate * args.seconds) * 1e6
        held = slots_held(hubs["hub0"], "shared")
        print("tree %.0f inc/s; shared = %d sent; %s" % (
            rate, result["shared"], "exact at hub0 and every edge, %.1f s after the load" % (
                exact_at - ended) if not wrong else "NOT exact at %s" % wrong))
        shown = [("edge0", edge_r), ("hub0", hub_r)]
        if args.trios:
            shown.append(("hub1", bs.rates(s1["hub1"], s2["hub1"], rate)))
        if light:
            shown.append((light, bs.rates(s1[light], s2[light], rate)))
        for who, r in shown:
            print("%-6s in %6.0f msg/s %8.1f KB/s | out %6.0f msg/s %8.1f KB/s" % (
                who, r["msgs_in"], r["bytes_in"] / 1000, r["msgs_out"], r["bytes_out"] / 1000))
        for who in ("hub0", "hub1"):
            g, g1 = s2.get(who, {}).get("group"), s1.get(who, {}).get("group")
            if g and g1:  # echoes go only where gaps show sums lost (group.c)
                secs = (s2[who]["uptime_ms"] - s1[who]["uptime_ms"]) / 1000
                print("%s group: took %.0f counters' sums a second from other groups; %d "
                      "announced, %d echoed, %d gaps seen in others' sums, budget held %d times, "
                      "%d asks, %d sent again"
                      % (who, (g["learned"] - g1["learned"]) / secs, g["announced"], g["echoed"],
                         g.get("holes", 0), g.get("budget_held", 0), g.get("wants", 0),
                         g.get("resent", 0)))
        print("RSS: edges %s MB, hub0 %.1f MB; hub0 CPU %.1f us per tree increment; hub0 holds "
              "%d slots of shared%s" % ("/".join("%.1f" % (v / 1e6) for v in rss_e), rss_h / 1e6,
                                        hub_cpu_us, held, levels_held(s2, "hub0")), flush=True)
        if light:
            print("%s hub %s: RSS %.1f MB; CPU %.1f us per tree increment; holds %d slots of "
                  "shared%s" % ("split" if SPLIT else "light", light,
                                hubs[light].settled_rss(10, 50) / 1e6,
                                light_cpu / (rate * args.seconds) * 1e6,
                                slots_held(hubs[light], "shared"), levels_held(s2, light)),
                  flush=True)
        table.append((n_edges, rate, edge_r, hub_r, statistics.median(rss_e), rss_h,
                      hub_cpu_us, not wrong))


def summary(table):
    print("\n== summary ==")
    print("| edges | tree inc/s | edge0 in / out | edge RSS MB | hub0 in / out | hub0 RSS MB "
          "| hub0 CPU us/inc | exact |")
    print("|---|---|---|---|---|---|---|---|")
    for n, rate, e, h, re, rh, cpu, ok in table:
        print("| %d | %.0f | %.0f msg/s %.1f KB/s / %.0f msg/s %.1f KB/s | %.1f | %.0f msg/s "
              "%.1f KB/s / %.0f msg/s %.1f KB/s | %.1f | %.1f | %s |" % (
                  n, rate, e["msgs_in"], e["bytes_in"] / 1000, e["msgs_out"],
                  e["bytes_out"] / 1000, re / 1e6, h["msgs_in"], h["bytes_in"] / 1000,
                  h["msgs_out"], h["bytes_out"] / 1000, rh / 1e6, cpu, "yes" if ok else "NO"))
    if len(table) >= 2:
        a, b = table[0], table[-1]
        traffic = lambda r: r["bytes_in"] + r["bytes_out"]  # noqa: E731
        print("edge0 at %d edges vs %d: traffic x%.2f, RSS x%.2f" % (
            b[0], a[0], traffic(b[2]) / traffic(a[2]), b[4] / a[4]))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-hub", type=int, nargs="+", default=[3, 15], metavar="E")
    p.add_argument("--seconds", type=int, default=15, help="seconds of load per run")
    p.add_argument("--failover", action="store_true", help="kill -9 hub1 in the middle")
    p.add_argument("--mesh", action="store_true",
                   help="bridge hub2 to hub1 too: the hubs in a full mesh")
    p.add_argument("--pairs", action="store_true", help="four hubs in two pairs")
    p.add_argument("--trios", action="store_true",
                   help="six hubs in two groups of three, one bridge between the groups")
    p.add_argument("--groups", action="store_true",
                   help="with --pairs: each pair a group of hubs (plugin_opt_group)")
    p.add_argument("--regions", action="store_true",
                   help="with --pairs: each hub a group, each pair a region (plugin_opt_region)")
    p.add_argument("--churn", type=float, default=0, metavar="R",
                   help="viewers at every edge, one page changing R times a second at each")
    p.add_argument("--line", type=int, default=0, metavar="G",
                   help="G hubs in a line, each a group of its own")
    p.add_argument("--light", action="store_true",
                   help="with --line: a light hub in hub0's group (plugin_opt_hub light)")
    p.add_argument("--split", action="store_true",
                   help="with --line: regions of two groups, hub0's group two split hubs")
    p.add_argument("--sums-budget", type=int, default=0, metavar="N",
                   help="plugin_opt_sums_budget N at every hub")
    p.add_argument("--plugin", default=str(common.PLUGIN), help="the plugin to run")
    p.add_argument("--old-bridges", action="store_true",
                   help="bridges between groups carry presence/# (builds before 2026-12-05)")
    args = p.parse_args()
    global PLUGIN, OLD_BRIDGES, SUMS_BUDGET, LIGHT, SPLIT
    PLUGIN, OLD_BRIDGES, SUMS_BUDGET = args.plugin, args.old_bridges, args.sums_budget
    LIGHT, SPLIT = int(args.light or args.split), args.split
    if (args.light or args.split) and not args.line:
        p.error("--light and --split need --line")
    if args.light and args.split:
        p.error("--light or --split, not both")
    if args.line and (args.line < 2 or args.pairs or args.trios or args.mesh or args.failover):
        p.error("--line G: G at least 2, alone (no --pairs, --trios, --mesh or --failover)")
    if args.trios and (args.pairs or args.mesh or args.failover):
        p.error("--trios alone (no --pairs, --mesh or --failover)")
    if (args.groups or args.regions) and not args.pairs:
        p.error("--groups and --regions need --pairs")
    if args.groups and args.regions:
        p.error("--groups or --regions, not both")
    if args.regions and args.failover:
        p.error("--regions has groups of one hub: no hub for hub1's edges to fail over to")
    return args


def bench(workdir, args):
    if not Path(PLUGIN).is_file():
        raise common.BenchError("%s not built" % PLUGIN)
    table = []
    for n in args.per_hub:
        run(workdir, n, args, table)
    summary(table)
    if not all(row[-1] for row in table):
        raise common.BenchError("a total was not exact")


def main():
    args = parse_args()
    return common.run_bench("tally-bench-tiers-", lambda workdir: bench(workdir, args))


if __name__ == "__main__":
    sys.exit(main())
