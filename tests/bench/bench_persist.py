#!/usr/bin/env python3
"""Persistence costs: ingest with state on disk, restart time, and disk bytes.

1. Ingest: --count QoS 1 increments (--inflight unanswered) into plain mosquitto, tally in
   memory, and tally with plugin_opt_state_dir at the default fsync_interval_ms (1000),
   alternated round by round with a fresh broker each time; medians and ratios to plain.
2. Restart: --restart-counters counters (one increment each) into a persistent node; kill -9,
   start again (the log is replayed), SIGTERM (which writes the snapshot), start again; each
   start is timed until the broker listens and until the last counter's total is retained.
3. Disk: bytes per increment in state.log before compaction, and snapshot bytes per counter.

Client and brokers share the machine: see bench_ingest.py for what that means for the rates.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

KINDS = ("plain", "tally", "tally+disk")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200000, help="increments per ingest run")
    p.add_argument("--inflight", type=int, default=common.BENCH_INFLIGHT)
    p.add_argument("--counters", type=int, default=1, metavar="K", help="ingest spreads over K")
    p.add_argument("--rounds", type=int, default=3, help="ingest runs per broker kind")
    p.add_argument("--fsync-interval-ms", type=int, default=1000,
                   help="tally+disk's plugin_opt_fsync_interval_ms (the default is 1000)")
    p.add_argument("--restart-counters", type=int, default=1000000)
    p.add_argument("--skip-ingest", action="store_true")
    p.add_argument("--skip-restart", action="store_true")
    return p.parse_args()


def plugin_opts(kind, state_dir, args, max_counters):
    opts = {"node_id": "bench", "max_counters": max_counters}
    if kind == "tally+disk":
        opts["state_dir"] = state_dir
        opts["fsync_interval_ms"] = args.fsync_interval_ms
        # No compaction during a run: the log's growth is one of the figures.
        opts["snapshot_interval_ms"] = 86400000
    return opts


def file_size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


def ingest_run(workdir, load, kind, rnd, args):
    state_dir = Path(workdir) / ("ingest-state-%d" % rnd)
    opts = plugin_opts(kind, state_dir, args, max(args.counters, 1000))
    with common.Broker(workdir, "ingest-%s-%d" % (kind.replace("+", "-"), rnd),
                       with_plugin=(kind != "plain"), plugin_opts=opts) as broker:
        cpu_before = broker.cpu_seconds()
        report = common.run_load(load, broker.port, [
            "--count", args.count, "--qos", 1, "--inflight", args.inflight,
            "--counters", args.counters])
        report["cpu_us"] = (broker.cpu_seconds() - cpu_before) * 1e6 / args.count
        report["log_bytes"] = file_size(state_dir / "state.log")
    return report


def bench_ingest(workdir, load, args):
    print("== ingest: %d QoS 1 increments, %d in flight, K=%d, %d rounds, fsync_interval_ms %d"
          % (args.count, args.inflight, args.counters, args.rounds, args.fsync_interval_ms),
          flush=True)
    runs = {kind: [] for kind in KINDS}
    for rnd in range(1, args.rounds + 1):
        for kind in KINDS:
            r = ingest_run(workdir, load, kind, rnd, args)
            runs[kind].append(r)
            print("round %d %-10s %8.0f msg/s %6.2f s  broker %5.2f us/msg  ack p50 %.1f ms "
                  "p99 %.1f ms%s" % (rnd, kind, r["rate"], r["seconds"], r["cpu_us"],
                                     r["ack_p50_ms"], r["ack_p99_ms"],
                                     "  log %d B" % r["log_bytes"] if r["log_bytes"] else ""),
                  flush=True)
    rate = {k: statistics.median(r["rate"] for r in runs[k]) for k in KINDS}
    cpu = {k: statistics.median(r["cpu_us"] for r in runs[k]) for k in KINDS}
    print()
    print("%-12s %12s %10s %14s" % ("broker", "msg/s", "us/msg", "rate vs plain"))
    for k in KINDS:
        print("%-12s %12.0f %10.2f %14.2f" % (k, rate[k], cpu[k], rate[k] / rate["plain"]))
    print("tally+disk / tally (cost of persistence): %.2f" % (rate["tally+disk"] / rate["tally"]))
    log_bytes = statistics.median(r["log_bytes"] for r in runs["tally+disk"])
    print("state.log: %.1f bytes per increment before compaction (%d increments, K=%d)"
          % ((log_bytes - 12) / args.count, args.count, args.counters), flush=True)


def wait_listening(broker, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.proc.poll() is not None:
            raise common.BenchError("broker exited during restart, see %s" % broker.log)
        try:
            socket.create_connection(("127.0.0.1", broker.port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise common.BenchError("broker did not listen within %d s" % timeout)


def stop_timed(broker, timeout=300):
    """SIGTERM (the plugin writes its snapshot) and the seconds until the process is gone."""
    t = time.monotonic()
    broker.proc.terminate()
    try:
        broker.proc.wait(timeout)
    except subprocess.TimeoutExpired as e:
        raise common.BenchError("broker did not stop within %d s" % timeout) from e
    return time.monotonic() - t


def timed_start(workdir, name, opts, last):
    """Starts a persistent broker; returns it with the seconds until it listened and until
    the total of the last counter was retained again."""
    broker = common.Broker(workdir, name, with_plugin=True, plugin_opts=opts)
    t = time.monotonic()
    broker.proc = subprocess.Popen(["mosquitto", "-c", str(broker.conf)], cwd=workdir,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(broker, 600)
    listening = time.monotonic() - t
    sub = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t",
                          last, "-C", "1", "-W", "600"], capture_output=True, text=True)
    retained = time.monotonic() - t
    if sub.stdout.strip() != "1":
        broker.stop()
        raise common.BenchError("%s after restart: %r" % (last, sub.stdout))
    return broker, listening, retained


def bench_restart(workdir, load, args):
    n = args.restart_counters
    print("\n== restart with %d counters on disk" % n, flush=True)
    state_dir = Path(workdir) / "restart-state"
    opts = {"node_id": "bench", "state_dir": state_dir, "max_counters": max(n, 1000)}
    last = "counters/c%d" % (n - 1)
    broker = common.Broker(workdir, "restart-load", with_plugin=True, plugin_opts=opts)
    with broker:
        t = time.monotonic()
        common.run_load(load, broker.port, ["--count", n, "--qos", 1, "--inflight",
                                            args.inflight, "--counters", n], timeout=900)
        print("loaded %d counters in %.1f s" % (n, time.monotonic() - t))
        if broker.retained(last, wait=60) != "1":
            raise common.BenchError("%s is not 1 after the load" % last)
        broker.proc.kill()
        broker.proc.wait()
    log_bytes = file_size(state_dir / "state.log")
    print("state.log before compaction: %d bytes, %.1f bytes per increment"
          % (log_bytes, (log_bytes - 12) / n))

    for how in ("kill -9, replaying state.log", "SIGTERM, loading state.snap"):
        broker, listening, retained = timed_start(workdir, "restart-" + how[:4], opts, last)
        try:
            print("restart after %s: listening after %.2f s, %s retained after %.2f s, "
                  "RSS %.0f MB" % (how, listening, last, retained, broker.rss_bytes() / 1e6),
                  flush=True)
        finally:
            seconds = stop_timed(broker)
        print("SIGTERM to exit (final snapshot): %.2f s" % seconds)
        snap = file_size(state_dir / "state.snap")
        print("state.snap: %d bytes, %.1f bytes per counter; state.log after: %d bytes"
              % (snap, snap / n, file_size(state_dir / "state.log")), flush=True)


def bench(workdir, args):
    load = common.tally_load(workdir)
    if not common.PLUGIN.is_file():
        raise common.BenchError("%s is not built" % common.PLUGIN)
    if not args.skip_ingest:
        bench_ingest(workdir, load, args)
    if not args.skip_restart:
        bench_restart(workdir, load, args)


def main():
    args = parse_args()
    return common.run_bench("tally-bench-persist-", lambda workdir: bench(workdir, args))


if __name__ == "__main__":
    sys.exit(main())
