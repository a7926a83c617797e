"""The control API on $CONTROL/tally/v1: admins, and readers (reader_usernames,
default everyone) asking only to read, list counters in natural order by
pages, read one counter's per-node, per-incarnation and per-device breakdown
and the fastest-moving counters; everyone else is refused, and answers go to
the asking client only."""
import json
import subprocess
import time

import paho.mqtt.client as mqtt

from conftest import RawClient, wait_for

REQUEST = "$CONTROL/tally/v1"
RESPONSE = "$CONTROL/tally/v1/response"
CONTROL_COMMANDS_MAX = 10  # plugin/control.c


def rss_kb(broker):
    with open(f"/proc/{broker.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def ask(broker, commands, username="admin", v5=False):
    """Sends one request with mosquitto_rr; returns (exit code, parsed response or None)."""
    args = ["mosquitto_rr", "-p", str(broker.port), "-t", REQUEST, "-e", RESPONSE, "-q", "1",
            "-W", "3", "-m", json.dumps({"commands": commands})]
    if username:
        args += ["-u", username]
    if v5:
        args += ["-V", "5"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=20)
    out = r.stdout.strip()
    return r.returncode, (json.loads(out) if out else None)


def seed(broker):
    for name, delta in (("likes", 3), ("votes-yes", 5), ("votes-no", -2)):
        broker.pub(f"counters/{name}/inc", str(delta))
    broker.pub("counters/likes/report", "10", extra=["-i", "meter-1"])
    broker.wait_total("likes", 13)
    broker.wait_total("votes-no", -2)


def test_admin_lists_and_reads_counters(brokers):
    node = brokers("n1", options={"admin_usernames": "admin,ops-*"})
    seed(node)
    rc, resp = ask(node, [
        {"command": "listCounters", "prefix": "votes-"},
        {"command": "listCounters", "count": 1, "offset": 1},
        {"command": "getCounter", "name": "likes", "correlationData": "c-7"},
    ], username="ops-anna")
    assert rc == 0
    listed, page, got = resp["responses"]
    assert listed["command"] == "listCounters"
    assert listed["data"]["totalCount"] == 3 and listed["data"]["matched"] == 2
    assert [(c["name"], c["value"]) for c in listed["data"]["counters"]] == [
        ("votes-no", -2), ("votes-yes", 5)]
    assert page["data"]["totalCount"] == 3 and page["data"]["offset"] == 1
    assert [c["name"] for c in page["data"]["counters"]] == ["votes-no"]
    assert got["correlationData"] == "c-7"
    counter = got["data"]["counter"]
    assert (counter["value"], counter["p"], counter["n"]) == (13, 3, 0)
    assert counter["nodes"] == {"n1": {"p": 3, "n": 0}}
    assert counter["devices"] == {"meter-1": 10}
    (replica,) = got["data"]["replicas"]
    assert replica["node"] == "n1" and len(replica["incarnation"]) == 16


def test_errors_are_answered_per_command(brokers):
    node = brokers("n1", options={"admin_usernames": "admin"})
    seed(node)
    rc, resp = ask(node, [{"command": "getCounter", "name": "nope"},
                          {"command": "getCounter", "name": "a/b"},
                          {"command": "frobnicate"},
                          {"command": "listCounters"}])
    assert rc == 0
    errors = [r.get("error") for r in resp["responses"]]
    assert errors == ["counter not found", "invalid counter name", "unknown command", None]
    rc, resp = ask(node, [])
    assert resp == {"responses": []}


def test_non_readers_are_refused_and_logged(brokers):
    node = brokers("n1", options={"admin_usernames": "admin", "reader_usernames": "viewer-*"})
    seed(node)
    for user in ("eve", None):
        rc, resp = ask(node, [{"command": "listCounters"}], username=user, v5=True)
        assert resp is None, resp
    wait_for(lambda: node.read_log().count(
        "to '$CONTROL/tally/v1': forbidden_topic") >= 2, 5, what="refusals logged")
    rc, resp = ask(node, [{"command": "listCounters"}, {"command": "topCounters"},
                          {"command": "getCounter", "name": "likes"}], username="viewer-1")
    assert rc == 0 and [r.get("error") for r in resp["responses"]] == [None, None, None]
    assert resp["responses"][0]["data"]["totalCount"] == 3
    assert resp["responses"][2]["data"]["counter"]["value"] == 13


def test_readers_may_only_read(brokers):
    """A request with any command that is not read-only is refused whole for a
    reader, even when its other commands only read; admins may send it."""
    node = brokers("n1", options={"admin_usernames": "admin"})
    seed(node)
    mixed = [{"command": "listCounters"}, {"command": "frobnicate"}]
    rc, resp = ask(node, mixed, username=None, v5=True)
    assert resp is None
    rc, resp = ask(node, mixed, username="admin")
    assert [r.get("error") for r in resp["responses"]] == [None, "unknown command"]


def test_everyone_reads_by_default(brokers):
    """reader_usernames defaults to '*': anonymous clients included, even with
    no admin configured."""
    node = brokers("n1")
    seed(node)
    for user in (None, "anyone"):
        rc, resp = ask(node, [{"command": "listCounters", "prefix": "votes-"}], username=user)
        assert rc == 0, resp
        assert [c["name"] for c in resp["responses"][0]["data"]["counters"]] == [
            "votes-no", "votes-yes"]


def test_list_natural_order_pages_and_bound(brokers):
    node = brokers("n1")
    lines = [f"k{i}" for i in range(1100)]
    c = mqtt.Client(client_id="filler", clean_session=True)
    c.connect("127.0.0.1", node.port, 30)
    c.loop_start()
    infos = [c.publish(f"counters/{name}/inc", "1", 1) for name in lines]
    for info in infos:
        info.wait_for_publish(20)
    c.disconnect()
    c.loop_stop()
    node.wait_total("k1099", 1)
    rc, resp = ask(node, [
        {"command": "listCounters", "prefix": "k", "count": 5000},
        {"command": "listCounters", "prefix": "k", "offset": 1000, "count": 1000},
        {"command": "listCounters", "prefix": "k1", "count": 12, "order": "name"},
        {"command": "listCounters", "prefix": "k9", "count": 3},
    ])
    first, second, by_name, nines = (r["data"] for r in resp["responses"])
    assert first["totalCount"] == 1100 and first["matched"] == 1100
    assert [c["name"] for c in first["counters"]] == lines[:1000]  # at most 1000
    assert [c["name"] for c in second["counters"]] == lines[1000:]
    assert [c["name"] for c in by_name["counters"]] == (
        ["k1", "k10", "k100", "k1000", "k1001", "k1002", "k1003", "k1004", "k1005", "k1006",
         "k1007", "k1008"])
    assert [c["name"] for c in nines["counters"]] == ["k9", "k90", "k91"]


def test_top_counters_follow_the_recent_rate(brokers):
    """A counter taking 20 increments a second ranks above one taking 1; the
    rate is the absolute change of the total a second, about 10 s back."""
    node = brokers("n1")
    c = mqtt.Client(client_id="pacer", clean_session=True)
    c.connect("127.0.0.1", node.port, 30)
    c.loop_start()
    start = time.monotonic()
    for i in range(120):  # 6 s at 20 a second
        c.publish("counters/busy/inc", "-1" if i % 2 else "1", 1)
        if i % 20 == 0:
            c.publish("counters/calm/inc", "1", 1)
        time.sleep(max(0, start + (i + 1) / 20 - time.monotonic()))
    c.disconnect()
    c.loop_stop()
    rc, resp = ask(node, [{"command": "topCounters", "count": 2}])
    top = resp["responses"][0]["data"]["counters"]
    assert [t["name"] for t in top] == ["busy", "calm"], top
    # 6 s of 20/s with a 10 s time constant reads about 20 * (1 - e^-0.6) = 9
    assert 5 < top[0]["rate"] < 20 and 0.2 < top[1]["rate"] < 1.5, top
    assert top[0]["value"] == 0  # +1 -1 ...: the total is 0, its change is not


def test_response_goes_to_the_asker_only(brokers):
    node = brokers("n1", options={"admin_usernames": "admin"})
    seed(node)
    spy = node.client("spy")
    spy.subscribe(RESPONSE)
    spy.subscribe("$CONTROL/#")
    rc, resp = ask(node, [{"command": "listCounters"}])
    assert rc == 0 and resp["responses"][0]["data"]["totalCount"] == 3
    time.sleep(0.5)  # a response wrongly routed to the spy would have arrived by now
    assert spy.values(RESPONSE) == []
    spy.close()


def test_a_request_of_many_listings_runs_none_and_the_broker_goes_on(brokers):
    """Any client reads by default, and each listing scans the table: 3,000
    listCounters of 1,000 counters in one 130 KB request made the broker
    build a 100 MB answer, serving nobody for seconds. A request holds at
    most CONTROL_COMMANDS_MAX commands; a longer one runs none of them."""
    node = brokers("n1")
    seeder = RawClient(node.port, "seeder")
    seeder.sock.sendall(b"".join(seeder.publish_packet(f"counters/c{i:04d}/inc", "1")
                                 for i in range(1000)))
    assert seeder.publish("counters/last/inc", "1") < 0x80
    node.wait_total("c0999", 1)
    rc, resp = ask(node, [{"command": "listCounters", "count": 1, "correlationData": i}
                          for i in range(CONTROL_COMMANDS_MAX)], username=None)
    assert rc == 0 and [r["correlationData"] for r in resp["responses"]] == \
        list(range(CONTROL_COMMANDS_MAX))
    rc, resp = ask(node, [{"command": "listCounters", "count": 1}] * (CONTROL_COMMANDS_MAX + 1),
                   username=None)
    assert rc == 0 and resp == {"responses": [
        {"command": "", "error": f"a request holds at most {CONTROL_COMMANDS_MAX} commands"}]}

    before = rss_kb(node)
    flood = RawClient(node.port, "flood")
    request = json.dumps({"commands": [{"command": "listCounters", "count": 1000}] * 3000})
    flood.sock.sendall(flood.publish_packet(REQUEST, request, 0))
    time.sleep(0.1)
    start = time.monotonic()
    assert RawClient(node.port, "after").ping()
    assert time.monotonic() - start < 1.5, "the broker stalled on one request"
    assert rss_kb(node) - before < 30_000, (before, rss_kb(node))
    assert node.proc.poll() is None


def test_get_counter_pages_every_device_once(brokers):
    """getCounter answered with every device of the counter, however many:
    20 requests of 10 of a 100,000-device counter, not read, grew the broker
    by 204 MB. It answers a page (deviceOffset, deviceCount: default 100,
    fewer where they would pass half of max_message_bytes) and the number of
    devices; pages in turn list every device exactly once, largest first."""
    node = brokers("n1", options={"max_message_bytes": 4096})
    seeder = RawClient(node.port, "seeder")
    n = 1500
    seeder.sock.sendall(b"".join(
        seeder.publish_packet("counters/big/report",
                              json.dumps({"device": f"meter-{i:04d}", "total": i // 2 + 1}))
        for i in range(n)))
    assert seeder.publish("counters/big/inc", "2") < 0x80
    node.wait_total("big", 2 + 2 * sum(range(1, n // 2 + 1)))

    rc, resp = ask(node, [{"command": "getCounter", "name": "big"}])
    data = resp["responses"][0]["data"]
    assert data["deviceTotalCount"] == n and data["deviceOffset"] == 0
    assert len(data["counter"]["devices"]) == 100  # the default page
    assert data["counter"]["devices_omitted"] == n - 100
    assert data["counter"]["devices_total"] == 2 * sum(range(1, n // 2 + 1))
    assert data["replicaTotalCount"] == 1 and len(data["replicas"]) == 1

    seen, offset, pages = [], 0, 0
    while offset < n:
        rc, resp = ask(node, [{"command": "getCounter", "name": "big",
                               "deviceOffset": offset, "deviceCount": 1000}])
        assert rc == 0
        page = resp["responses"][0]["data"]
        assert page["deviceOffset"] == offset and page["deviceTotalCount"] == n
        got = list(page["counter"]["devices"].items())
        assert 0 < len(got) <= 1000
        seen += got
        offset += len(got)
        pages += 1
    assert pages > 2  # 1000 devices do not fit in 4096 bytes: pages are shorter
    # every device once, largest total first, a tie (two devices a total) by name
    assert seen == sorted(((f"meter-{i:04d}", i // 2 + 1) for i in range(n)),
                          key=lambda d: (-d[1], d[0]))
