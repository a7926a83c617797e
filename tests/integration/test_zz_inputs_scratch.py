import json, time
from conftest import RawClient, wait_for

def test_toggle(brokers):
    node = brokers("n1")
    c = RawClient(node.port, "seeder")
    N = 100000
    for base in range(0, N, 10000):
        c.sock.sendall(b"".join(c.publish_packet(f"counters/c{i:06d}/inc", "1") for i in range(base, base + 10000)))
    c.publish("counters/end/inc", "1")
    node.wait_total("end", 1, timeout=60)
    t = RawClient(node.port, "toggler")
    def sub(mid, f):
        return t._packet(0x82, mid.to_bytes(2, "big") + b"\x00" + t._str(f.encode()) + b"\x00")
    def unsub(mid, f):
        return t._packet(0xA2, mid.to_bytes(2, "big") + b"\x00" + t._str(f.encode()))
    def cpu():
        f = open(f"/proc/{node.proc.pid}/stat").read().split()
        return (int(f[13]) + int(f[14])) / 100
    for K in (10, 100, 400):
        c0 = cpu()
        blob = b"".join(sub(2 * i + 1, "counters/+/state") + unsub(2 * i + 2, "counters/+/state") for i in range(K))
        t.sock.sendall(blob)
        time.sleep(0.05)
        s = time.monotonic()
        p = RawClient(node.port, f"pinger{K}")
        p.ping()
        print(K, "toggles: ping after", round(time.monotonic() - s, 3))
        time.sleep(3)
        print(K, "cpu", cpu() - c0)
