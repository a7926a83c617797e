"""Chaos: three persistent nodes in a triangle of bridges, clients that retry until they are
acknowledged, and brokers killed with SIGKILL and bridges cut while they count. At the end every
node's total is exactly what the clients meant to count.

TALLY_CHAOS_SECONDS sets how long the faults go on (default 45; tests/chaos_soak.sh runs it
longer) and TALLY_CHAOS_SEED makes a run's choice of faults repeatable.
"""
import json
import os
import random
import select
import socket
import threading
import time

import pytest

import paho.mqtt.client as mqtt

from conftest import free_port

COUNTER = "chaos"
ACK_TIMEOUT = 3.0


class Proxy:
    """A TCP forwarder in front of a broker port: cut() drops every connection through it and
    refuses new ones until heal(). A bridge through it sees a network partition."""

    def __init__(self, target_port):
        self.target = target_port
        self.port = free_port()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.is_cut = False
        self.closed = False
        self.lock = threading.Lock()
        self.pairs = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                continue
            if self.is_cut:
                conn.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.target), timeout=1)
            except OSError:
                conn.close()
                continue
            with self.lock:
                self.pairs.append((conn, up))
            threading.Thread(target=self._pump, args=(conn, up), daemon=True).start()

    def _pump(self, a, b):
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 0.2)
                if self.closed:
                    break
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
            with self.lock:
                if (a, b) in self.pairs:
                    self.pairs.remove((a, b))

    def cut(self):
        self.is_cut = True
        with self.lock:
            pairs = list(self.pairs)
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def heal(self):
        self.is_cut = False

    def close(self):
        self.cut()
        self.closed = True
        self.lsock.close()


class Sender:
    """One MQTT connection that publishes one QoS 1 message at a time and says whether the
    PUBACK came back within ACK_TIMEOUT. On any failure the connection is thrown away (no
    automatic resend by the library), and the caller retries on a new one."""

    def __init__(self, name):
        self.name = name
        self.c = None
        self.port = None
        self.reconnects = 0

    def _connect(self, port):
        c = mqtt.Client(client_id=f"{self.name}-{self.reconnects}", clean_session=True)
        ok = threading.Event()
        c.on_connect = lambda cl, u, f, rc: rc == 0 and ok.set()
        c.connect("127.0.0.1", port, 10)
        c.loop_start()
        if not ok.wait(ACK_TIMEOUT):
            self._drop(c)
            raise OSError("no CONNACK")
        self.c = c
        self.reconnects += 1

    @staticmethod
    def _drop(c):
        c.loop_stop()
        try:
            c.disconnect()
        except Exception:
            pass

    def publish(self, port, topic, payload):
        """True once the broker on port acknowledged the message."""
        try:
            if self.c is None or self.port != port:
                self.close()
                self.port = port
                self._connect(port)
            info = self.c.publish(topic, payload, qos=1)
            info.wait_for_publish(ACK_TIMEOUT)  # returns nothing in paho 1.6
            if info.is_published():
                return True
        except (OSError, RuntimeError, ValueError):
            pass
        self.close()
        return False

    def close(self):
        if self.c is not None:
            self._drop(self.c)
            self.c = None


class Workers:
    """Client threads: increments with ids at a home node, and devices that report their
    running totals and fail over to another node while theirs is down."""

    def __init__(self, nodes, rng):
        self.nodes = nodes
        self.rng = rng
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.expected_inc = 0
        self.device_totals = {}
        self.sent = self.retries = self.failovers = 0
        self.threads = []

    def _count(self, sent=0, retries=0, failovers=0):
        with self.lock:
            self.sent += sent
            self.retries += retries
            self.failovers += failovers

    def incrementer(self, k, home):
        # Ids are retried at their own home node only. The dedup window is per node, so a
        # retry of the same id through another node would be counted again: by design, an
        # idempotency key protects retries to the node that took the first attempt.
        rng = random.Random(self.rng.random())
        s = Sender(f"inc{k}")
        seq = 0
        while not self.stop.is_set():
            delta = rng.choice([1, 1, 2, 3, -1])
            payload = json.dumps({"delta": delta, "id": f"w{k}-{seq}"})
            while not s.publish(home.port, f"counters/{COUNTER}/inc", payload):
                self._count(retries=1)
                time.sleep(0.2)
            with self.lock:
                self.expected_inc += delta
            self._count(sent=1)
            seq += 1
            time.sleep(rng.uniform(0.002, 0.02))
        s.close()

    def device(self, k):
        rng = random.Random(self.rng.random())
        s = Sender(f"dev{k}")
        name = f"meter-{k}"
        node = k % len(self.nodes)
        total = 0
        while not self.stop.is_set():
            total += rng.randint(0, 5)
            sends = [total]
            if rng.random() < 0.1:
                sends.append(max(0, total - rng.randint(1, 10)))  # a late, older copy
            for t in sends:
                payload = json.dumps({"device": name, "total": t})
                while not s.publish(self.nodes[node].port, f"counters/{COUNTER}/report", payload):
                    node = (node + 1) % len(self.nodes)  # fail over, repeat the same report
                    self._count(retries=1, failovers=1)
                    time.sleep(0.1)
                self._count(sent=1)
            with self.lock:
                self.device_totals[name] = total
            time.sleep(rng.uniform(0.01, 0.05))
        s.close()

    def start(self, incrementers, devices):
        for k in range(incrementers):
            self.threads.append(threading.Thread(
                target=self.incrementer, args=(k, self.nodes[k % len(self.nodes)]), daemon=True))
        for k in range(devices):
            self.threads.append(threading.Thread(target=self.device, args=(k,), daemon=True))
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(120)
            assert not t.is_alive(), "a client thread never got its last message acknowledged"

    def expected(self):
        return self.expected_inc + sum(self.device_totals.values())


class Chaos:
    """Faults one at a time: SIGKILL a node and start it again, cut a bridge, or isolate a
    node by cutting every bridge through it."""

    def __init__(self, nodes, proxies, rng, log):
        self.nodes = nodes
        self.proxies = proxies  # {(from, to): Proxy}
        self.rng = rng
        self.log = log
        self.kills = self.cuts = self.partitions = 0

    def kill_restart(self):
        node = self.rng.choice(self.nodes)
        node.kill()
        self.log(f"kill -9 {node.name}")
        time.sleep(self.rng.uniform(0.3, 2.5))
        node.start()
        self.log(f"restarted {node.name}")
        self.kills += 1

    def cut_bridge(self):
        key = self.rng.choice(sorted(self.proxies))
        self.proxies[key].cut()
        self.log(f"cut bridge {key[0]}->{key[1]}")
        time.sleep(self.rng.uniform(0.5, 3))
        self.proxies[key].heal()
        self.log(f"healed bridge {key[0]}->{key[1]}")
        self.cuts += 1

    def isolate(self):
        node = self.rng.choice(self.nodes).name
        keys = [k for k in self.proxies if node in k]
        for k in keys:
            self.proxies[k].cut()
        self.log(f"partition: {node} cut off from the others")
        time.sleep(self.rng.uniform(1, 4))
        for k in keys:
            self.proxies[k].heal()
        self.log(f"partition of {node} healed")
        self.partitions += 1

    def run(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rng.choice([self.kill_restart, self.kill_restart, self.cut_bridge, self.isolate])()
            time.sleep(self.rng.uniform(0.2, 1.5))


def state(node):
    raw = node.retained(f"counters/{COUNTER}/state", timeout=1)
    return json.loads(raw) if raw else {}


@pytest.mark.nosan  # runs once, without sanitizers: its timeouts are tuned for native speed
@pytest.mark.alone
def test_chaos_every_node_counts_exactly(brokers, workdir):
    seconds = float(os.environ.get("TALLY_CHAOS_SECONDS", "45"))
    seed = int(os.environ.get("TALLY_CHAOS_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    t0 = time.monotonic()
    events = []

    def log(what):
        line = f"{time.monotonic() - t0:7.2f}s {what}"
        events.append(line)
        print(line, flush=True)

    log(f"seed {seed}, {seconds:.0f} s of faults")
    opts = {"bridge_clientids": "*-to-*", "fsync_interval_ms": "1000", "peer_timeout_ms": "3000"}

    def node(name, bridges):
        o = dict(opts, state_dir=os.path.join(workdir, f"state-{name}"))
        return brokers(name, options=o, bridges=[
            {"name": f"{name}-to-{to}", "port": proxies[(name, to)].port} for to in bridges])

    proxies = {}
    a = node("a", [])
    proxies[("b", "a")] = Proxy(a.port)
    b = node("b", ["a"])
    proxies[("c", "a")] = Proxy(a.port)
    proxies[("c", "b")] = Proxy(b.port)
    c = node("c", ["a", "b"])
    nodes = [a, b, c]

    workers = Workers(nodes, rng)
    chaos = Chaos(nodes, proxies, rng, log)
    try:
        workers.start(incrementers=4, devices=3)
        chaos.run(seconds)
        log("faults over; letting the clients finish their last messages")
        workers.finish()
        expected = workers.expected()
        log(f"clients: {workers.sent} acknowledged messages, {workers.retries} retries, "
            f"{workers.failovers} device failovers; expected total {expected} "
            f"(increments {workers.expected_inc}, devices {workers.device_totals})")
        for n in nodes:
            try:
                n.wait_total(COUNTER, expected, timeout=45)
            finally:
                st = state(n)
                log(f"{n.name}: total {n.total(COUNTER)}, p {st.get('p')} n {st.get('n')} "
                    f"devices {st.get('devices')}")
        stats = {n.name: json.loads(n.retained(f"$tally/stats/{n.name}", timeout=6) or "{}")
                 for n in nodes}
        for name, s in stats.items():
            log(f"{name}: applied {s.get('applied')}, duplicates {s.get('duplicates')}, "
                f"reports {s.get('reports')}, repl refused {s.get('repl', {}).get('refused')}")
        log(f"faults: {chaos.kills} kill -9, {chaos.cuts} bridge cuts, "
            f"{chaos.partitions} partitions; converged after {time.monotonic() - t0:.1f} s")
        assert chaos.kills > 0
    finally:
        workers.stop.set()
        for p in proxies.values():
            p.close()
