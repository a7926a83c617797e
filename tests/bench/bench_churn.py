#!/usr/bin/env python3
"""Broker memory under client churn: tally against plain mosquitto, side by side.

For --minutes (default 5), two brokers, one with the plugin and one without, take the same churn
at the same fixed rate: short-lived clients that connect (MQTT v5 or 3.1.1), increment
counters/<name>/inc, view one or two pages (subscribe to presence/<page>), subscribe to
counters/<name>, sometimes leave a page, and disconnect or drop the socket without DISCONNECT.
Each broker's churn runs in its own process, so neither driver slows the other. Every 30 s the
bench prints each broker's VmRSS and what it has churned; at the end a table of RSS at start,
after the warm-up (the first 30 s), at the end, and the growth after the warm-up per connection.
For tally it also checks that every increment was counted and that no viewer is left.

Pages and names come from bounded sets (--pages, --names), so the retained totals and counts
stop growing once each has been seen: what grows after the warm-up is what churn leaks.
--pages 0 gives every view a page of its own, which shows the cost of each page ever viewed.

Until build/plugin/mosquitto_tally.so exists only the plain side runs.
"""

import argparse
import json
import multiprocessing
import os
import random
import sys
import threading
import time

import common

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rawmqtt import RawClient  # noqa: E402

REPORT_EVERY_S = 30
MIB = 1024.0 * 1024.0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5, help="churn duration (5)")
    p.add_argument("--rate", type=int, default=300,
                   help="short-lived connections a second, per broker (300)")
    p.add_argument("--workers", type=int, default=4, help="client threads per broker (4)")
    p.add_argument("--pages", type=int, default=1000,
                   help="distinct pages viewed; 0 = a new page every view (1000)")
    p.add_argument("--names", type=int, default=100, help="distinct counters (100)")
    p.add_argument("--plain-only", action="store_true", help="skip tally even if it is built")
    return p.parse_args()


# ---- the churn -----------------------------------------------------------------------------

def one_client(port, rnd, cid, pages, names, serial):
    """One short-lived client; returns the number of pages it viewed."""
    c = RawClient(port, cid, rnd.choice((4, 5)), keepalive=30)
    name = "churn%d" % rnd.randrange(names)
    count = rnd.choice((1, 2))
    if pages:
        viewed = ["presence/pg%d" % rnd.randrange(pages) for _ in range(count)]
    else:
        viewed = ["presence/%s-%d" % (cid, i) for i in range(count)]
    rc = c.publish("counters/%s/inc" % name, "1")
    if rc >= 0x80:
        raise common.BenchError("%s: increment refused with 0x%02x" % (cid, rc))
    for page in viewed:
        c.subscribe(page)
    c.subscribe("counters/" + name)
    if rnd.random() < 0.3:
        c.unsubscribe(viewed[0])
    if serial % 4 == 3:
        c.close()
    else:
        c.disconnect()
    return len(viewed)


def worker(port, w, args, per_worker_rate, stop, totals, lock, errors):
    rnd = random.Random(w)
    start = time.monotonic()
    i = 0
    while not stop.is_set():
        due = start + i / per_worker_rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(min(delay, 0.5))
            continue
        i += 1
        try:
            views = one_client(port, rnd, "churn-%d-%d" % (w, i), args.pages, args.names, i)
        except (OSError, common.BenchError) as e:
            errors.put("%s worker %d: %s" % (port, w, e))
            stop.set()
            return
        with lock:
            totals[0] += 1
            totals[1] += 1
            totals[2] += views


def drive(port, args, stop, totals, errors):
    """A process of worker threads churning one broker until stop is set."""
    lock = threading.Lock()
    local = [0, 0, 0]

    def publish_totals():
        with lock:
            for k in range(3):
                totals[k] = local[k]

    threads = [threading.Thread(target=worker, args=(port, w, args, args.rate / args.workers,
                                                      stop, local, lock, errors))
               for w in range(args.workers)]
    for t in threads:
        t.start()
    while not stop.wait(0.5):
        publish_totals()
    for t in threads:
        t.join(60)
    publish_totals()


# ---- the bench -----------------------------------------------------------------------------

def tally_checks(broker, increments, names):
    """For the plugin: no viewer left (stats), every increment counted (retained totals)."""
    viewers = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        raw = broker.retained("$tally/stats/bench", wait=2)
        viewers = json.loads(raw).get("viewers") if raw else None
        if viewers == 0:
            break
        time.sleep(0.5)
    counted = 0
    for k in range(names):
        v = broker.retained("counters/churn%d" % k, wait=1)
        counted += int(v) if v else 0
    return {"viewers_left": viewers, "counted": counted, "lost": increments - counted}


def bench(workdir, args):
    kinds = common.broker_kinds(args.plain_only)
    brokers = [common.Broker(workdir, kind, with_plugin=kind == "tally",
                             plugin_opts={"node_id": "bench", "stats_interval_ms": 1000})
               for kind in kinds]
    for b in brokers:
        b.__enter__()
    try:
        run(brokers, args)
    finally:
        for b in brokers:
            b.stop()


def run(brokers, args):
    errors = multiprocessing.Queue()
    stop = multiprocessing.Event()
    rows = {b.name: {"start": b.rss_bytes()} for b in brokers}
    totals = {b.name: multiprocessing.Array("q", 3) for b in brokers}
    procs = [multiprocessing.Process(target=drive, args=(b.port, args, stop, totals[b.name],
                                                          errors)) for b in brokers]
    for p in procs:
        p.start()
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    print("%6s  %s" % ("time", "  ".join("%-8s %9s %8s" % (b.name, "RSS MiB", "conns")
                                          for b in brokers)), flush=True)
    next_report = t0 + REPORT_EVERY_S
    try:
        while time.monotonic() < end and not stop.is_set():
            stop.wait(min(1.0, max(0.0, next_report - time.monotonic())))
            if time.monotonic() >= next_report:
                elapsed = time.monotonic() - t0
                line = []
                for b in brokers:
                    rss = b.rss_bytes()
                    if "warm" not in rows[b.name]:
                        rows[b.name]["warm"] = rss
                        rows[b.name]["warm_conns"] = totals[b.name][0]
                    line.append("%-8s %9.2f %8d" % (b.name, rss / MIB, totals[b.name][0]))
                print("%5.0fs  %s" % (elapsed, "  ".join(line)), flush=True)
                next_report += REPORT_EVERY_S
    finally:
        stop.set()
        for p in procs:
            p.join(120)
    if not errors.empty():
        raise common.BenchError(errors.get())
    time.sleep(2)  # the last disconnects and the plugin's coalesced publishes
    for b in brokers:
        row = rows[b.name]
        row["end"] = b.rss_bytes()
        row["conns"], row["incs"], row["views"] = list(totals[b.name])
        row.setdefault("warm", row["start"])
        row.setdefault("warm_conns", 0)
        if b.name == "tally":
            row.update(tally_checks(b, row["incs"], args.names))
    print_table(brokers, rows, time.monotonic() - t0)


def print_table(brokers, rows, seconds):
    print()
    print("%-7s %8s %10s %8s %9s %10s %9s %10s %11s" % (
        "broker", "conns", "increments", "views", "start MiB", "warm MiB", "end MiB",
        "growth KiB", "B/conn"))
    for b in brokers:
        r = rows[b.name]
        growth = r["end"] - r["warm"]
        measured = max(r["conns"] - r["warm_conns"], 1)
        print("%-7s %8d %10d %8d %9.2f %10.2f %9.2f %+10.0f %11.1f" % (
            b.name, r["conns"], r["incs"], r["views"], r["start"] / MIB, r["warm"] / MIB,
            r["end"] / MIB, growth / 1024.0, growth / measured))
    print("over %.0f s; warm = RSS after the first %d s; growth = end minus warm" % (
        seconds, REPORT_EVERY_S))
    if "tally" in rows:
        r = rows["tally"]
        print("tally: %d of %d increments counted, viewers left: %s" % (
            r["counted"], r["incs"], r["viewers_left"]))


def main():
    args = parse_args()
    print("churn for %.1f min at %d connections/s per broker, %d workers, %s pages, %d counters"
          % (args.minutes, args.rate, args.workers, args.pages or "a new page every view",
             args.names), flush=True)
    return common.run_bench("tally-bench-churn-", lambda workdir: bench(workdir, args))


if __name__ == "__main__":
    sys.exit(main())
