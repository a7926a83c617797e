"""Read-your-writes (issue 16): an increment or report that carries an MQTT v5
Response Topic is answered there, with its Correlation Data, by a real broker
with the plugin, over TCP and over WebSockets: the total on this node after
it and whether it was applied, a duplicate or unchanged, or the exact reason
it was refused. A response topic tally must not publish to is not answered,
and the input is still handled."""
import itertools
import json
import socket
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import RawClient, wait_for

MAX_SAFE = 2**53 - 1


class Requester:
    """An MQTT v5 paho client that subscribes to its own response topic and
    publishes increments and reports carrying it; answers are kept by their
    Correlation Data."""

    def __init__(self, port, transport="tcp", client_id=None):
        self.id = client_id or f"rr-{uuid.uuid4().hex[:8]}"
        self.topic = f"tally/resp/{self.id}"
        self.answers = {}
        self.uncorrelated = []
        self.lock = threading.Lock()
        self.seq = itertools.count(1)
        self.c = mqtt.Client(client_id=self.id, protocol=mqtt.MQTTv5, transport=transport)
        subscribed = threading.Event()
        connected = threading.Event()
        self.c.on_connect = lambda *a, **k: connected.set()
        self.c.on_subscribe = lambda *a, **k: subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        assert connected.wait(10), f"{self.id} did not connect over {transport}"
        self.c.subscribe(self.topic, 1)
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client, userdata, m):
        corr = getattr(m.properties, "CorrelationData", None)
        with self.lock:
            if corr is None:
                self.uncorrelated.append(m.payload)
            else:
                self.answers[bytes(corr)] = (m.topic, json.loads(m.payload))

    def send(self, topic, payload="", response_topic=None):
        """Publishes with a Response Topic (ours unless given) and fresh
        Correlation Data; returns the correlation data."""
        corr = f"c-{next(self.seq)}".encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic or self.topic
        props.CorrelationData = corr
        info = self.c.publish(topic, payload, 1, properties=props)
        info.wait_for_publish(10)
        assert info.is_published()
        return corr

    def ask(self, topic, payload=""):
        """Publishes and waits for the answer; returns it as a dict."""
        corr = self.send(topic, payload)
        got = wait_for(lambda: self.answers.get(corr), 10, what=f"an answer to {topic}")
        assert got[0] == self.topic
        return got[1]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(params=["tcp", "websockets"])
def node_and_port(request, brokers):
    node = brokers("n1", ws=True, options={"max_counters": "3"})
    port = node.port if request.param == "tcp" else node.ws_port
    wait_for(lambda: listening(port), 10, what=f"port {port} listening")
    return node, port, request.param


def listening(port):
    """The broker opens its WebSocket listener after the plain one."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_applied_duplicate_and_unchanged_carry_the_total(node_and_port):
    node, port, transport = node_and_port
    rr = Requester(port, transport)
    assert rr.ask("counters/likes/inc") == {"name": "likes", "result": "applied", "value": 1}
    assert rr.ask("counters/likes/inc", "41") == {"name": "likes", "result": "applied",
                                                  "value": 42}
    keyed = json.dumps({"delta": 5, "id": "k-1"})
    assert rr.ask("counters/likes/inc", keyed)["value"] == 47
    assert rr.ask("counters/likes/inc", keyed) == {"name": "likes", "result": "duplicate",
                                                   "value": 47}
    assert rr.ask("counters/likes/inc", "-50") == {"name": "likes", "result": "applied",
                                                   "value": -3}
    # A 0 increment creates the counter and answers its total.
    assert rr.ask("counters/zero/inc", "0") == {"name": "zero", "result": "applied", "value": 0}
    # Reports: the device is the client id, or named in JSON.
    assert rr.ask("counters/likes/report", "10") == {"name": "likes", "result": "applied",
                                                     "value": 7}
    assert rr.ask("counters/likes/report", "9") == {"name": "likes", "result": "unchanged",
                                                    "value": 7}
    meter = json.dumps({"device": "meter-7", "total": 100})
    assert rr.ask("counters/likes/report", meter)["value"] == 107
    assert rr.ask("counters/likes/report", meter)["result"] == "unchanged"
    node.wait_total("likes", 107)
    assert rr.uncorrelated == []
    rr.close()


REFUSALS = [
    ("counters/$x/inc", "1", None, "name_starts_with_dollar"),
    ("counters/likes/inc", "abc", "likes", "not_an_integer"),
    ("counters/likes/inc", str(MAX_SAFE + 1), "likes", "delta_out_of_range"),
    ("counters/likes/inc", '{"detla": 1}', "likes", "bad_json_field"),
    ("counters/likes/inc", '{"delta": 1', "likes", "bad_json"),
    ("counters/likes/inc", json.dumps({"id": "x" * 65}), "likes", "bad_id"),
    ("counters/likes/inc", str(MAX_SAFE), "likes", "total_out_of_range"),
    ("counters/likes/report", "-1", "likes", "not_an_integer"),
    ("counters/likes/report", json.dumps({"device": "", "total": 1}), "likes", "bad_device"),
    ("counters/c3/inc", "1", "c3", "max_counters_reached"),
]


def test_each_refusal_is_answered_with_its_reason(node_and_port):
    node, port, transport = node_and_port
    rr = Requester(port, transport)
    for name in ("likes", "c1", "c2"):  # max_counters is 3
        assert rr.ask(f"counters/{name}/inc", "5")["result"] == "applied"
    for topic, payload, name, reason in REFUSALS:
        want = {"result": "refused", "reason": reason}
        if name:
            want["name"] = name
        assert rr.ask(topic, payload) == want, (topic, payload)
    # Nothing refused changed a total, and the client is still connected.
    assert rr.ask("counters/likes/inc", "0") == {"name": "likes", "result": "applied",
                                                 "value": 5}
    assert node.read_log().count("refused publish from client") >= len(REFUSALS)
    rr.close()


def test_forbidden_response_topics_are_not_answered(brokers):
    """The plugin's publishes pass no ACL: an answer must never land on a
    total, a state document, a page count or under $ (replication, $SYS,
    $CONTROL); the input itself is still applied."""
    node = brokers("n1")
    node.pub("counters/likes/inc", "5")
    node.wait_total("likes", 5)
    spy = node.client("spy")
    spy.subscribe("#")
    spy.subscribe("$CONTROL/#")
    rr = Requester(node.port)
    forbidden = ["counters/likes", "counters/likes/state", "counters/other", "counters",
                 "presence/home", "$tally/v1/sync/n1", "$SYS/x", "$CONTROL/tally/v1/response",
                 "tally/+/x", "tally/#"]
    sent = [rr.send("counters/likes/inc", "1", response_topic=t) for t in forbidden]
    node.wait_total("likes", 5 + len(forbidden))
    # An ordinary answer after them proves they were handled (in order) and not answered.
    assert rr.ask("counters/likes/inc", "0")["value"] == 5 + len(forbidden)
    assert not any(c in rr.answers for c in sent)
    with spy.lock:
        seen = [(t, p) for t, p, _ in spy.messages if t != rr.topic]
    # Every answer holds "result"; no message the spy saw does.
    assert seen and not any('"result"' in p for _, p in seen), seen
    assert node.total("likes") == 5 + len(forbidden)
    wait_for(lambda: node.read_log().count("refused response topic from client") >= 8, 5,
             what="forbidden response topics logged")
    assert node.proc.poll() is None
    rr.close()
    spy.close()


def test_no_response_topic_no_answer(brokers):
    """A v5 publish without a Response Topic, and a v3.1.1 one, get no answer."""
    node = brokers("n1")
    rr = Requester(node.port)
    rr.c.publish("counters/q/inc", "1", 1).wait_for_publish(10)
    node.pub("counters/q/inc", "2")
    node.wait_total("q", 3)
    assert rr.ask("counters/q/inc")["value"] == 4
    assert rr.uncorrelated == [] and len(rr.answers) == 1
    rr.close()


def publish_with_response_topic(client, topic, payload, response_topic, corr=b"c-1"):
    """An MQTT v5 QoS 1 PUBLISH with a Response Topic and Correlation Data,
    written by hand (paho sends no empty Response Topic); returns the PUBACK
    reason code."""
    props = (b"\x08" + client._str(response_topic) + b"\x09" + client._str(corr))
    mid = client._next_mid()
    body = (client._str(topic.encode()) + mid.to_bytes(2, "big") + bytes([len(props)]) + props
            + payload)
    client._send(0x32, body)
    ans = client._expect(0x40, mid)
    return ans[2] if len(ans) > 2 else 0


def ping_keeping(client):
    """A round trip that keeps the PUBLISHes arriving before the PINGRESP."""
    client._send(0xC0, b"")
    while True:
        kind, flags, body = client.recv()
        if kind == 0x30:
            client.messages.append(client.take_publish(flags, body))
        elif kind == 0xD0:
            return True


def test_an_empty_response_topic_is_not_answered(brokers):
    """An empty Response Topic is no topic: answering it sent the asking
    client a PUBLISH with a zero-length topic name, a malformed packet
    (MQTT 5 section 4.7.3). It is refused and logged as other forbidden
    response topics are; the increment still counts."""
    node = brokers("n1")
    c = RawClient(node.port, "empty-rt")
    try:
        assert publish_with_response_topic(c, "counters/e/inc", b"2", b"") < 0x80
        assert publish_with_response_topic(c, "counters/e/inc", b"3", b"tally/resp/empty-rt",
                                           b"c-2") < 0x80
        wait_for(lambda: ping_keeping(c) and c.messages, 5,
                 what="the answer to the second increment")
        assert [(t, json.loads(p)["value"]) for t, p, _ in c.messages] == \
            [("tally/resp/empty-rt", 5)]
        node.wait_total("e", 5)
        wait_for(lambda: "refused response topic from client 'empty-rt' to ''" in node.read_log(),
                 5, what="the empty response topic logged")
    finally:
        c.disconnect()
