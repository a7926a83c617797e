"""Counters on one broker: exact totals under load at every QoS, retained totals for late
subscribers, coalesced publishes, forged totals refused, idempotency keys, the 2^53-1 bound,
and device reports. Every test runs a real mosquitto with the built plugin on 127.0.0.1."""

import json
import os
import random
import re
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import LOAD, RawClient, wait_for

MAX_SAFE = 2**53 - 1


def ok(rc):
    """An MQTT v5 PUBACK reason below 0x80 is a success (0x10 = no matching subscribers)."""
    return rc is not None and rc < 0x80


def run_load(broker, count, qos, counters=1, extra=()):
    """Runs tally-load; returns its JSON summary."""
    assert os.path.exists(LOAD), f"{LOAD} not built"
    r = subprocess.run([LOAD, "-p", str(broker.port), "-n", str(count), "-q", str(qos), "-k",
                        str(counters), "--timeout", "60", *extra],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def pub_lines(broker, topic, lines, qos):
    """Publishes one message per line from one mosquitto_pub connection (-l)."""
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic,
                        "-q", str(qos), "-l", "-i", f"lines-{qos}-{random.randrange(10**9)}"],
                       input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def mixed_lines(n, rng, tag):
    """n increment payloads of every accepted form, their sum and the sum of the positive ones."""
    lines, total, positive = [], 0, 0
    for i in range(n):
        d = rng.randint(-1000, 1000)
        form = i % 5
        if form == 0:
            lines.append(str(d))
        elif form == 1:
            lines.append(f"+{abs(d)}" if d >= 0 else str(d))
        elif form == 2:
            lines.append(json.dumps({"delta": d}))
        elif form == 3:
            lines.append(json.dumps({"delta": d, "id": f"{tag}-{i}"}))
        else:
            lines.append(f'{{ "id": "{tag}-{i}" }}')  # delta defaults to 1
            d = 1
        total += d
        positive += max(d, 0)
    return lines, total, positive


def stats(broker):
    raw = broker.retained(f"$tally/stats/{broker.name}")
    assert raw, "no stats published"
    return json.loads(raw)


# ---- exact totals under load ------------------------------------------------------------------

@pytest.mark.parametrize("qos", [0, 1, 2])
def test_libmosquitto_load_gives_exact_totals(brokers, qos):
    broker = brokers("n1")
    summary = run_load(broker, 6000, qos, counters=3)
    assert summary["failed"] == 0
    for k in range(3):
        broker.wait_total(f"c{k}", 2000)
    summary = run_load(broker, 3000, qos, counters=3, extra=["--payload-id"])
    assert summary["failed"] == 0
    for k in range(3):
        broker.wait_total(f"c{k}", 3000)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_pub_bulk_mixed_signs_and_json(brokers, qos):
    broker = brokers("n1")
    rng = random.Random(qos)
    lines, total, positive = mixed_lines(3000, rng, f"q{qos}")
    pub_lines(broker, "counters/mixed/inc", lines, qos)
    broker.wait_total("mixed", total)
    state = json.loads(broker.retained("counters/mixed/state"))
    assert (state["value"], state["p"], state["n"]) == (total, positive, positive - total)
    assert state["nodes"] == {"n1": {"p": state["p"], "n": state["n"]}}


def test_empty_payload_counts_one(broker):
    for _ in range(3):
        assert broker.pub("counters/empty/inc", "").returncode == 0
    broker.wait_total("empty", 3)


def test_a_zero_increment_creates_the_counter(brokers, workdir):
    """Issue 10 #10: a 0 increment was acknowledged and took a max_counters slot, but the
    counter was not published, not listed on counters/+ and gone after a restart. It exists
    from its first accepted increment: published as 0, listed, persisted."""
    b = brokers("n1", options={"state_dir": os.path.join(workdir, "state")})
    c = RawClient(b.port, "zero-maker")
    try:
        assert c.publish("counters/nothing-yet/inc", "0") < 0x80
        assert c.publish("counters/also-zero/inc", '{"delta":0,"id":"z-1"}') < 0x80
    finally:
        c.disconnect()
    b.wait_total("nothing-yet", 0)
    b.wait_total("also-zero", 0)

    def listed():
        lister = b.client("lister")
        try:
            lister.subscribe("counters/+")
            want = {("counters/nothing-yet", "0", True), ("counters/also-zero", "0", True)}
            wait_for(lambda: want <= set(lister.messages), 5,
                     what=f"counters/+ to list both (got {lister.messages})")
        finally:
            lister.close()

    listed()
    state = json.loads(b.retained("counters/nothing-yet/state"))
    assert (state["value"], state["p"], state["n"]) == (0, 0, 0)
    b.stop()
    b.start()
    listed()
    wait_for(lambda: json.loads(b.retained("$tally/stats/n1") or "{}").get("counters") == 2, 10,
             what="stats: 2 counters after the restart")
    # the counter goes on counting like any other
    assert b.pub("counters/nothing-yet/inc", "3").returncode == 0
    b.wait_total("nothing-yet", 3)


# ---- retained totals --------------------------------------------------------------------------

def test_late_subscriber_gets_retained_total_and_every_counter(broker):
    pub_lines(broker, "counters/alpha/inc", ["5", "-2", '{"delta":10}'], 1)
    pub_lines(broker, "counters/zero/inc", ["7", "-7"], 1)
    pub_lines(broker, "counters/neg/inc", ["-4"], 1)
    broker.wait_total("alpha", 13)
    broker.wait_total("zero", 0)
    broker.wait_total("neg", -4)

    late = broker.client("late")
    try:
        late.subscribe("counters/alpha")
        wait_for(lambda: late.messages, 5, what="retained total")
        assert late.messages[0] == ("counters/alpha", "13", True)

        every = broker.client("every")
        every.subscribe("counters/+")
        expected = {"alpha": "13", "zero": "0", "neg": "-4"}
        wait_for(lambda: {t.split("/")[1]: p for t, p, _ in every.messages} == expected, 5,
                 what=f"counters/+ to list {expected} (got {every.messages})")
        assert all(retain for _, _, retain in every.messages)
        every.close()
    finally:
        late.close()

    state = json.loads(broker.retained("counters/alpha/state"))
    assert state["name"] == "alpha"
    assert (state["value"], state["p"], state["n"]) == (13, 15, 2)
    assert state["nodes"] == {"n1": {"p": 15, "n": 2}}
    assert isinstance(state["updated_ms"], int)
    zero = json.loads(broker.retained("counters/zero/state"))
    assert (zero["value"], zero["p"], zero["n"]) == (0, 7, 7)


def test_internal_traffic_not_visible_on_hash(broker):
    watcher = broker.client("hash")
    try:
        watcher.subscribe("#")
        time.sleep(0.3)  # the subscription in place before the increment it must see
        broker.pub("counters/h/inc", "2")
        broker.wait_total("h", 2)
        time.sleep(1.5)  # a digest (sync_interval_ms 1000) and a presence heartbeat go by
        topics = {t for t, _, _ in watcher.messages}
        assert topics == {"counters/h/inc", "counters/h", "counters/h/state"}, topics
    finally:
        watcher.close()


# ---- coalescing -------------------------------------------------------------------------------

def test_burst_is_coalesced_into_a_handful_of_publishes(broker):
    sub = broker.client("coalesce")
    try:
        sub.subscribe("counters/c0")
        sub.subscribe("counters/c0/state")
        time.sleep(0.2)
        summary = run_load(broker, 10000, 1, counters=1)
        assert summary["acked"] == 10000
        wait_for(lambda: sub.last("counters/c0") == "10000", 10, what="total 10000")
        time.sleep(0.5)  # nothing further may follow
        values = sub.values("counters/c0")
        assert 1 <= len(values) < 100, len(values)
        assert values[-1] == "10000"
        assert [int(v) for v in values] == sorted(int(v) for v in values)
        states = sub.values("counters/c0/state")
        assert len(states) < 100
        assert json.loads(states[-1])["value"] == 10000
    finally:
        sub.close()


def test_publish_interval_is_respected(brokers):
    """With publish_interval_ms 500, no two publishes of one name are closer than ~450 ms.
    The gaps are measured on updated_ms, stamped by the broker as it publishes, so a slow
    subscriber cannot make them look shorter."""
    broker = brokers("n1", options={"publish_interval_ms": "500"})
    sub = broker.client("interval")
    try:
        sub.subscribe("counters/c0")
        sub.subscribe("counters/c0/state")
        time.sleep(0.3)
        summary = run_load(broker, 6000, 1, counters=1, extra=["--rate", "2000"])
        assert summary["acked"] == 6000
        wait_for(lambda: sub.last("counters/c0") == "6000", 5, what="total 6000")
        time.sleep(0.7)
        totals = sub.values("counters/c0")
        stamps = [json.loads(p)["updated_ms"] for p in sub.values("counters/c0/state")]
        assert len(stamps) == len(totals)
        assert 4 <= len(totals) <= 10, totals  # about 3 s of load at one publish per 0.5 s
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert min(gaps) >= 450, gaps
    finally:
        sub.close()


# ---- forged publishes -------------------------------------------------------------------------

def test_forged_publishes_are_refused_and_logged(broker):
    broker.pub("counters/f/inc", "42")
    broker.wait_total("f", 42)
    state_before = json.loads(broker.retained("counters/f/state"))
    watcher = broker.client("watch-forged")
    watcher.subscribe("counters/#")
    watcher.subscribe("presence/#")
    forger = RawClient(broker.port, "forger")
    try:
        forged = [("counters/f", "999"), ("counters/f/state", '{"value":999}'),
                  ("presence/p", "999"), ("$tally/v1/sync/x", b"\x00\x01garbage"),
                  ("$tally/v1/digest/x", b"\x00"), ("$tally/stats/n1", '{"node":"n1"}')]
        for topic, payload in forged:
            for retain in (False, True):
                assert forger.publish(topic, payload, retain=retain) == 0x87, topic
        # A v3.1.1 client cannot be told, but is refused all the same.
        broker.pub("counters/f", "777", retain=True)
        broker.pub("counters/f/state", "777", retain=True)
        assert ok(forger.publish("counters/f/inc", "1"))  # still connected and counting
        broker.wait_total("f", 43)
        time.sleep(0.3)
        seen = [p for t, p, _ in watcher.messages]
        assert "999" not in seen and "777" not in seen, watcher.messages
        assert not watcher.values("presence/p")  # (an exact subscriber would be a viewer)
        state = json.loads(broker.retained("counters/f/state"))
        assert (state["value"], state["p"]) == (43, state_before["p"] + 1)

        log = broker.read_log()
        for topic, _ in forged:
            line = f"tally: refused publish from client 'forger' to '{topic}': forbidden_topic"
            assert log.count(line) == 2, line
        others = re.findall(r"refused publish from client '([^']+)' to 'counters/f': "
                            r"forbidden_topic", log)
        assert len([cid for cid in others if cid != "forger"]) == 1, others  # mosquitto_pub
    finally:
        forger.disconnect()
        watcher.close()


# ---- idempotency ------------------------------------------------------------------------------

def test_same_id_counts_once_per_counter(brokers):
    broker = brokers("n1", options={"stats_interval_ms": "200"})
    c = RawClient(broker.port, "idem")
    try:
        for _ in range(5):
            assert ok(c.publish("counters/i/inc", '{"delta":5,"id":"k1"}'))
        assert ok(c.publish("counters/j/inc", '{"delta":5,"id":"k1"}'))
        assert ok(c.publish("counters/j/inc", '{"id":"k1","delta":5}'))
        broker.wait_total("i", 5)
        broker.wait_total("j", 5)
        wait_for(lambda: stats(broker)["duplicates"] == 5, 5, what="5 duplicates in stats")
        assert stats(broker)["applied"] == 2
    finally:
        c.disconnect()


def test_dedup_window_forgets_the_oldest_id(brokers):
    broker = brokers("n1", options={"dedup_window": "3"})
    c = RawClient(broker.port, "window")
    try:
        def send(key):
            assert ok(c.publish("counters/w/inc", json.dumps({"id": key})))

        for key in ("a", "b", "c", "a"):  # a is within the last 3: once
            send(key)
        broker.wait_total("w", 3)
        send("d")  # the window is now b, c, d
        send("a")  # inserted 4 ids ago: counts again
        send("d")  # still in the window
        broker.wait_total("w", 5)
        send("b")  # window c, d, a: b counts again
        broker.wait_total("w", 6)
    finally:
        c.disconnect()


# ---- the 2^53-1 bound -------------------------------------------------------------------------

def test_overflow_is_refused_not_wrapped(broker):
    c = RawClient(broker.port, "big")
    try:
        assert ok(c.publish("counters/big/inc", str(MAX_SAFE)))
        assert c.publish("counters/big/inc", "1") == 0x87
        assert c.publish("counters/big/inc", '{"delta":1,"id":"x"}') == 0x87
        broker.wait_total("big", MAX_SAFE)
        assert ok(c.publish("counters/small/inc", str(-MAX_SAFE)))
        assert c.publish("counters/small/inc", "-1") == 0x87
        assert ok(c.publish("counters/small/inc", "1"))  # P may still grow
        broker.wait_total("small", -MAX_SAFE + 1)
        assert ok(c.publish("counters/big/inc", "-1"))  # N may still grow
        assert c.publish("counters/big/inc", "1") == 0x87  # P may not
        broker.wait_total("big", MAX_SAFE - 1)
        lines = broker.read_log().splitlines()
        for name, n in (("big", 3), ("small", 1)):
            line = f"refused publish from client 'big' to 'counters/{name}/inc': total_out_of_range"
            assert sum(1 for x in lines if x.endswith(line)) == n, name
    finally:
        c.disconnect()


def test_refused_id_is_not_remembered(broker):
    """An increment refused for overflow must not burn its idempotency key."""
    c = RawClient(broker.port, "burn")
    try:
        assert ok(c.publish("counters/o/inc", str(MAX_SAFE)))
        assert c.publish("counters/o/inc", '{"delta":1,"id":"retry"}') == 0x87
        assert ok(c.publish("counters/o/inc", "-5"))
        assert ok(c.publish("counters/o/inc", '{"delta":-1,"id":"retry"}'))
        broker.wait_total("o", MAX_SAFE - 6)
    finally:
        c.disconnect()


# ---- device reports ---------------------------------------------------------------------------

def test_device_reports_take_each_devices_largest_total(broker):
    d1 = RawClient(broker.port, "dev1")
    d2 = RawClient(broker.port, "dev2")
    try:
        for v in ("10", "7", "12"):
            assert ok(d1.publish("counters/r/report", v))
        broker.wait_total("r", 12)
        assert ok(d1.publish("counters/r/report", "12"))  # a repeat changes nothing
        assert ok(d2.publish("counters/r/report", "5"))
        broker.wait_total("r", 17)
        assert ok(d2.publish("counters/r/report", json.dumps({"device": "meter-7", "total": 100})))
        assert ok(d1.publish("counters/r/report", json.dumps({"total": 50, "device": "meter-7"})))
        broker.wait_total("r", 117)
        assert ok(d1.publish("counters/r/inc", "3"))  # increments add to reports
        broker.wait_total("r", 120)
        state = json.loads(broker.retained("counters/r/state"))
        assert state["devices"] == {"dev1": 12, "dev2": 5, "meter-7": 100}
        assert state["value"] == 120 and state["devices_total"] == 117
        assert (state["p"], state["n"]) == (3, 0)
        for bad in ("-1", "+5", "abc", "1.5", '{"device":"d"}', '{"total":5}',
                    '{"device":"","total":5}', '{"device":"d","total":-1}',
                    json.dumps({"device": "d" * 129, "total": 1})):
            assert d1.publish("counters/r/report", bad) == 0x87, bad
        broker.wait_total("r", 120)
    finally:
        d1.disconnect()
        d2.disconnect()


def test_max_devices_refuses_a_new_device(brokers):
    broker = brokers("n1", options={"max_devices": "2"})
    clients = [RawClient(broker.port, f"dev{i}") for i in (1, 2, 3)]
    try:
        assert ok(clients[0].publish("counters/a/report", "10"))
        assert ok(clients[1].publish("counters/b/report", "20"))
        assert clients[2].publish("counters/a/report", "30") == 0x87
        assert clients[0].publish("counters/a/report", json.dumps(
            {"device": "meter-9", "total": 1})) == 0x87
        assert ok(clients[0].publish("counters/a/report", "11"))
        assert ok(clients[1].publish("counters/a/report", "5"))  # known device, other counter
        broker.wait_total("a", 16)
        broker.wait_total("b", 20)
        assert ("tally: refused publish from client 'dev3' to 'counters/a/report': "
                "max_devices_reached") in broker.read_log()
    finally:
        for c in clients:
            c.disconnect()


def drop_with_will(port, client_id, topic, payload, retain):
    """Connects with a will and goes away without DISCONNECT, so that the broker sends it."""
    c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)
    c.will_set(topic, payload, 1, retain=retain)
    codes = []
    c.on_connect = lambda client, userdata, flags, rc: codes.append(rc)
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    wait_for(lambda: codes, 10, what=f"CONNACK for {client_id}")
    assert codes == [0]
    c.loop_stop()
    c.socket().close()


def test_a_will_cannot_forge_a_total_and_is_not_counted(broker):
    """A will is a publish made for the client when it is gone: one on a
    total, a state document or a page count is refused and logged as any
    such publish is, and the retained value stays. Mosquitto 2.0.11 hands
    no will to plugins, so one on counters/<name>/inc is delivered but not
    counted (README, known limits)."""
    broker.pub("counters/w/inc", "5")
    broker.wait_total("w", 5)
    spy = broker.client("spy")
    spy.subscribe("counters/w/inc")
    for i, topic in enumerate(("counters/w", "counters/w/state", "presence/home")):
        drop_with_will(broker.port, f"willer-{i}", topic, "999", True)
        line = f"refused publish from client 'willer-{i}' to '{topic}': forbidden_topic"
        wait_for(lambda: line in broker.read_log(), 10, what=line)
    drop_with_will(broker.port, "willer-inc", "counters/w/inc", "100", False)
    wait_for(lambda: spy.last("counters/w/inc") == "100", 10, what="the will on counters/w/inc")
    broker.pub("counters/w/inc", "1")
    broker.wait_total("w", 6)
    assert json.loads(broker.retained("counters/w/state"))["value"] == 6
    assert broker.retained("presence/home") != "999"
    spy.close()
