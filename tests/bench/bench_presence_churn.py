#!/usr/bin/env python3
"""What one churning page costs a node that holds many views: README, "Known limits".

Two tally nodes bridged (b bridges to a) on 127.0.0.1. One client on a views --views pages
(subscribes to presence/v-<i>), then rests for --seconds, then subscribes to and unsubscribes
from presence/churn --rate times a second for --seconds. For each phase it prints what a sent
for replication (its $tally/stats/a repl bytes_out: all of it goes to b, its one neighbour), per
second and, for the churn, beyond the rest per change; a's CPU (user + system) in per cent of
one core; and a's RSS once it holds the views. At the end it checks that b counts presence/churn
and one held page exactly.

--plugin runs another build of the plugin (to compare a change with the code before it), and
--views 100 gives the small node's figure. Plain mosquitto is not run: it sends nothing to a
neighbour for a subscription, so there is nothing to compare.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt

import common


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--views", type=int, default=40000, help="pages the client on a views")
    p.add_argument("--rate", type=float, default=10, help="changes of presence/churn a second")
    p.add_argument("--seconds", type=float, default=10, help="length of each phase")
    p.add_argument("--plugin", type=Path, default=common.PLUGIN, help="the plugin to run")
    return p.parse_args()


def node_opts(name):
    return {"node_id": name, "bridge_clientids": "*-to-*", "stats_interval_ms": 500,
            "max_viewers": 1000000}


def bridge_lines(name, port):
    return ["connection %s" % name, "address 127.0.0.1:%d" % port, "clientid %s" % name,
            "topic $tally/# both 1", "restart_timeout 1 1", "cleansession true",
            "try_private true"]


class Stats:
    """a's stats documents as they are published."""

    def __init__(self, port, node):
        self.topic = "$tally/stats/" + node
        self.docs = []
        self.c = mqtt.Client(client_id="bench-stats")
        self.c.on_message = lambda c, u, m: self.docs.append(json.loads(m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(self.topic, 0)
        self.c.loop_start()

    def next(self, timeout=5):
        n = len(self.docs)
        deadline = time.monotonic() + timeout
        while len(self.docs) == n:
            if time.monotonic() > deadline:
                raise common.BenchError("no new %s in %d s" % (self.topic, timeout))
            time.sleep(0.02)
        return self.docs[-1]

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def connected_client(port, client_id):
    c = mqtt.Client(client_id=client_id)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def phase(stats, broker, seconds, churn=None):
    """(bytes_out, msgs_out, seconds by a's uptime, cpu seconds) over a phase; churn(t0, seconds)
    runs the load."""
    start, cpu0 = stats.next(), broker.cpu_seconds()
    t0 = time.monotonic()
    if churn:
        churn(t0, seconds)
    else:
        time.sleep(seconds)
    end, cpu1 = stats.next(), broker.cpu_seconds()
    return (end["repl"]["bytes_out"] - start["repl"]["bytes_out"],
            end["repl"]["msgs_out"] - start["repl"]["msgs_out"],
            (end["uptime_ms"] - start["uptime_ms"]) / 1000, cpu1 - cpu0)


def bench(workdir, args):
    a = common.Broker(workdir, "a", with_plugin=True, plugin_opts=node_opts("a"),
                      plugin=args.plugin)
    with a:
        b = common.Broker(workdir, "b", with_plugin=True, plugin_opts=node_opts("b"),
                          plugin=args.plugin, extra=bridge_lines("b-to-a", a.port))
        with b:
            run(a, b, args)


def run(a, b, args):
    stats = Stats(a.port, "a")
    holder = connected_client(a.port, "holder")
    try:
        for start in range(0, args.views, 500):
            end = min(args.views, start + 500)
            holder.subscribe([("presence/v-%05d" % i, 0) for i in range(start, end)])
        last = "presence/v-%05d" % (args.views - 1)
        deadline = time.monotonic() + 60
        while stats.next()["viewers"] != args.views or b.retained(last, wait=1) != "1":
            if time.monotonic() > deadline:
                raise common.BenchError("a or b does not count %d views after 60 s" % args.views)
        time.sleep(2)
        rss = a.rss_bytes()
        changes = [0]

        def churn(t0, seconds):
            k = 0
            while time.monotonic() - t0 < seconds:
                if k % 2 == 0:
                    holder.subscribe("presence/churn", 0)
                else:
                    holder.unsubscribe("presence/churn")
                k += 1
                time.sleep(max(0.0, t0 + k / args.rate - time.monotonic()))
            if k % 2:
                holder.unsubscribe("presence/churn")
                k += 1
            changes[0] = k

        rest = phase(stats, a, args.seconds)
        busy = phase(stats, a, args.seconds, churn)
        print("%d views on a (RSS %.1f MB), presence/churn changed %d times in %.1f s (plugin %s)"
              % (args.views, rss / 1e6, changes[0], busy[2], args.plugin))
        for label, (bytes_out, msgs, secs, cpu) in (("rest", rest), ("churn", busy)):
            print("  %-6s a sends %9.3f MB/s to b (%.1f messages a second)   a's CPU %5.1f%%"
                  % (label, bytes_out / secs / 1e6, msgs / secs, 100 * cpu / secs))
        # The heartbeat (every page, once a second) falls into a phase once more or less
        # depending on where the phase starts: that much is noise in the difference.
        extra = busy[0] - rest[0] / rest[2] * busy[2]
        extra_msgs = busy[1] - rest[1] / rest[2] * busy[2]
        print("  beyond the rest: %.0f bytes (+-%.0f, one heartbeat) and %.1f messages a change"
              % (extra / changes[0], rest[0] / rest[2] / changes[0], extra_msgs / changes[0]))
        time.sleep(1)
        got = (b.retained("presence/churn", wait=2), b.retained("presence/v-00000", wait=2))
        if got != ("0", "1"):
            raise common.BenchError("b counts presence/churn, presence/v-00000 as %s" % (got,))
        print("  b counts exactly: presence/churn 0, presence/v-00000 1")
    finally:
        holder.loop_stop()
        holder.disconnect()
        stats.close()


def main():
    args = parse_args()
    args.plugin = args.plugin.resolve()  # the brokers run in the bench's directory
    if not args.plugin.is_file():
        print("%s not built" % args.plugin)
        return 1
    return common.run_bench("tally-bench-presence-churn-", lambda d: bench(d, args))


if __name__ == "__main__":
    sys.exit(main())
