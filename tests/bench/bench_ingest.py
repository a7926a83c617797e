#!/usr/bin/env python3
"""Ingest throughput: QoS 1 increments per second into plain mosquitto and into tally.

One tally-load client publishes --count increments with --inflight unanswered at most, spread
over K counters, and the clock stops at the last PUBACK. Plain and tally runs alternate
(plain, tally, plain, tally, ...) with a fresh broker each time, so drift on the machine hits
both alike; the table gives each side's median and the ratio tally/plain.

Until build/plugin/mosquitto_tally.so exists only the plain side runs.
Client and broker share the machine's cores: on a 2-core machine the figures are a lower bound
of what the broker alone could take.
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
    """tally-load's report of one run against a fresh broker of this kind."""
    with common.Broker(workdir, "%s-k%d" % (kind, k), with_plugin=(kind == "tally"),
                       plugin_opts=PLUGIN_OPTS) as broker:
        report = common.run_load(load, broker.port, [
            "--count", args.count, "--qos", 1, "--inflight", args.inflight, "--counters", k])
    return report


def print_table(kinds, rates):
    print()
    header = "%-8s" % "K" + "".join("%14s" % ("%s msg/s" % kind) for kind in kinds)
    if len(kinds) == 2:
        header += "%13s" % "tally/plain"
    print(header)
    for k, by_kind in rates.items():
        medians = [statistics.median(by_kind[kind]) for kind in kinds]
        row = "%-8d" % k + "".join("%14.0f" % m for m in medians)
        if len(kinds) == 2:
            row += "%13.2f" % (medians[1] / medians[0])
        print(row)


def bench(workdir, args):
    load = common.tally_load(workdir)
    kinds = common.broker_kinds(args.plain_only)
    rates = {}
    for k in args.counters:
        rates[k] = {kind: [] for kind in kinds}
        for rnd in range(1, args.rounds + 1):
            for kind in kinds:
                report = one_run(workdir, load, kind, k, args)
                rates[k][kind].append(report["rate"])
                print("K=%-7d round %d %-5s %8.0f msg/s  %6.2f s  ack p50 %.1f ms p99 %.1f ms" % (
                    k, rnd, kind, report["rate"], report["seconds"], report["ack_p50_ms"],
                    report["ack_p99_ms"]), flush=True)
    print_table(kinds, rates)


def main():
    args = parse_args()
    print("%d QoS 1 increments per run, %d in flight, 1 client, %d rounds" % (
        args.count, args.inflight, args.rounds), flush=True)
    return common.run_bench("tally-bench-ingest-", lambda workdir: bench(workdir, args))


if __name__ == "__main__":
    sys.exit(main())
