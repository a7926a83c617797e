#!/usr/bin/env python3
"""Live viewers on WebSockets: 10,000 tally-wsload viewers of one page on a broker with the plugin
against the same broker config without it (plain mosquitto), in one run.

For each broker:
  connect   p50/p99 of WebSocket connect + CONNECT + SUBSCRIBE (tally-wsload's connect_ms)
  memory    growth of the broker's VmRSS from before the viewers connect to after, per viewer
  counter   one counter update fanned out to every viewer: tally gets one increment on
            counters/<name>/inc, plain gets the value published retained on counters/<name>;
            the spread (each viewer's receipt minus the first receipt) and the time since the
            publish (wall clock, same machine), p50/p99
  churn     waves of --wave clients that connect, view presence/churn and leave, --parallel at a
            time, while the 10,000 viewers stay; a wave leaves once all its clients view:
            joins+leaves per second until the count settles, and (tally) whether presence/churn
            is back to 0 and presence/p is still exactly the viewer count at the end

With the plugin every viewer also receives the count on presence/p each time it changes (up to
once per publish_interval_ms while viewers arrive), which plain mosquitto does not send: that
fan-out, not the plugin's own work, is most of tally's extra connect time.

Needs RLIMIT_NOFILE above viewers + parallel x wave (the broker holds a socket per client).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import common

WSLOAD = common.REPO / "build" / "clients" / "tally-wsload"
PLUGIN_OPTS = {"node_id": "bench", "stats_interval_ms": 1000}
COUNTER = "hits"
CONNECT_BUDGET_S = 35
SETTLE_S = 10
WAVE_LIMIT_S = 30  # a wave that is not all viewing by then fails the bench


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--viewers", type=int, default=10000, help="WebSocket viewers")
    p.add_argument("--wave", type=int, default=1000, help="clients per churn wave")
    p.add_argument("--waves", type=int, default=6, help="churn waves")
    p.add_argument("--parallel", type=int, default=3, help="churn waves run at a time")
    p.add_argument("--plain-only", action="store_true", help="skip tally even if it is built")
    return p.parse_args()


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise common.BenchError("RLIMIT_NOFILE hard limit %d < %d needed" % (hard, need))
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def ws_broker(workdir, kind):
    ws_port = common.free_port()
    extra = ["listener %d 127.0.0.1" % ws_port, "protocol websockets", "socket_domain ipv4",
             "max_queued_messages 100000"]
    b = common.Broker(workdir, kind, with_plugin=(kind == "tally"), plugin_opts=PLUGIN_OPTS,
                      extra=extra)
    b.ws_port = ws_port
    return b


def wsload_cmd(broker, *args):
    return [str(WSLOAD), "--port", str(broker.ws_port), "--json", *map(str, args)]


def wait_line(proc, marker, deadline):
    """Reads the load's stdout until a line containing marker; returns the lines read."""
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise common.BenchError("tally-wsload never printed %r; last: %r" % (marker, lines[-3:]))


def final_report(proc, timeout):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        raise common.BenchError("tally-wsload did not stop by itself") from e
    lines = out.strip().splitlines()
    if not lines:
        raise common.BenchError("tally-wsload printed nothing: " + err.strip())
    return json.loads(lines[-1])


def publish_update(broker, kind, value):
    """One counter update: tally takes an increment, plain gets the total retained."""
    if kind == "tally":
        cmd = ["-t", "counters/%s/inc" % COUNTER, "-n"]
    else:
        cmd = ["-t", "counters/%s" % COUNTER, "-r", "-m", str(value)]
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1"] + cmd,
                   check=True, timeout=10)


def retained_presence(broker, page):
    """presence/<page> read through the filter +/<page>: a wildcard, so not a viewer itself, that
    matches only that topic, so mosquitto_sub can stop at the first (retained) message."""
    return broker.retained("+/" + page, wait=2)


def wait_presence(broker, page, want, timeout):
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = retained_presence(broker, page)
        if seen == str(want):
            return True, seen
        time.sleep(0.2)
    return False, seen


def churn(broker, kind, wave, waves, parallel):
    """Runs waves of viewers, parallel at a time: each wave's clients connect and view, and leave
    with DISCONNECT (SIGTERM to the load) once all of them view. Returns (ops/s, ok, detail)."""
    start = time.monotonic()
    ops = joined = failures = 0
    for first in range(0, waves, parallel):
        procs = [subprocess.Popen(
            wsload_cmd(broker, "--clients", wave, "--page", "churn", "--keepalive", 30,
                       "--client-prefix", "churn%d" % i, "--duration", WAVE_LIMIT_S),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(first, min(first + parallel, waves))]
        try:
            for proc in procs:
                wait_line(proc, "connected=%d subscribed=%d" % (wave, wave),
                          start + WAVE_LIMIT_S * (first // parallel + 1))
        finally:
            for proc in procs:
                proc.terminate()
        for proc in procs:
            report = final_report(proc, 30)
            joined += report["subscribed"]
            ops += report["subscribed"] * 2
            failures += report["failures"]
    detail = "joined %d/%d, failures=%d" % (joined, wave * waves, failures)
    if kind != "tally":
        return ops / (time.monotonic() - start), None, detail
    ok, seen = wait_presence(broker, "churn", 0, 15)
    elapsed = time.monotonic() - start
    return ops / elapsed, ok and joined == wave * waves, detail + ", presence/churn=%s" % seen


def run_one(workdir, kind, args):
    fig = {}
    with ws_broker(workdir, kind) as broker:
        publish_update(broker, kind, 1)  # the counter exists before anyone watches it
        rss_before = broker.settled_rss(3, 200)
        pub_at_ms = int(time.time() * 1000) + CONNECT_BUDGET_S * 1000
        duration = CONNECT_BUDGET_S + 15 + args.waves * 2 + 30
        proc = subprocess.Popen(
            wsload_cmd(broker, "--clients", args.viewers, "--page", "p", "--counter", COUNTER,
                       "--pub-ts", pub_at_ms, "--keepalive", 60, "--duration", duration),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started, cpu_before = time.monotonic(), broker.cpu_seconds()
        wait_line(proc, "connected=%d subscribed=%d" % (args.viewers, args.viewers),
                  started + CONNECT_BUDGET_S)
        fig["all_connected_s"] = time.monotonic() - started
        fig["connect_cpu_s"] = broker.cpu_seconds() - cpu_before
        if kind == "tally":
            fig["presence_ok"], fig["presence"] = wait_presence(broker, "p", args.viewers, 15)
        rss_after = broker.settled_rss(SETTLE_S, 200)
        fig["rss_per_viewer"] = (rss_after - rss_before) / args.viewers
        fig["rss_before"], fig["rss_after"] = rss_before, rss_after
        # The update goes out at the moment promised to the load with --pub-ts.
        # (If they connected too late, since_pub would be measured from a wrong moment: dropped.)
        wait_s = pub_at_ms / 1000 - time.time()
        fig["pub_on_time"] = wait_s >= 0
        time.sleep(max(0, wait_s))
        publish_update(broker, kind, 2)
        time.sleep(3)
        fig["churn_ops_s"], fig["churn_ok"], fig["churn_detail"] = churn(
            broker, kind, args.wave, args.waves, args.parallel)
        if kind == "tally":
            ok, seen = wait_presence(broker, "p", args.viewers, 5)
            fig["churn_ok"] = fig["churn_ok"] and ok
            fig["churn_detail"] += " presence/p=%s" % seen
        proc.terminate()  # the viewers' run would go on for the rest of its duration
        report = final_report(proc, 30)
    fig["report"] = report
    return fig


def ms(stats, key):
    return "%.1f" % stats[key] if stats and stats.get("samples") else "-"


def show(kind, fig, viewers):
    r = fig["report"]
    print("%s:" % kind)
    print("  viewers connected %d/%d in %.1f s (broker CPU %.1f s), failures %d" % (
        r.get("connected", 0), viewers, fig["all_connected_s"], fig["connect_cpu_s"],
        r.get("failures", -1)))
    print("  connect_ms p50 %s p99 %s" % (ms(r.get("connect_ms"), "p50"),
                                          ms(r.get("connect_ms"), "p99")))
    if "presence_ok" in fig:
        print("  presence/p = %s (%s)" % (fig["presence"], "exact" if fig["presence_ok"]
                                          else "WRONG"))
    print("  broker RSS %.1f -> %.1f MiB: %.0f bytes per viewer" % (
        fig["rss_before"] / 2**20, fig["rss_after"] / 2**20, fig["rss_per_viewer"]))
    spread = r.get("counter_spread_ms")
    since = r.get("counter_since_pub_ms") if fig["pub_on_time"] else None
    print("  counter update to all viewers: %s receipts; spread_ms p50 %s p99 %s; "
          "since_pub_ms p50 %s p99 %s" % (
              (spread or {}).get("samples", 0), ms(spread, "p50"), ms(spread, "p99"),
              ms(since, "p50"), ms(since, "p99")))
    verdict = {None: "", True: ", count exact", False: ", count WRONG"}[fig["churn_ok"]]
    print("  churn: %.0f joins+leaves/s (%s)%s" % (fig["churn_ops_s"], fig["churn_detail"],
                                                   verdict))


def main():
    args = parse_args()
    if not WSLOAD.is_file():
        print("%s not built: run make -C build" % WSLOAD)
        return 1

    def bench(workdir):
        raise_fd_limit(args.viewers + args.parallel * args.wave + 500)
        for kind in common.broker_kinds(args.plain_only):
            show(kind, run_one(workdir, kind, args), args.viewers)
            sys.stdout.flush()

    return common.run_bench("tally-bench-viewers-", bench)


if __name__ == "__main__":
    sys.exit(main())
