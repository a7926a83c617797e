#!/usr/bin/env python3
"""Broker memory per counter: tally with 1,000,000 counters against plain mosquitto retaining
1,000,000 messages.

tally: a broker with the plugin takes one increment on each of N distinct counters; once its
stats topic $tally/stats/bench reports N counters (or 60 s pass), the growth of the broker's
VmRSS divided by N is what one counter costs the whole broker: the plugin's table plus the
retained totals and states Mosquitto stores for it.
plain: the same client publishes N retained messages counters/c<i> = 1 to a plain mosquitto,
which shows how much of that is Mosquitto's own retained storage.
The plugin's table alone is measured by a C bench that links it; this one looks from outside.

Until build/plugin/mosquitto_tally.so exists only the plain side runs.
"""

import argparse
import json
import sys
import time

import common

PLUGIN_OPTS = {"node_id": "bench", "max_counters": 2000000}
STATS_TOPIC = "$tally/stats/bench"
STATS_WAIT_S = 60
LOAD_TIMEOUT_S = 300


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1000000, help="distinct counters")
    p.add_argument("--plain-only", action="store_true", help="skip tally even if it is built")
    return p.parse_args()


def stats_counters(broker, want):
    """Waits until the stats report `want` counters or STATS_WAIT_S pass; returns the last
    figure seen, or None when no stats arrived at all."""
    deadline = time.monotonic() + STATS_WAIT_S
    seen = None
    while time.monotonic() < deadline:
        payload = broker.retained(STATS_TOPIC, wait=2)
        if payload:
            try:
                seen = int(json.loads(payload)["counters"])
            except (ValueError, KeyError, TypeError):
                seen = None
            if seen is not None and seen >= want:
                return seen
        time.sleep(1)
    return seen


def measure(workdir, load, kind, count):
    """Loads `count` counters (tally) or retained messages (plain); returns the figures."""
    with_plugin = kind == "tally"
    with common.Broker(workdir, kind, with_plugin=with_plugin,
                       plugin_opts=PLUGIN_OPTS) as broker:
        before = broker.settled_rss(10, 100)
        args = ["--count", count, "--counters", count, "--qos", 1,
                "--inflight", common.BENCH_INFLIGHT]
        if not with_plugin:
            args += ["--topic-format", "counters/c%u", "--retain"]
        report = common.run_load(load, broker.port, args, timeout=LOAD_TIMEOUT_S)
        counters = stats_counters(broker, count) if with_plugin else count
        after = broker.settled_rss(10, 100)
    return {"kind": kind, "before": before, "after": after, "rate": report["rate"],
            "counters": counters}


def print_table(rows, count):
    mib = 1024.0 * 1024.0
    print()
    print("%-8s %11s %11s %14s %12s %10s" % (
        "broker", "before MiB", "after MiB", "bytes/counter", "load msg/s", "counters"))
    for r in rows:
        print("%-8s %11.1f %11.1f %14.0f %12.0f %10s" % (
            r["kind"], r["before"] / mib, r["after"] / mib, (r["after"] - r["before"]) / count,
            r["rate"], "none seen" if r["counters"] is None else r["counters"]))
    if len(rows) == 2:
        extra = (rows[1]["after"] - rows[1]["before"]) - (rows[0]["after"] - rows[0]["before"])
        print("tally minus plain: %.0f bytes per counter" % (extra / count))


def bench(workdir, count, plain_only):
    load = common.tally_load(workdir)
    kinds = common.broker_kinds(plain_only)
    rows = []
    for kind in kinds:
        rows.append(measure(workdir, load, kind, count))
        print("%s done" % kind, flush=True)
    print_table(rows, count)
    if rows[-1]["counters"] is not None and rows[-1]["counters"] < count:
        print("note: stats reported only %s of %d counters after %d s" % (
            rows[-1]["counters"], count, STATS_WAIT_S))


def main():
    args = parse_args()
    print("%d distinct counters, one QoS 1 increment each" % args.count, flush=True)
    return common.run_bench("tally-bench-memory-",
                            lambda workdir: bench(workdir, args.count, args.plain_only))


if __name__ == "__main__":
    sys.exit(main())
