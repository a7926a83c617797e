#!/usr/bin/env python3
"""bench_fold: a counter's size through 200 restarts without state (issue 12, bounded metadata).

Three tally nodes a, b, c bridged in a triangle on loopback; b and c keep their state on disk, a
keeps nothing. a is killed (SIGKILL) and started again --restarts times; after each start, every
one of --counters counters takes an increment at a, and one at b and at c. Every --check-every
restarts (and at the end) it waits until every node shows the exact total of every counter;
before each kill, until b holds a's increments (a keeps nothing on disk: what it acknowledged and
did not replicate would die with it).

It prints, before the restarts, every --check-every restarts and at the end: the slots and fold
entries per counter at each node (control API getCounter), b's state_dir in bytes, and b's and
c's CPU seconds; then, after b stops cleanly (a final compaction), b's snapshot: its slot records
per counter and its bytes. Without folding a counter would hold one slot per life of a: restarts
+ 3. Figures, not pass/fail; the machine may be shared, which stretches the times, not the sizes.

    python3 tests/bench/bench_fold.py [--restarts 200] [--counters 20] [--check-every 20]
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Broker, BenchError, run_bench  # noqa: E402

NODES = ("a", "b", "c")
LINKS = {"b": "a", "c": "b", "a": "c"}  # node -> the node it bridges to


def options(name, workdir, keep):
    o = {"node_id": name, "bridge_clientids": "*-to-*", "stats_interval_ms": "500",
         "peer_timeout_ms": "1000", "sync_interval_ms": "1000"}
    if keep:
        o["state_dir"] = os.path.join(workdir, "state-" + name)
    return o


def make(workdir):
    """The three brokers, each bridged to the next (their ports are known once all exist)."""
    nodes = {n: Broker(workdir, n, with_plugin=True,
                       plugin_opts=options(n, workdir, n != "a")) for n in NODES}
    for name, dst in LINKS.items():
        bridge = ["connection %s-to-%s" % (name, dst),
                  "address 127.0.0.1:%d" % nodes[dst].port, "clientid %s-to-%s" % (name, dst),
                  "topic $tally/# both 1", "restart_timeout 1 1", "cleansession true",
                  "try_private true"]
        conf = nodes[name].conf
        conf.write_text(conf.read_text() + "\n".join(bridge) + "\n")
    return nodes


def increment(broker, names):
    for name in names:
        r = subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-q", "1",
                            "-t", "counters/%s/inc" % name, "-n"], capture_output=True, timeout=20)
        if r.returncode != 0:
            raise BenchError("increment at %s failed: %s" % (broker.name, r.stderr))


def get_counter(broker, name):
    r = subprocess.run(["mosquitto_rr", "-p", str(broker.port), "-t", "$CONTROL/tally/v1",
                        "-e", "$CONTROL/tally/v1/response", "-q", "1", "-W", "3", "-m",
                        json.dumps({"commands": [{"command": "getCounter", "name": name}]})],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0 or not r.stdout.strip():
        return None
    return json.loads(r.stdout)["responses"][0].get("data")


def wait_exact(nodes, expected, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wrong = [(n, name) for n, b in nodes.items() for name, v in expected.items()
                 if get_counter(b, name) is None or get_counter(b, name)["counter"]["value"] != v]
        if not wrong:
            return time.monotonic() - (deadline - timeout)
        time.sleep(0.2)
    got = {(n, name): get_counter(nodes[n], name)["counter"]["value"] for n, name in wrong[:5]}
    raise BenchError("not exact after %d s: %s, want %s" % (timeout, got, expected))


def sizes(nodes, names):
    """(largest slots per counter, largest fold entries per counter) over every node."""
    slots = folds = 0
    for b in nodes.values():
        for name in names:
            d = get_counter(b, name)
            slots = max(slots, len(d["replicas"]))
            folds = max(folds, len(d["folds"]))
    return slots, folds


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if f.startswith("state."))


def snapshot_slots(path):
    """Slot ('S') records per counter, and 'F' and 'R' records, in state.snap."""
    data = open(os.path.join(path, "state.snap"), "rb").read()
    off, per, kinds = 12, {}, {}
    while off + 8 <= len(data):
        n, crc = struct.unpack_from("<II", data, off)
        p = data[off + 8:off + 8 + n]
        if n == 0 or len(p) < n or zlib.crc32(p) != crc:
            break
        kinds[chr(p[0])] = kinds.get(chr(p[0]), 0) + 1
        if p[0:1] == b"S":
            name = p[2:2 + p[1]].decode()
            per[name] = per.get(name, 0) + 1
        off += 8 + n
    return per, kinds


def report(label, nodes, names, workdir):
    slots, folds = sizes(nodes, names)
    cpu = sum(nodes[n].cpu_seconds() for n in ("b", "c"))
    print("%-28s slots/counter %4d  fold entries/counter %4d  b state_dir %8d B  "
          "b+c CPU %6.1f s" % (label, slots, folds, dir_bytes(os.path.join(workdir, "state-b")),
                               cpu), flush=True)


def bench(workdir, args):
    nodes = make(workdir)
    for b in nodes.values():
        b.__enter__()
    try:
        names = ["fold-%d" % i for i in range(args.counters)]
        expected = {n: 0 for n in names}
        for b in nodes.values():
            increment(b, names)
            for n in names:
                expected[n] += 1
        wait_exact(nodes, expected)
        report("before the restarts", nodes, names, workdir)
        t0 = time.monotonic()
        for k in range(1, args.restarts + 1):
            a = nodes["a"]
            a.proc.kill()
            a.proc.wait(10)
            a.__enter__()
            increment(a, names)
            increment(nodes["b"], names[:1])
            increment(nodes["c"], names[1:2])
            for n in names:
                expected[n] += 1
            expected[names[0]] += 1
            expected[names[1]] += 1
            # a keeps nothing: what it acknowledged must reach a peer before it is killed
            wait_exact({"b": nodes["b"]}, {names[-1]: expected[names[-1]]})
            if k % args.check_every == 0 or k == args.restarts:
                took = wait_exact(nodes, expected)
                report("after %d restarts (exact)" % k, nodes, names, workdir)
                if took > 5:
                    print("  (exact %.1f s after the last increments)" % took)
        print("%d restarts in %.0f s" % (args.restarts, time.monotonic() - t0))
        deadline = time.monotonic() + 60
        while sizes(nodes, names) != (3, 0) and time.monotonic() < deadline:
            time.sleep(0.5)
        wait_exact(nodes, expected)
        report("collected, exact", nodes, names, workdir)
        nodes["b"].stop()
        per, kinds = snapshot_slots(os.path.join(workdir, "state-b"))
        print("b stopped (final compaction): snapshot %d B, slot records per counter %s, "
              "F records %d, R records %d; state_dir %d B" % (
                  os.path.getsize(os.path.join(workdir, "state-b", "state.snap")),
                  sorted(set(per.get(n, 0) for n in names)), kinds.get("F", 0),
                  kinds.get("R", 0), dir_bytes(os.path.join(workdir, "state-b"))))
        print("without folding, each counter would hold %d slots" % (args.restarts + 3))
    finally:
        for b in nodes.values():
            b.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--restarts", type=int, default=200)
    p.add_argument("--counters", type=int, default=20)
    p.add_argument("--check-every", type=int, default=20)
    args = p.parse_args()
    return run_bench("bench-fold-", lambda w: bench(w, args))


if __name__ == "__main__":
    sys.exit(main())
