#!/usr/bin/env python3
"""Ingest throughput: QoS 1 increments per second into plain mosquitto and into tally.

One tally-load client publishes --count increments with --inflight unanswered at most, spread
over K counters, and the clock stops at the last PUBACK. Plain and tally runs alternate
(plain, tally, plain, tally, ...) with a fresh broker each time, so drift on the machine hits
both alike; the table gives each side's median and the ratio tally/plain.

Until build/plugin/mosquitto_tally.so exists only the plain side runs.
Client and broker share the machine's cores: on a 2-core machine the rates are a lower bound
of what the broker alone could take, and anything else running skews them. The broker's CPU
time per increment (us/msg) is steadier under such noise, and is tabulated too.
"""

import argparse
import statistics
import sys

import common

PLUGIN_OPTS = {"node_id": "bench", "max_counters": 2000000}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200000, help="increments per run")
    p.add_argument("--inflight", type=int, default=common.BENCH_INFLIGHT)
    p.add_argument("--rounds", type=int, default=3, help="runs per broker kind and K")
    p.add_argument("--counters", type=int, nargs="+", default=[1, 100000], metavar="K")
    p.add_argument("--plain-only", action="store_true", help="skip tally even if it is built")
    return p.parse_args()


def one_run(workdir, load, kind, k, args):
    """tally-load's report of one run against a fresh broker of this kind, plus "cpu_us": the
    broker's CPU time per increment during the run."""
    with common.Broker(workdir, "%s-k%d" % (kind, k), with_plugin=(kind == "tally"),
                       plugin_opts=PLUGIN_OPTS) as broker:
        cpu_before = broker.cpu_seconds()
        report = common.run_load(load, broker.port, [
            "--count", args.count, "--qos", 1, "--inflight", args.inflight, "--counters", k])
        report["cpu_us"] = (broker.cpu_seconds() - cpu_before) * 1e6 / args.count
    return report


def print_table(kinds, reports):
    """Per K, the median of each figure per broker kind, and tally/plain when both ran."""
    for key, unit, fmt in (("rate", "msg/s", "%14.0f"), ("cpu_us", "us/msg", "%14.2f")):
        print()
        header = "%-8s" % "K" + "".join("%14s" % ("%s %s" % (kind, unit)) for kind in kinds)
        print(header + ("%13s" % "tally/plain" if len(kinds) == 2 else ""))
        for k, by_kind in reports.items():
            medians = [statistics.median(r[key] for r in by_kind[kind]) for kind in kinds]
            row = "%-8d" % k + "".join(fmt % m for m in medians)
            print(row + ("%13.2f" % (medians[1] / medians[0]) if len(kinds) == 2 else ""))


def bench(workdir, args):
    load = common.tally_load(workdir)
    kinds = common.broker_kinds(args.plain_only)
    reports = {}
    for k in args.counters:
        reports[k] = {kind: [] for kind in kinds}
        for rnd in range(1, args.rounds + 1):
            for kind in kinds:
                report = one_run(workdir, load, kind, k, args)
                reports[k][kind].append(report)
                print("K=%-7d round %d %-5s %8.0f msg/s %6.2f s  broker %5.2f us/msg  "
                      "ack p50 %.1f ms p99 %.1f ms" % (
                          k, rnd, kind, report["rate"], report["seconds"], report["cpu_us"],
                          report["ack_p50_ms"], report["ack_p99_ms"]), flush=True)
    print_table(kinds, reports)


def main():
    args = parse_args()
    print("%d QoS 1 increments per run, %d in flight, 1 client, %d rounds" % (
        args.count, args.inflight, args.rounds), flush=True)
    return common.run_bench("tally-bench-ingest-", lambda workdir: bench(workdir, args))


if __name__ == "__main__":
    sys.exit(main())
