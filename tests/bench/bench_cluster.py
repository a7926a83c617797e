#!/usr/bin/env python3
"""Cluster benchmarks: convergence latency, replication cost, ingest with replication on.

Three tally nodes bridged in a chain, a <- b <- c (b bridges to a, c to b), on 127.0.0.1.

1. Convergence latency. A publisher sends QoS 0 increments (+1) to one counter at node a at a
   steady 10,000/s, in batches of 100 every 10 ms, and notes when each batch left; a subscriber
   on every node notes when that node's retained total first reaches each batch's running sum.
   Latency of a batch at a node = first time the node's total includes it - time it was sent.
   The publisher and subscribers are raw MQTT over sockets (tests/rawmqtt.py), not tally-load:
   tally-load keeps a steady rate but does not say when each message left, and the figure needs
   that time. The budget printed beside each node is publish_interval_ms + 100 ms per bridge hop.
2. Replication cost. tally-load sends 50,000 QoS 1 increments/s to a, over 10 counters and then
   over 100,000 counters; a's $tally/stats repl msgs_out/bytes_out and `applied` are sampled
   over a window inside the run, giving replication messages and bytes per second next to the
   increments per second actually applied.
3. Ingest. 200,000 QoS 1 increments, 500 in flight (tally-load), into plain mosquitto, into one
   tally node alone, and into node a of the chain; rounds alternate. The ratio is against plain.
   For the chain, the time from the last PUBACK until node c's total shows all of them.

Client, brokers and replication share the machine's cores, so the rates are lower bounds.
Figures, not pass/fail. Standard library only; needs the plugin and tally-load built.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import common

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rawmqtt import RawClient  # noqa: E402

PUBLISH_INTERVAL_MS = 100
HOPS = {"a": 0, "b": 1, "c": 2}


# ---- raw MQTT 3.1.1 (tests/rawmqtt.py), keepalive off: runs are short --------------------

def raw_client(port, client_id):
    try:
        return RawClient(port, client_id, version=4, keepalive=0)
    except (OSError, ConnectionError) as e:
        raise common.BenchError("CONNECT to %d refused: %s" % (port, e))


class TotalRecorder(threading.Thread):
    """Records (monotonic time, value) of every total published on one topic at one node."""

    def __init__(self, port, topic, client_id):
        super().__init__(daemon=True)
        self.conn = raw_client(port, client_id)
        if self.conn.subscribe(topic, qos=0) != 0:
            raise common.BenchError("subscription to %s refused" % topic)
        self.conn.sock.settimeout(None)
        # A retained total may come with the SUBACK: rawmqtt keeps it in messages.
        self.arrivals = [(time.monotonic(), int(m[1])) for m in self.conn.messages]
        self.start()

    def run(self):
        try:
            while True:
                kind, flags, body = self.conn.recv()
                if kind == 0x30:
                    _, payload, _ = self.conn.take_publish(flags, body)
                    self.arrivals.append((time.monotonic(), int(payload)))
        except (OSError, ValueError):
            return

    def last(self):
        return self.arrivals[-1][1] if self.arrivals else None

    def stop(self):
        self.conn.close()
        self.join(5)


# ---- the cluster -----------------------------------------------------------------------

def node_opts(name, extra=None):
    opts = {"node_id": name, "bridge_clientids": "*-to-*", "sync_interval_ms": 1000,
            "stats_interval_ms": 500, "publish_interval_ms": PUBLISH_INTERVAL_MS,
            "max_counters": 2000000}
    opts.update(extra or {})
    return opts


def bridge_lines(name, port):
    return ["connection %s" % name, "address 127.0.0.1:%d" % port, "clientid %s" % name,
            "topic $tally/# both 1", "restart_timeout 1 1", "cleansession true",
            "try_private true"]


def stats(broker, name):
    raw = broker.retained("$tally/stats/" + name, wait=3)
    if raw is None:
        raise common.BenchError("no $tally/stats/%s at %s" % (name, name))
    return json.loads(raw)


def fresh_stats(broker, name, after_seq=None, timeout=5):
    """Stats published after after_seq (or after the current ones)."""
    if after_seq is None:
        after_seq = stats(broker, name)["seq"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = stats(broker, name)
        if s["seq"] > after_seq:
            return s
        time.sleep(0.1)
    raise common.BenchError("stats of %s did not move for %d s" % (name, timeout))


@contextlib.contextmanager
def chain(workdir, tag):
    """Nodes a <- b <- c, started, each having heard from the others."""
    nodes = {}
    with contextlib.ExitStack() as stack:
        prev = None
        for name in ("a", "b", "c"):
            extra = bridge_lines("%s-to-%s" % (name, prev[0]), prev[1].port) if prev else []
            b = common.Broker(workdir, "%s-%s" % (tag, name), with_plugin=True,
                              plugin_opts=node_opts(name), extra=extra)
            nodes[name] = stack.enter_context(b)
            prev = (name, b)
        deadline = time.monotonic() + 20
        while True:
            if all(stats(nodes[n], n)["nodes"]["alive"] >= len(nodes) - 1 for n in nodes):
                break
            if time.monotonic() > deadline:
                raise common.BenchError("chain %s: nodes did not hear from each other" % tag)
            time.sleep(0.2)
        yield nodes


def percentile(values, p):
    """Nearest rank, the definition of the load clients (clients/percentile.c)."""
    s = sorted(values)
    return s[max(0, (p * len(s) + 99) // 100 - 1)]


# ---- 1. convergence latency --------------------------------------------------------------

def paced_publish(port, topic, rate, seconds, batch):
    """QoS 0 +1 increments at rate/s in batches; returns [(running sum, time sent)]."""
    conn = raw_client(port, "bench-lat-pub")
    chunk = conn.publish_packet(topic, b"1", qos=0) * batch
    period = batch / rate
    marks, sent = [], 0
    t0 = time.monotonic()
    for k in range(int(seconds * rate / batch)):
        delay = t0 + k * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        conn.sock.sendall(chunk)
        sent += batch
        marks.append((sent, time.monotonic()))
    elapsed = time.monotonic() - t0
    time.sleep(0.2)  # let the socket drain before DISCONNECT
    conn.disconnect()
    return marks, sent / elapsed


def latencies(marks, arrivals):
    """Per mark, ms from sending until the node's total first reached the mark's sum."""
    out, i = [], 0
    for value, sent_at in marks:
        while i < len(arrivals) and arrivals[i][1] < value:
            i += 1
        if i == len(arrivals):
            break
        out.append((max(arrivals[i][0], sent_at) - sent_at) * 1000)
    return out


def bench_latency(workdir, args, summary):
    print("\n== 1. convergence latency: chain a <- b <- c, %d increments/s at a for %d s ==" % (
        args.rate, args.seconds), flush=True)
    with chain(workdir, "lat") as nodes:
        recorders = {n: TotalRecorder(b.port, "counters/lat", "bench-lat-sub-" + n)
                     for n, b in nodes.items()}
        marks, rate = paced_publish(nodes["a"].port, "counters/lat/inc", args.rate, args.seconds,
                                    100)
        total = marks[-1][0]
        deadline = time.monotonic() + 15
        while any(r.last() != total for r in recorders.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for r in recorders.values():
            r.stop()
        print("sent %d increments at %.0f/s; final totals %s" % (
            total, rate, {n: r.last() for n, r in recorders.items()}))
        print("%-5s %5s %8s %8s %8s %10s %8s" % ("node", "hops", "p50 ms", "p99 ms", "max ms",
                                                "budget ms", "marks"))
        for n, r in recorders.items():
            lat = latencies(marks, r.arrivals)
            if len(lat) < len(marks):
                raise common.BenchError("node %s never showed %d (last %s)" % (
                    n, total, r.last()))
            budget = PUBLISH_INTERVAL_MS + 100 * HOPS[n]
            p50, p99 = percentile(lat, 50), percentile(lat, 99)
            print("%-5s %5d %8.1f %8.1f %8.1f %10d %8d" % (n, HOPS[n], p50, p99, max(lat), budget,
                                                          len(lat)))
            summary.append(("latency p50/p99 at %s (%d hops)" % (n, HOPS[n]),
                            "%.0f / %.0f ms" % (p50, p99), "budget %d ms" % budget))


# ---- 2. replication cost -----------------------------------------------------------------

def bench_cost(workdir, load, args, summary):
    print("\n== 2. replication cost: %d increments/s at a (QoS 1), chain a <- b <- c ==" %
          args.cost_rate, flush=True)
    print("%-10s %12s %12s %12s %12s %14s" % ("counters", "applied/s", "repl msg/s",
                                              "repl KB/s", "bytes/inc", "tally-load/s"))
    for k in args.cost_counters:
        with chain(workdir, "cost%d" % k) as nodes:
            a = nodes["a"]
            count = int(args.cost_rate * args.cost_seconds)
            cmd = [str(load), "--host", "127.0.0.1", "--port", str(a.port), "--count", str(count),
                   "--qos", "1", "--inflight", str(common.BENCH_INFLIGHT), "--counters", str(k),
                   "--rate", str(args.cost_rate), "--timeout", str(args.cost_seconds * 4)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            try:
                time.sleep(min(2.0, args.cost_seconds / 4))
                s1 = fresh_stats(a, "a")
                time.sleep(args.cost_seconds / 2)
                s2 = fresh_stats(a, "a")
                out, err = proc.communicate(timeout=args.cost_seconds * 4 + 30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            lines = out.strip().splitlines()
            report = json.loads(lines[-1]) if lines else {"rate": 0}
            secs = (s2["uptime_ms"] - s1["uptime_ms"]) / 1000
            applied = (s2["applied"] - s1["applied"]) / secs
            msgs = (s2["repl"]["msgs_out"] - s1["repl"]["msgs_out"]) / secs
            kbytes = (s2["repl"]["bytes_out"] - s1["repl"]["bytes_out"]) / secs / 1000
            per_inc = kbytes * 1000 / applied if applied else float("nan")
            print("%-10d %12.0f %12.1f %12.1f %12.2f %14.0f" % (k, applied, msgs, kbytes, per_inc,
                                                                report["rate"]), flush=True)
            if err.strip():
                print("  tally-load: %s" % err.strip().splitlines()[-1])
            summary.append(("replication at a, %d counters" % k,
                            "%.0f msg/s, %.1f KB/s" % (msgs, kbytes),
                            "%.0f inc/s applied, %.2f B/inc" % (applied, per_inc)))


# ---- 3. ingest with replication on --------------------------------------------------------

def ingest_once(workdir, load, kind, rnd, args):
    """(tally-load report, seconds until c shows the total or None)."""
    load_args = ["--count", args.ingest_count, "--qos", 1, "--inflight", common.BENCH_INFLIGHT]
    tag = "ing-%s-%d" % (kind, rnd)
    if kind == "replicated":
        with chain(workdir, tag) as nodes:
            report = common.run_load(load, nodes["a"].port, load_args)
            t0 = time.monotonic()
            while nodes["c"].retained("counters/c0", wait=2) != str(args.ingest_count):
                if time.monotonic() - t0 > 30:
                    raise common.BenchError("c did not reach %d" % args.ingest_count)
                time.sleep(0.05)
            return report, time.monotonic() - t0
    opts = node_opts("solo") if kind == "tally" else None
    with common.Broker(workdir, tag, with_plugin=(kind == "tally"), plugin_opts=opts) as b:
        return common.run_load(load, b.port, load_args), None


def bench_ingest(workdir, load, args, summary):
    print("\n== 3. ingest: %d QoS 1 increments, %d in flight, %d rounds ==" % (
        args.ingest_count, common.BENCH_INFLIGHT, args.rounds), flush=True)
    kinds = ("plain", "tally", "replicated")
    rates = {k: [] for k in kinds}
    lags = []
    for rnd in range(args.rounds):
        for kind in kinds:
            report, lag = ingest_once(workdir, load, kind, rnd, args)
            rates[kind].append(report["rate"])
            extra = ""
            if lag is not None:
                lags.append(lag)
                extra = "  c complete %.2f s after the last PUBACK" % lag
            print("round %d %-10s %8.0f msg/s  ack p50 %.1f ms p99 %.1f ms%s" % (
                rnd + 1, kind, report["rate"], report["ack_p50_ms"], report["ack_p99_ms"], extra),
                flush=True)
    plain = statistics.median(rates["plain"])
    print("%-28s %12s %8s" % ("broker", "median msg/s", "ratio"))
    for kind, label in (("plain", "plain mosquitto"), ("tally", "tally, one node"),
                        ("replicated", "tally, node a of a chain")):
        m = statistics.median(rates[kind])
        print("%-28s %12.0f %8.2f" % (label, m, m / plain))
        summary.append(("ingest " + label, "%.0f msg/s" % m, "ratio %.2f" % (m / plain)))
    summary.append(("chain: c complete after last PUBACK", "%.2f s" % statistics.median(lags),
                    "median of %d" % len(lags)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=10000, help="latency run: increments/s at a")
    p.add_argument("--seconds", type=int, default=10, help="latency run: seconds of load")
    p.add_argument("--cost-rate", type=int, default=50000, help="cost runs: increments/s")
    p.add_argument("--cost-seconds", type=int, default=10, help="cost runs: seconds of load")
    p.add_argument("--cost-counters", type=int, nargs="+", default=[10, 100000], metavar="K")
    p.add_argument("--ingest-count", type=int, default=200000)
    p.add_argument("--rounds", type=int, default=2, help="ingest rounds per broker kind")
    p.add_argument("--parts", nargs="+", choices=["latency", "cost", "ingest"],
                   default=["latency", "cost", "ingest"], help="which benchmarks to run")
    return p.parse_args()


def bench(workdir, args):
    if not common.PLUGIN.is_file():
        raise common.BenchError("%s not built" % common.PLUGIN)
    load = common.tally_load(workdir)
    summary = []
    started = time.monotonic()
    if "latency" in args.parts:
        bench_latency(workdir, args, summary)
    if "cost" in args.parts:
        bench_cost(workdir, load, args, summary)
    if "ingest" in args.parts:
        bench_ingest(workdir, load, args, summary)
    print("\n== summary (%.0f s) ==" % (time.monotonic() - started))
    width = max(len(s[0]) for s in summary)
    for what, figure, note in summary:
        print("%-*s  %-24s %s" % (width, what, figure, note))


def main():
    args = parse_args()
    return common.run_bench("tally-bench-cluster-", lambda workdir: bench(workdir, args))


if __name__ == "__main__":
    sys.exit(main())
