"""Bad input on one broker: every class of refusal in the contract leaves totals unchanged,
answers an MQTT v5 client with reason 0x87 without disconnecting it, is logged once with the
client id, the topic and the reason, and is counted in $tally/stats rejected{reason}. A flood of
bad input is logged at most log_rate lines a second, and the broker keeps serving."""

import json
import os
import random
import re
import socket
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import RawClient, wait_for

MAX_SAFE = 2**53 - 1
NOT_AUTHORIZED = 0x87

# (topic, payload, reason): every kind of increment or report the plugin must refuse.
BAD = [
    ("counters//inc", "1", "name_empty"),
    ("counters/" + "a" * 201 + "/inc", "1", "name_too_long"),
    ("counters/" + "é" * 100 + "a/inc", "1", "name_too_long"),  # 201 bytes, 101 characters
    ("counters/a/b/inc", "1", "name_bad_char"),
    ("counters/$x/inc", "1", "name_starts_with_dollar"),
    ("counters/ok/inc", "abc", "not_an_integer"),
    ("counters/ok/inc", "1.5", "not_an_integer"),
    ("counters/ok/inc", "1e3", "not_an_integer"),
    ("counters/ok/inc", " 5", "not_an_integer"),
    ("counters/ok/inc", "5 ", "not_an_integer"),
    ("counters/ok/inc", "--1", "not_an_integer"),
    ("counters/ok/inc", "+", "not_an_integer"),
    ("counters/ok/inc", "0x10", "not_an_integer"),
    ("counters/ok/inc", "[1]", "not_an_integer"),
    ("counters/ok/inc", "\u0665", "not_an_integer"),  # an Arabic-Indic digit
    ("counters/ok/inc", '{"delta":1.5}', "not_an_integer"),
    ("counters/ok/inc", str(MAX_SAFE + 1), "delta_out_of_range"),
    ("counters/ok/inc", str(-MAX_SAFE - 1), "delta_out_of_range"),
    ("counters/ok/inc", "9" * 40, "delta_out_of_range"),
    ("counters/ok/inc", json.dumps({"delta": MAX_SAFE + 1}), "delta_out_of_range"),
    ("counters/ok/inc", '{"delta":1e300}', "delta_out_of_range"),
    ("counters/ok/inc", "{", "bad_json"),
    ("counters/ok/inc", '{"delta":}', "bad_json"),
    ("counters/ok/inc", '{"delta":1', "bad_json"),
    ("counters/ok/inc", '{"detla":5}', "bad_json_field"),
    ("counters/ok/inc", '{"delta":1,"extra":true}', "bad_json_field"),
    ("counters/ok/inc", '{"delta":"5"}', "bad_json_field"),
    ("counters/ok/inc", '{"delta":null}', "bad_json_field"),
    ("counters/ok/inc", json.dumps({"delta": 1, "id": "k" * 65}), "bad_id"),
    ("counters/ok/inc", '{"delta":1,"id":""}', "bad_id"),
    ("counters/ok/inc", '{"delta":1,"id":7}', "bad_id"),
    # issue 10 #8: a NUL cut "order-1\u0000-pear" down to "order-1", so it was dropped as a
    # duplicate of "order-1\u0000-apple"; control characters are refused as in names
    ("counters/ok/inc", '{"delta":1,"id":"order-1\\u0000-apple"}', "bad_id"),
    ("counters/ok/inc", '{"delta":1,"id":"order-1\\u0000-pear"}', "bad_id"),
    ("counters/ok/inc", '{"delta":1,"id":"k\\u0007"}', "bad_id"),
    ("counters/ok/inc", '{"id":"k\\u0085","delta":1}', "bad_id"),
    # a raw NUL in a JSON string cut it as \u0000 did (cJSON copies it), and a raw control
    # character is not JSON (RFC 8259); cJSON took either for white space between tokens
    ("counters/ok/inc", b'{"delta":1,"id":"order-1\x00-plum"}', "bad_json"),
    ("counters/ok/inc", b'{"delta\x00x":1}', "bad_json"),
    ("counters/ok/inc", b'{\x01"delta":1}', "bad_json"),
    ("counters/ok/inc", "1" + "0" * 1024, "payload_too_large"),
    ("counters/ok/inc", '{"delta":1}' + " " * 1020, "payload_too_large"),
    ("counters/ok/report", "-1", "not_an_integer"),
    ("counters/ok/report", "x", "not_an_integer"),
    ("counters/ok/report", '{"device":"d","total":-1}', "delta_out_of_range"),
    ("counters/ok/report", '{"device":"d"}', "bad_json_field"),
    ("counters/ok/report", json.dumps({"device": "d" * 129, "total": 1}), "bad_device"),
    ("counters/ok/report", '{"device":"a\\u0001","total":1}', "bad_device"),
    ("counters/ok/report", '{"device":"meter-1\\u0000-a","total":1}', "bad_device"),
    ("counters/ok/report", '{"total":1,"device":"meter-1\\u0000-b"}', "bad_device"),
    ("counters/ok/report", b'{"device":"\xff\xfe","total":1}', "bad_device"),
    ("counters/ok/report", b'{"device":"meter-1\x00-c","total":1}', "bad_json"),
    ("counters/ok/report", "1" * 1025, "payload_too_large"),
]


def stats(broker):
    raw = broker.retained(f"$tally/stats/{broker.name}")
    return json.loads(raw) if raw else {}


def refusal(client_id, topic, reason):
    return f"tally: refused publish from client '{client_id}' to '{topic}': {reason}"


def log_count(broker, text):
    """How many log lines end with text (reasons such as bad_json prefix others)."""
    return sum(1 for line in broker.read_log().splitlines() if line.endswith(text))


@pytest.fixture
def fast(brokers):
    """A broker that logs every refusal and publishes its stats often."""
    return brokers("n1", options={"stats_interval_ms": "200", "log_rate": "10000"})


def test_every_bad_input_is_refused_and_the_client_goes_on(fast):
    c = RawClient(fast.port, "bad-client")
    try:
        assert c.publish("counters/ok/inc", "100") < 0x80
        expected_total = 100
        for topic, payload, reason in BAD:
            rc = c.publish(topic, payload)
            assert rc == NOT_AUTHORIZED, (topic, payload[:40], reason, rc)
            assert c.publish("counters/ok/inc", "1") < 0x80  # same connection, still counting
            expected_total += 1
        fast.wait_total("ok", expected_total)
        state = json.loads(fast.retained("counters/ok/state"))
        assert state["devices"] == {} and state["p"] == expected_total

        want = {}
        for topic, _, reason in BAD:
            line = refusal("bad-client", topic, reason)
            want[line] = want.get(line, 0) + 1
        for line, n in want.items():
            got = log_count(fast, line)
            assert got == n, f"{line!r} logged {got} times, want {n}"

        by_reason = {}
        for _, _, reason in BAD:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        wait_for(lambda: stats(fast).get("rejected_total") == len(BAD), 5,
                 what=f"rejected_total {len(BAD)} (stats {stats(fast).get('rejected')})")
        rejected = stats(fast)["rejected"]
        for reason, n in by_reason.items():
            assert rejected[reason] == n, (reason, rejected)
        assert stats(fast)["applied"] == len(BAD) + 1
        lister = fast.client("lister")
        lister.subscribe("counters/+")
        wait_for(lambda: lister.messages, 5, what="counters/+")
        time.sleep(0.3)
        lister.close()
        assert lister.messages == [("counters/ok", str(expected_total), True)]  # nothing else
    finally:
        c.disconnect()


def test_a_raw_nul_does_not_make_two_ids_one(fast):
    """cJSON copies a raw NUL byte into a string, which C then ends there:
    "order-9<NUL>-pear" was taken for a duplicate of "order-9" and dropped
    with a success PUBACK, and "meter-9<NUL>-b" reported as meter-9."""
    c = RawClient(fast.port, "nul-client")
    try:
        assert c.publish("counters/n/inc", '{"delta":1,"id":"order-9"}') < 0x80
        assert c.publish("counters/n/report", '{"device":"meter-9","total":5}') < 0x80
        assert c.publish("counters/n/inc", b'{"delta":1,"id":"order-9\x00-pear"}') \
            == NOT_AUTHORIZED
        assert c.publish("counters/n/report", b'{"device":"meter-9\x00-b","total":7}') \
            == NOT_AUTHORIZED
        assert c.publish("counters/n/inc", '{"delta":1,"id":"order-9-pear"}') < 0x80
        fast.wait_total("n", 7)
        state = json.loads(fast.retained("counters/n/state"))
        assert state["p"] == 2 and state["devices"] == {"meter-9": 5}, state
        st = wait_for(lambda: stats(fast).get("applied") == 2 and stats(fast), 5,
                      what="stats after the two increments")
        assert st["duplicates"] == 0, st
    finally:
        c.disconnect()


def test_json_followed_by_anything_but_whitespace_is_refused(fast):
    """A payload is one JSON object or not JSON at all: '{"delta":2}garbage' must not count 2."""
    c = RawClient(fast.port, "trailing")
    try:
        for payload in ('{"delta":2}garbage', '{"delta":2}{"delta":3}', '{"delta":2},'):
            assert c.publish("counters/t/inc", payload) == NOT_AUTHORIZED, payload
        assert log_count(fast, refusal("trailing", "counters/t/inc", "bad_json")) == 3
        assert c.publish("counters/t/inc", '{"delta":2} \n\t') < 0x80
        fast.wait_total("t", 2)
    finally:
        c.disconnect()


def test_names_at_the_limits_are_accepted(fast):
    c = RawClient(fast.port, "limits")
    names = ["a" * 200, "é" * 100, "with space", "ünï😀", "x.y-z_1", "a$"]
    try:
        for name in names:
            assert c.publish(f"counters/{name}/inc", "2") < 0x80, name
            assert c.publish(f"counters/{name}/inc", json.dumps({"id": "i" * 64})) < 0x80
        for name in names:
            fast.wait_total(name, 3)
        assert c.publish("counters/ok/inc", str(MAX_SAFE)) < 0x80
        assert c.publish("counters/ok2/inc", json.dumps({"delta": -MAX_SAFE})) < 0x80
        assert c.publish("counters/ok3/inc", "+0") < 0x80
        assert c.publish("counters/ok3/inc", "-0") < 0x80
        assert c.publish("counters/ok3/inc", " " * 1000 + '{"delta":3}') < 0x80
        fast.wait_total("ok", MAX_SAFE)
        fast.wait_total("ok2", -MAX_SAFE)
        fast.wait_total("ok3", 3)
        assert "refused" not in fast.read_log()
    finally:
        c.disconnect()


def test_a_v311_client_is_not_disconnected_by_bad_input(fast):
    c = fast.client("v311")
    try:
        for payload in ("abc", "{", str(MAX_SAFE + 1), "1" * 2000):
            c.publish("counters/v/inc", payload, qos=1).wait_for_publish()
        c.publish("counters/v/inc", "3", qos=1).wait_for_publish()
        fast.wait_total("v", 3)
        assert c.c.is_connected()
        assert log_count(fast, refusal("v311", "counters/v/inc", "payload_too_large")) == 1
    finally:
        c.close()


def test_malformed_utf8_topic_is_dropped_by_mosquitto_and_totals_stay(fast):
    """Mosquitto itself disconnects a client whose topic is not valid UTF-8 (MQTT 1.5.4)
    before the plugin sees it; the broker and the totals are unaffected."""
    fast.pub("counters/u/inc", "4")
    fast.wait_total("u", 4)
    for topic in (b"counters/\xff/inc", b"counters/\xc3/inc", b"counters/\xed\xa0\x80/inc",
                  b"counters/a\x01/inc", b"counters/a\x00b/inc"):
        c = RawClient(fast.port, "utf8")
        try:
            c.publish(topic, "1000")
        except ConnectionError:
            pass
        else:
            raise AssertionError(f"{topic!r} was answered")
        finally:
            c.close()
    assert fast.pub("counters/u/inc", "1").returncode == 0
    fast.wait_total("u", 5)


def test_a_flood_of_bad_input_is_rate_limited_in_the_log(brokers):
    broker = brokers("n1", options={"stats_interval_ms": "200"})  # log_rate 20
    n = 5000
    lines = [f"bad{i}" for i in range(n)]
    t0 = time.monotonic()
    flood = subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t",
                              "counters/flood/inc", "-q", "1", "-l", "-i", "flooder"],
                             stdin=subprocess.PIPE, text=True)
    good = RawClient(broker.port, "good")
    try:
        flood.stdin.write("\n".join(lines) + "\n")
        flood.stdin.close()
        # The broker keeps answering others while the flood goes on.
        for _ in range(5):
            t = time.monotonic()
            assert good.publish("counters/fine/inc", "1") < 0x80
            assert time.monotonic() - t < 2
        assert flood.wait(60) == 0
        elapsed = time.monotonic() - t0
        time.sleep(1.1)  # the next refusal closes the last window and reports its count
        assert good.publish("counters/flood/inc", "still bad") == NOT_AUTHORIZED
        broker.wait_total("fine", 5)
        assert broker.retained("counters/flood", timeout=1) is None
        wait_for(lambda: stats(broker).get("rejected", {}).get("not_an_integer") == n + 1, 10,
                 what="every refusal counted in stats")

        log = broker.read_log()
        refused = re.findall(r"^(\d+): tally: refused publish from client '(\w+)' to "
                             r"'counters/flood/inc': not_an_integer$", log, re.M)
        summaries = [int(x) for x in re.findall(
            r"tally: (\d+) more refusals not logged in the last second", log)]
        assert summaries, "no summary of the refusals left out"
        assert len(refused) + sum(summaries) == n + 1
        assert {cid for _, cid in refused} <= {"flooder", "good"}
        windows = int(elapsed) + 3
        assert len(refused) <= 20 * windows, (len(refused), elapsed)
        per_second = {}
        for ts, _ in refused:
            per_second[ts] = per_second.get(ts, 0) + 1
        assert max(per_second.values()) <= 40, per_second  # two windows may share a second
    finally:
        if flood.poll() is None:
            flood.kill()
        good.disconnect()


def http_exchange(port, request):
    """Sends raw bytes to a listener; returns what comes back before it closes or goes
    quiet for a second."""
    s = socket.create_connection(("127.0.0.1", port), timeout=1)
    s.sendall(request)
    answer = b""
    try:
        while len(answer) < 1_000_000:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    except OSError:  # quiet for a second, or reset by the broker
        pass
    s.close()
    return answer


def test_the_websocket_listener_serves_nothing_outside_http_dir_and_survives_garbage(
        brokers, workdir):
    """The dashboard's listener (http_dir) as an attacker sees it: paths that climb out of
    http_dir, an oversized header, bytes that are not HTTP, and WebSocket frames that are
    not MQTT or claim 2^62 bytes. Nothing outside http_dir is served, and the broker goes
    on counting for TCP and WebSocket clients."""
    www = os.path.join(workdir, "www")
    os.makedirs(www)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("dashboard")
    with open(os.path.join(workdir, "secret.txt"), "w") as f:
        f.write("not-for-you")
    node = brokers("n1", ws=True, http_dir=www)

    def page_served():
        try:  # the WebSocket listener opens after the plain one
            return http_exchange(node.ws_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") \
                .endswith(b"dashboard")
        except ConnectionRefusedError:
            return False
    wait_for(page_served, 10, what="the page served")
    upgrade = (b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")
    for path in (b"/../secret.txt", b"/%2e%2e/secret.txt", b"/..%2fsecret.txt",
                 b"//../secret.txt", b"/./../secret.txt", b"/index.html/../../secret.txt"):
        answer = http_exchange(node.ws_port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"not-for-you" not in answer, (path, answer[:200])
    rng = random.Random(7)
    for attack in (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 100_000 + b"\r\n\r\n",
                   bytes(rng.randrange(256) for _ in range(5000)),
                   upgrade + bytes(rng.randrange(256) for _ in range(3000)),
                   upgrade + b"\x82\xff" + (2**62).to_bytes(8, "big") + b"mask" + b"x" * 100):
        http_exchange(node.ws_port, attack)
    assert RawClient(node.port, "after-garbage").publish("counters/g/inc", "2") < 0x80
    ws = mqtt.Client(client_id="ws-after-garbage", transport="websockets")
    ws.connect("127.0.0.1", node.ws_port, 30)
    ws.loop_start()
    ws.publish("counters/g/inc", "3", 1).wait_for_publish(10)
    ws.disconnect()
    ws.loop_stop()
    node.wait_total("g", 5)
    assert node.proc.poll() is None
