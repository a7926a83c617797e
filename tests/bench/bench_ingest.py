#!/usr/bin/env python3
"""Ingest throughput: QoS 1 increments per second into plain mosquitto and into tally.

One tally-load client publishes --count increments with --inflight unanswered at most, spread
over K counters, and the clock stops at the last PUBACK. Plain and tally runs alternate
(plain, tally, plain, tally, ...) with a fresh broker each time, so drift on the machine hits
both alike; the table gives each side's median and the ratio tally/plain.

Until build/plugin/mosquitto_tally.so exists only the plain side runs.
For K of 10,000 and more (--floor-min), where each counter comes round less often than once per
publish_interval_ms, two reference plugins run too (tests/bench/floor_plugin.c): "floor" does only
the publishing the contract asks for such an increment, a retained total and a retained state
document, and "floor-tot" the total alone. floor/plain is the most any plugin keeping the
contract can reach there; tally/floor is what tally's own work costs on top.

With --subscriber, a mosquitto_sub subscribed to counters/+ (QoS 0, output to /dev/null) runs
beside every broker: every total is then watched and must be published within
publish_interval_ms, state documents are not watched, so the floor is "floor-tot" alone.
Without it nothing is watched, and tally refreshes totals under unwatched_publish_budget.

Client and broker share the machine's cores: on a 2-core machine the rates are a lower bound
of what the broker alone could take, and anything else running skews them. The broker's CPU
time per increment (us/msg) is steadier under such noise, and is tabulated too.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import common

PLUGIN_OPTS = {"node_id": "bench", "max_counters": 2000000}
KINDS = ["plain", "tally", "floor", "floor-tot"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200000, help="increments per run")
    p.add_argument("--inflight", type=int, default=common.BENCH_INFLIGHT)
    p.add_argument("--rounds", type=int, default=3, help="runs per broker kind and K")
    p.add_argument("--counters", type=int, nargs="+", default=[1, 100000], metavar="K")
    p.add_argument("--plain-only", action="store_true", help="skip tally even if it is built")
    p.add_argument("--floor-min", type=int, default=10000, metavar="K",
                   help="run the reference plugins for K at least this")
    p.add_argument("--subscriber", action="store_true",
                   help="a counters/+ subscriber watches every total during each run")
    return p.parse_args()


def start_subscriber(port):
    """mosquitto_sub on counters/+, its subscription in place before the load starts."""
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t",
                            "counters/+", "-q", "0"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    if sub.poll() is not None:
        raise common.BenchError("mosquitto_sub exited with %d" % sub.returncode)
    return sub


def one_run(workdir, load, kind, k, args):
    """tally-load's report of one run against a fresh broker of this kind, plus "cpu_us": the
    broker's CPU time per increment during the run."""
    plugin, opts = {
        "plain": (None, None),
        "tally": (common.PLUGIN, PLUGIN_OPTS),
        "floor": (common.FLOOR_PLUGIN, {"state": "true"}),
        "floor-tot": (common.FLOOR_PLUGIN, {"state": "false"}),
    }[kind]
    with common.Broker(workdir, "%s-k%d" % (kind, k), with_plugin=plugin is not None,
                       plugin_opts=opts, plugin=plugin) as broker:
        sub = start_subscriber(broker.port) if args.subscriber else None
        try:
            cpu_before = broker.cpu_seconds()
            report = common.run_load(load, broker.port, [
                "--count", args.count, "--qos", 1, "--inflight", args.inflight, "--counters", k])
            report["cpu_us"] = (broker.cpu_seconds() - cpu_before) * 1e6 / args.count
        finally:
            if sub:
                sub.terminate()
                sub.wait(10)
    return report


def ratio_columns(kinds):
    """(numerator, denominator) pairs worth printing for these broker kinds."""
    pairs = [(kind, "plain") for kind in kinds if kind != "plain"]
    if "floor" in kinds and "tally" in kinds:
        pairs.append(("tally", "floor"))
    elif "floor-tot" in kinds and "tally" in kinds:
        pairs.append(("tally", "floor-tot"))
    return pairs


def print_table(reports):
    """Per K, the median of each figure per broker kind, and the ratios between kinds."""
    kinds = [kind for kind in KINDS if any(kind in by_kind for by_kind in reports.values())]
    pairs = ratio_columns(kinds)
    for key, unit, fmt in (("rate", "msg/s", "%16.0f"), ("cpu_us", "us/msg", "%16.2f")):
        print()
        print("%-8s" % "K" + "".join("%16s" % ("%s %s" % (kind, unit)) for kind in kinds) +
              "".join("%16s" % ("%s/%s" % pair) for pair in pairs))
        for k, by_kind in reports.items():
            med = {kind: statistics.median(r[key] for r in runs) for kind, runs in by_kind.items()}
            row = "%-8d" % k + "".join(fmt % med[kind] if kind in med else "%16s" % "-"
                                       for kind in kinds)
            row += "".join("%16.2f" % (med[a] / med[b]) if a in med and b in med else "%16s" % "-"
                           for a, b in pairs)
            print(row)


def bench(workdir, args):
    load = common.tally_load(workdir)
    base = common.broker_kinds(args.plain_only)
    floors = [] if args.plain_only or not common.FLOOR_PLUGIN.is_file() else ["floor", "floor-tot"]
    if args.subscriber and floors:
        floors = ["floor-tot"]  # counters/+ watches totals, not state documents
    reports = {}
    for k in args.counters:
        kinds = base + (floors if k >= args.floor_min else [])
        reports[k] = {kind: [] for kind in kinds}
        for rnd in range(1, args.rounds + 1):
            for kind in kinds:
                report = one_run(workdir, load, kind, k, args)
                reports[k][kind].append(report)
                print("K=%-7d round %d %-9s %8.0f msg/s %6.2f s  broker %5.2f us/msg  "
                      "ack p50 %.1f ms p99 %.1f ms" % (
                          k, rnd, kind, report["rate"], report["seconds"], report["cpu_us"],
                          report["ack_p50_ms"], report["ack_p99_ms"]), flush=True)
    print_table(reports)
    print("\nload average at the end: %.2f %.2f %.2f (%d cores)" % (os.getloadavg() + (os.cpu_count(),)))


def main():
    args = parse_args()
    print("%d QoS 1 increments per run, %d in flight, 1 client, %d rounds%s; load average %.2f %.2f "
          "%.2f" % ((args.count, args.inflight, args.rounds,
                     ", a counters/+ subscriber" if args.subscriber else "") + os.getloadavg()),
          flush=True)
    return common.run_bench("tally-bench-ingest-", lambda workdir: bench(workdir, args))


if __name__ == "__main__":
    sys.exit(main())
