#!/usr/bin/env python3
"""The state document of a counter of many devices: its size, the bytes a second it sends to one
watcher while the counter takes reports, and what a reader of getCounter that reads nothing
costs the broker.

One broker with the plugin; a counter `big` gets --devices device reports (meter-000000 ...),
then a watcher subscribes to counters/big/state (QoS 0) and counts the bytes it receives while
a client sends --rate reports a second for --seconds, each raising one device's total. Last, a
client sends 20 requests of 10 getCounter of `big` and reads nothing; the growth of the
broker's VmRSS is what Mosquitto holds for it.

--plugin runs another build (the old document: a worktree of an earlier commit).
"""

import argparse
import json
import os
import sys
import threading
import time

import common

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rawmqtt import RawClient  # noqa: E402

MIB = 1024.0 * 1024.0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=100000, help="devices of the counter (100000)")
    p.add_argument("--rate", type=int, default=1000, help="reports a second while watched (1000)")
    p.add_argument("--seconds", type=float, default=10, help="how long they come (10)")
    p.add_argument("--plugin", default=str(common.PLUGIN), help="the plugin to load")
    return p.parse_args()


def seed(port, devices):
    """devices reports, one a device, in batches; waits until all are taken."""
    c = RawClient(port, "seeder")
    batch = []
    for i in range(devices):
        doc = json.dumps({"device": "meter-%06d" % i, "total": 1000 + i})
        batch.append(c.publish_packet("counters/big/report", doc))
        if len(batch) == 5000:
            c.sock.sendall(b"".join(batch))
            batch = []
    c.sock.sendall(b"".join(batch))
    c.publish("counters/big/inc", "0")  # QoS 1: everything before it was taken
    c.close()


class Watcher(threading.Thread):
    """Counts the bytes of the state documents it receives (QoS 0); keeps the last one."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.c = RawClient(port, "watcher")
        self.c.subscribe("counters/big/state", 0)
        self.bytes = self.docs = 0
        self.last = None
        self.lock = threading.Lock()
        self.stop = False

    def run(self):
        self.c.sock.settimeout(0.5)
        while not self.stop:
            try:
                kind, flags, body = self.c.recv()
            except OSError:
                continue
            if kind != 0x30:
                continue
            _, payload, _ = self.c.take_publish(flags, body)
            with self.lock:
                self.bytes += len(payload)
                self.docs += 1
                self.last = payload

    def take(self):
        with self.lock:
            got = (self.bytes, self.docs, self.last)
            self.bytes = self.docs = 0
            return got


def reports(port, rate, seconds, devices):
    """rate reports a second for seconds, each raising one device by 1000."""
    c = RawClient(port, "reporter")
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rate)
        batch = []
        while sent < due:
            i = sent % devices
            total = 1000 + i + 1000 * (sent // devices + 1)
            doc = json.dumps({"device": "meter-%06d" % i, "total": total})
            batch.append(c.publish_packet("counters/big/report", doc))
            sent += 1
        c.sock.sendall(b"".join(batch))
        time.sleep(0.01)
    c.publish("counters/big/inc", "0")
    c.close()
    return sent


def bench(workdir, args):
    opts = {"node_id": "bench", "max_devices": max(100000, args.devices + 1)}
    with common.Broker(workdir, "state", with_plugin=True, plugin_opts=opts,
                       plugin=args.plugin) as b:
        seed(b.port, args.devices)
        w = Watcher(b.port)
        w.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.2)
            _, _, last = w.take()
            if last:
                break
        doc = json.loads(last)
        print("state document at %d devices: %d bytes (devices listed %d, omitted %s)" % (
            args.devices, len(last), len(doc["devices"]), doc.get("devices_omitted", "-")))
        w.take()
        t0, cpu0 = time.monotonic(), b.cpu_seconds()
        sent = reports(b.port, args.rate, args.seconds, args.devices)
        time.sleep(0.5)
        took = time.monotonic() - t0
        got, docs, _ = w.take()
        cpu = b.cpu_seconds() - cpu0
        print("%d reports in %.1f s: the watcher got %d documents, %.2f MB/s; broker CPU %.0f%%"
              % (sent, took, docs, got / took / MIB, 100 * cpu / took))
        w.stop = True
        w.join()

        deep = json.dumps({"commands": [{"command": "getCounter", "name": "big",
                                         "deviceOffset": args.devices - 1000,
                                         "deviceCount": 1000}] * 10})
        asker = RawClient(b.port, "asker")
        asker.subscribe("$CONTROL/tally/v1/response", 1)
        t0 = time.monotonic()
        asker.publish("$CONTROL/tally/v1", deep, 1)
        while not asker.messages:
            kind, flags, body = asker.recv()
            if kind == 0x30:
                asker.messages.append(asker.take_publish(flags, body))
        print("10 getCounter of the last page (deviceOffset %d): answered in %.0f ms, %d bytes"
              % (args.devices - 1000, 1000 * (time.monotonic() - t0), len(asker.messages[0][1])))
        asker.close()

        before = b.settled_rss(10, 100)
        reader = RawClient(b.port, "reader")
        reader.subscribe("$CONTROL/tally/v1/response", 1)
        request = json.dumps({"commands": [{"command": "getCounter", "name": "big"}] * 10})
        for _ in range(20):
            reader.publish_nowait("$CONTROL/tally/v1", request, 0)
        time.sleep(3)
        grown = b.settled_rss(20, 100) - before
        print("20 requests of 10 getCounter, not read: the broker grew by %.1f MB" % (
            grown / MIB))
        reader.close()


def main():
    args = parse_args()
    return common.run_bench("tally-bench-state-", lambda d: bench(d, args))


if __name__ == "__main__":
    sys.exit(main())
