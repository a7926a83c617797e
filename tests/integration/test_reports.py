"""Device reports: a device publishes its own running total; lost, repeated, reordered or
failed-over reports never skew the count (the largest total per device counts once)."""
import json
import os
import time

from conftest import RawClient, chain, wait_for


def report(b, name, total, device=None, client_id=None):
    payload = json.dumps({"device": device, "total": total}) if device else str(total)
    extra = ["-i", client_id] if client_id else []
    r = b.pub(f"counters/{name}/report", payload, qos=1, extra=extra + ["-V", "5"])
    assert r.returncode == 0, r.stderr
    return r


def state(b, name):
    raw = b.retained(f"counters/{name}/state")
    return json.loads(raw) if raw else None


def test_out_of_order_reports_keep_the_largest(broker):
    for total in (10, 7, 12):
        report(broker, "m", total, device="meter-7")
    broker.wait_total("m", 12)
    wait_for(lambda: (state(broker, "m") or {}).get("devices") == {"meter-7": 12}, 5,
             what="state.devices")


def test_repeated_reports_count_once(broker):
    for _ in range(5):
        report(broker, "m", 12, device="meter-7")
    broker.wait_total("m", 12)
    report(broker, "m", 13, device="meter-7")
    report(broker, "m", 13, device="meter-7")
    broker.wait_total("m", 13)


def test_client_id_is_the_device_when_payload_is_a_plain_total(broker):
    report(broker, "m", 4, client_id="meter-a")
    report(broker, "m", 6, client_id="meter-b")
    report(broker, "m", 3, client_id="meter-a")  # older: ignored
    broker.wait_total("m", 10)
    st = wait_for(lambda: state(broker, "m"), 5, what="state")
    assert st["devices"] == {"meter-a": 4, "meter-b": 6}
    assert st["devices_total"] == 10


def test_reports_add_to_increments(broker):
    broker.pub("counters/mix/inc", "5")
    broker.pub("counters/mix/inc", "-2")
    report(broker, "mix", 20, device="d1")
    broker.wait_total("mix", 23)
    st = wait_for(lambda: state(broker, "mix"), 5, what="state")
    assert (st["p"], st["n"], st["devices_total"]) == (5, 2, 20)


def test_failover_between_two_nodes_counts_once_and_converges(brokers):
    a, b = chain(brokers, ["a", "b"])
    report(a, "m", 10, device="meter-7")
    a.wait_total("m", 10)
    b.wait_total("m", 10)
    # The device fails over to b and repeats its last report, then a newer one.
    report(b, "m", 10, device="meter-7")
    report(b, "m", 15, device="meter-7")
    # And a late, older copy still reaches a.
    report(a, "m", 9, device="meter-7")
    a.pub("counters/m/inc", "2")
    b.pub("counters/m/inc", "3")
    for node in (a, b):
        node.wait_total("m", 20)
        wait_for(lambda: (state(node, "m") or {}).get("devices") == {"meter-7": 15}, 5,
                 what=f"{node.name}: devices")


def test_reports_from_two_nodes_concurrently_converge(brokers):
    a, b = chain(brokers, ["a", "b"])
    for i in range(1, 21):
        report(a if i % 2 else b, "m", i * 3, device="meter-x")
        report(b if i % 3 else a, "m", i, device="meter-y")
    for node in (a, b):
        node.wait_total("m", 60 + 20)


def test_reports_replicate_to_a_node_that_joins_later(brokers):
    a = brokers("a", options={"bridge_clientids": "*-to-*"})
    report(a, "m", 42, device="meter-1")
    a.wait_total("m", 42)
    b = brokers("b", options={"bridge_clientids": "*-to-*"},
                bridges=[{"name": "b-to-a", "port": a.port}])
    b.wait_total("m", 42)


def test_max_devices_bound(brokers):
    b = brokers("n1", options={"max_devices": "2"})
    report(b, "m", 1, device="d1")
    report(b, "m", 2, device="d2")
    b.wait_total("m", 3)
    r = b.pub("counters/m/report", json.dumps({"device": "d3", "total": 100}), extra=["-V", "5", "-d"])
    assert "RC:135" in r.stdout + r.stderr  # PUBACK reason 0x87, not authorized
    log_line = "refused publish from client"
    wait_for(lambda: "max_devices_reached" in b.read_log(), 5, what="the refusal in the log")
    assert log_line in b.read_log()
    # Known devices still report; the total never saw d3.
    report(b, "m", 5, device="d1")
    b.wait_total("m", 7)
    time.sleep(0.3)
    assert b.total("m") == 7
    st = wait_for(lambda: state(b, "m"), 5, what="state")
    assert "d3" not in st["devices"]


def test_device_bound_counts_devices_not_reports(brokers):
    b = brokers("n1", options={"max_devices": "1"})
    for total in range(1, 30):
        report(b, "m", total, device="only")
    b.wait_total("m", 29)
    assert "max_devices_reached" not in b.read_log()


def test_bad_reports_are_refused(broker):
    report(broker, "m", 5, device="ok")
    broker.wait_total("m", 5)
    for payload in ("-1", "1.5", "abc", '{"device":"x","total":-3}', '{"device":"","total":3}',
                    '{"device":"x"}', '{"total":3,"device":"x","extra":1}'):
        broker.pub("counters/m/report", payload)
    time.sleep(0.3)
    assert broker.total("m") == 5
    assert broker.read_log().count("refused publish from client") >= 6


def test_device_reports_survive_kill9(brokers, workdir):
    b = brokers("n1", options={"state_dir": os.path.join(workdir, "state")})
    report(b, "m", 30, device="meter-7")
    report(b, "m", 8, device="meter-8")
    b.wait_total("m", 38)
    b.kill()
    b.start()
    b.wait_total("m", 38)
    report(b, "m", 29, device="meter-7")  # stale after the restart too
    report(b, "m", 9, device="meter-8")
    b.wait_total("m", 39)


def test_plain_report_from_a_broker_assigned_id_is_refused(broker):
    """Issue 10 #13: a client that connects without a client id gets a new "auto-..." id from
    the broker on every connection, so its plain running total counted again each time (three
    connections reporting 100 made 300). Such a report is refused with a reason that says why;
    the same client naming its device in JSON is counted once."""
    for _ in range(3):
        c = RawClient(broker.port, "")  # MQTT v5, empty client id: the broker assigns one
        try:
            assert c.publish("counters/anon/report", "100") == 0x87
            assert c.publish("counters/anon/report",
                             json.dumps({"device": "meter-9", "total": 100})) < 0x80
        finally:
            c.disconnect()
    broker.wait_total("anon", 100)
    time.sleep(0.3)
    assert broker.total("anon") == 100
    assert state(broker, "anon")["devices"] == {"meter-9": 100}
    lines = [line for line in broker.read_log().splitlines()
             if "to 'counters/anon/report': device_id_assigned_by_broker" in line]
    assert len(lines) == 3 and all("from client 'auto-" in line for line in lines), lines


def send_reports(node, name, n):
    """n devices meter-0000.. report totals 1..n to name, in one burst."""
    seeder = RawClient(node.port, "seeder")
    seeder.sock.sendall(b"".join(
        seeder.publish_packet(f"counters/{name}/report",
                              json.dumps({"device": f"meter-{i:04d}", "total": i + 1}))
        for i in range(n)))
    assert seeder.publish(f"counters/{name}/inc", "0") < 0x80
    return n * (n + 1) // 2


def test_state_document_stays_within_max_message_bytes(brokers):
    """A state document listed every device of its counter: 1,000 devices
    made about 20 KB, five times max_message_bytes here (1.8 MB at 100,000,
    to every watcher up to 10 times a second). It lists the largest totals
    first, as many as fit, and counts the rest; the sums stay exact."""
    node = brokers("n1", options={"max_message_bytes": 4096})
    watcher = node.client("watcher")
    watcher.subscribe("counters/big/state")
    node.pub("counters/big/inc", "5")
    devices_total = send_reports(node, "big", 1000)
    node.wait_total("big", 5 + devices_total)

    def latest():
        raw = watcher.last("counters/big/state")
        doc = json.loads(raw) if raw else {}
        return (raw, doc) if doc.get("devices_total") == devices_total else None
    raw, doc = wait_for(latest, 10, what="the state document with every report")
    assert len(raw.encode()) <= 4096, len(raw.encode())
    assert (doc["value"], doc["p"], doc["n"]) == (5 + devices_total, 5, 0)
    assert doc["nodes"] == {"n1": {"p": 5, "n": 0}} and doc["nodes_omitted"] == 0
    listed = list(doc["devices"].items())
    assert 100 < len(listed) < 1000
    assert doc["devices_omitted"] == 1000 - len(listed)
    # the largest totals, largest first
    assert listed == [(f"meter-{i:04d}", i + 1) for i in range(999, 999 - len(listed), -1)]
    watcher.close()
