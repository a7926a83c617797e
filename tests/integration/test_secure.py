"""The shipped access-control setup, conf/secure/: each role can do what it
should and nothing more, over plain MQTT, WebSockets and TLS.

The brokers run conf/secure/mosquitto.conf and node-b.conf themselves, with
only ports, file paths and the plugin's path changed (see shipped()), and with
the password file, acl file and certificates made by the shipped scripts, so
what is tested is what is shipped.
"""
import os
import shutil
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import REPO, RawClient, free_port, wait_for

SECURE = os.path.join(REPO, "conf", "secure")
# The demo passwords make-passwords.sh documents.
PASSWORD = {
    "device": "device-demo",
    "browser": "browser-demo",
    "presser": "presser-demo",
    "tally-bridge": "bridge-demo",
    "admin": "admin-demo",
}
NOT_AUTHORIZED = 0x87
ACCEPTED = (0x00, 0x10)  # success; success with no matching subscribers
# Settings the harness writes itself, or that name paths of an installed system.
HARNESS_KEYS = {"per_listener_settings", "log_dest", "log_type", "plugin", "http_dir"}


# ==== The shipped files, made into a test's directory ====

def secure_files(workdir):
    """Runs the shipped scripts into workdir/etc and copies the shipped acl;
    returns that directory (it stands for /etc/mosquitto/tally)."""
    etc = os.path.join(workdir, "etc")
    os.makedirs(etc, exist_ok=True)
    subprocess.run([os.path.join(SECURE, "make-passwords.sh"), os.path.join(etc, "passwords")],
                   check=True, capture_output=True)
    subprocess.run([os.path.join(SECURE, "make-certs.sh"), os.path.join(etc, "certs")],
                   check=True, capture_output=True)
    shutil.copy(os.path.join(SECURE, "acl"), os.path.join(etc, "acl"))
    return etc


def shipped(conf, etc, ports):
    """A shipped config as (options, extra) for the brokers fixture: its
    plugin_opt_ lines become options (node_id aside: the harness names nodes),
    every other line goes to extra with /etc/mosquitto/tally replaced by etc
    and each shipped port by ports[port] on 127.0.0.1."""
    options, extra = {}, []
    with open(os.path.join(SECURE, conf)) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition(" ")
            if key in HARNESS_KEYS:
                continue
            if key.startswith("plugin_opt_"):
                if key != "plugin_opt_node_id":
                    options[key[len("plugin_opt_"):]] = value
                continue
            if key == "listener":
                line = f"listener {ports[value.split()[0]]} 127.0.0.1"
            elif key == "address":
                line = f"address 127.0.0.1:{ports[value.rsplit(':', 1)[1]]}"
            extra.append(line.replace("/etc/mosquitto/tally", etc))
    return options, "\n".join(extra)


class Node:
    """A broker running a shipped config, and the ports it listens on."""

    def __init__(self, brokers, name, conf, etc, ports):
        self.ports = ports
        options, extra = shipped(conf, etc, ports)
        self.broker = brokers(name, options=options, extra=extra)
        self.etc = etc
        for port in ports.values():
            wait_for(lambda: self._accepts(port), 10, what=f"{name} to listen on {port}")

    def _accepts(self, port):
        if self.broker.proc.poll() is not None:
            raise AssertionError(f"broker exited:\n{self.broker.read_log()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    @property
    def plain(self):
        return self.ports.get("11883") or self.ports["11885"]

    @property
    def ws(self):
        return self.ports.get("18080") or self.ports["18082"]

    @property
    def tls(self):
        return self.ports["8883"]


@pytest.fixture
def node(brokers, workdir):
    """One node running conf/secure/mosquitto.conf."""
    etc = secure_files(workdir)
    ports = {"11883": free_port(), "18080": free_port(), "8883": free_port()}
    return Node(brokers, "n1", "mosquitto.conf", etc, ports)


# ==== Clients that log in ====

class Session:
    """A paho client logged in as user over tcp or websockets; records what
    it receives. connected is False when the broker refused the login."""

    def __init__(self, port, user=None, password=None, transport="tcp", client_id=""):
        self.c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True,
                             transport=transport)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.messages = []
        self.lock = threading.Lock()
        self.answered = threading.Event()
        self.rc = None
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        assert self.answered.wait(10), "no CONNACK"
        self.connected = self.rc == 0

    def _on_connect(self, c, u, flags, rc):
        self.rc = rc
        self.answered.set()

    def _on_message(self, c, u, m):
        with self.lock:
            self.messages.append((m.topic, m.payload.decode(errors="replace")))

    def subscribe(self, *topics):
        for t in topics:
            assert self.c.subscribe(t, 1)[0] == mqtt.MQTT_ERR_SUCCESS

    def publish(self, topic, payload=None):
        """Publishes at QoS 1 and waits for the PUBACK (MQTT 3.1.1 acks even
        a refused publish: the effect, not the ack, tells)."""
        info = self.c.publish(topic, payload, 1)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def last(self, topic):
        with self.lock:
            return next((p for t, p in reversed(self.messages) if t == topic), None)

    def topics(self):
        with self.lock:
            return {t for t, _ in self.messages}

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


class AuthRawClient(RawClient):
    """conftest's RawClient (MQTT v5, reads PUBACK reason codes) with a login."""

    def __init__(self, port, client_id, user, password):
        self.version = 5
        self.mid = 0
        self.messages = []
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = (self._str(b"MQTT") + bytes([5, 0x02 | 0x80 | 0x40]) + (60).to_bytes(2, "big")
                + b"\x00" + self._str(client_id.encode()) + self._str(user.encode())
                + self._str(password.encode()))
        self._send(0x10, body)
        kind, _, rest = self.recv()
        assert kind == 0x20 and rest[1] == 0, f"CONNACK refused: {rest!r}"


def login(port, user, transport="tcp", **kw):
    s = Session(port, user, PASSWORD[user], transport, **kw)
    assert s.connected, f"{user} could not log in over {transport} (rc {s.rc})"
    return s


def watch(node, *topics):
    """An admin session that sees totals: the referee of every test."""
    s = login(node.plain, "admin")
    s.subscribe(*(topics or ("counters/+",)))
    return s


def wait_value(session, topic, expected, timeout=10):
    wait_for(lambda: session.last(topic) == expected, timeout,
             what=f"{topic} == {expected!r} (is {session.last(topic)!r})")


def quiet(seconds=1.0):
    """A refused message has had its chance to arrive."""
    time.sleep(seconds)


# ==== Roles ====

@pytest.mark.parametrize("transport", ["tcp", "websockets"])
def test_device_may_count_and_nothing_else(node, transport):
    port = node.plain if transport == "tcp" else node.ws
    ref = watch(node, "counters/+", "presence/+")
    dev = login(port, "device", transport, client_id=f"meter-{transport}")
    dev.subscribe("#", "counters/+", "$tally/#", "$CONTROL/#")
    dev.publish("counters/d/inc")
    dev.publish("counters/d/inc", "4")
    dev.publish("counters/d/report", "10")
    wait_value(ref, "counters/d", "15")

    dev.publish("counters/d", "999")           # a total: tally refuses
    dev.publish("counters/d/state", "{}")
    dev.publish("presence/p", "999")
    dev.publish("other/topic", "1")            # not in its acl
    dev.publish("$tally/v1/sync/zz", "x")      # only tally-bridge writes $tally/
    dev.publish("counters/d/inc", "1")
    wait_value(ref, "counters/d", "16")
    quiet()
    assert ref.last("presence/p") is None
    assert dev.topics() == set(), f"a device read {dev.topics()}"
    for s in (dev, ref):
        s.close()


def test_device_refusals_are_not_authorized_and_keep_the_connection(node):
    dev = AuthRawClient(node.plain, "meter-raw", "device", PASSWORD["device"])
    assert dev.publish("counters/r/inc", "2") in ACCEPTED
    assert dev.publish("counters/r/report", '{"device": "m7", "total": 3}') in ACCEPTED
    for topic in ("counters/r", "counters/r/state", "presence/r", "other/topic",
                  "$tally/v1/sync/zz", "$tally/stats/zz", "$CONTROL/tally/v1"):
        assert dev.publish(topic, "1") == NOT_AUTHORIZED, topic
    assert dev.ping()
    dev.disconnect()


def test_bridge_client_id_is_tally_bridges_alone(node):
    """A device cannot take a bridge's client id, which is the bridge's session
    (protect_clientids *-to-*): refused at CONNECT. tally trusts tally-bridge
    by username, whatever its id."""
    with pytest.raises(AssertionError, match=r"CONNACK refused: b'\\x00\\x87"):
        AuthRawClient(node.plain, "b-to-a", "device", PASSWORD["device"])
    assert "tally: refused login of client 'b-to-a' (username 'device')" \
           in node.broker.read_log()
    bridge = AuthRawClient(node.plain, "anything", "tally-bridge", PASSWORD["tally-bridge"])
    # Allowed through to tally, which then judges the (bogus) content.
    assert bridge.publish("$tally/v1/sync/b", "x") == NOT_AUTHORIZED
    assert "refused publish from client 'anything' to '$tally/v1/sync/b': " \
           "bad_replication_message" in node.broker.read_log()
    bridge.disconnect()
    bridge = AuthRawClient(node.plain, "b-to-a", "tally-bridge", PASSWORD["tally-bridge"])
    assert bridge.ping()
    bridge.disconnect()


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
def test_browser_reads_totals_and_views_but_cannot_count(node, transport):
    port = node.plain if transport == "tcp" else node.ws
    dev = login(node.plain, "device")
    dev.publish("counters/b/inc", "3")
    web = login(port, "browser", transport, client_id=f"web-{transport}")
    web.subscribe("counters/+", "counters/+/state", "presence/p", "$tally/stats/+")
    wait_value(web, "counters/b", "3")
    wait_value(web, "presence/p", "1")
    assert '"value":3' in web.last("counters/b/state").replace(" ", "")
    wait_for(lambda: web.last("$tally/stats/n1"), 10, what="stats")

    web.publish("counters/b/inc", "100")       # not a presser
    web.publish("counters/b/report", "100")
    web.publish("counters/b", "100")
    web.publish("presence/p", "100")
    web.publish("$CONTROL/tally/v1", "{}")
    dev.publish("counters/b/inc", "1")
    wait_value(web, "counters/b", "4")
    quiet(0.5)
    assert web.last("counters/b") == "4"
    assert web.last("presence/p") == "1"
    web.subscribe("counters/#", "$CONTROL/#")  # granted, but inc and reports never delivered
    dev.publish("counters/b/inc", "1")
    wait_value(web, "counters/b", "5")
    quiet(0.5)
    assert not {t for t in web.topics() if t.endswith(("/inc", "/report"))
                or t.startswith("$CONTROL")}, web.topics()
    for s in (dev, web):
        s.close()


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
def test_presser_is_a_browser_with_the_button(node, transport):
    port = node.plain if transport == "tcp" else node.ws
    ref = watch(node)
    presser = login(port, "presser", transport)
    presser.subscribe("counters/+", "presence/p")
    presser.publish("counters/btn/inc")
    wait_value(presser, "counters/btn", "1")
    wait_value(presser, "presence/p", "1")
    presser.publish("counters/btn/report", "50")
    presser.publish("counters/btn", "50")
    presser.publish("counters/btn/inc")
    wait_value(ref, "counters/btn", "2")
    quiet(0.5)
    assert ref.last("counters/btn") == "2"
    for s in (presser, ref):
        s.close()


def test_only_readers_of_presence_count_as_viewers(node):
    web = login(node.plain, "browser", client_id="web-1")
    web.subscribe("presence/v")
    wait_value(web, "presence/v", "1")
    dev = login(node.plain, "device", client_id="meter-1")
    dev.subscribe("presence/v")
    quiet(1.0)
    assert web.last("presence/v") == "1"
    for s in (dev, web):
        s.close()


def test_control_api_admin_for_all_readers_for_reading(node):
    """The admin may send any command; browser and presser (reader_usernames)
    only read-only ones, as the dashboard's listing does; nobody else any."""
    watch(node).close()
    login(node.plain, "device").publish("counters/ctl/inc", "7")
    request = '{"commands": [{"command": "getCounter", "name": "ctl"}]}'
    listing = '{"commands": [{"command": "listCounters", "prefix": "ct"}]}'
    admin_only = '{"commands": [{"command": "resetCounter", "name": "ctl"}]}'
    # browser may read the response topic: still, others' answers never reach it.
    spy = login(node.plain, "browser", client_id="browser-spies")
    spy.subscribe("$CONTROL/#")
    asker = login(node.plain, "admin", client_id="admin-asks")
    asker.subscribe("$CONTROL/tally/v1/response")
    asker.publish("$CONTROL/tally/v1", request)
    wait_for(lambda: '"value":7' in (asker.last("$CONTROL/tally/v1/response") or "")
             .replace(" ", ""), 10, what="the control API's answer")
    reader = login(node.plain, "browser", client_id="browser-lists")
    reader.subscribe("$CONTROL/tally/v1/response")
    reader.publish("$CONTROL/tally/v1", listing)
    wait_for(lambda: '"name":"ctl"' in (reader.last("$CONTROL/tally/v1/response") or "")
             .replace(" ", ""), 10, what="the listing's answer to browser")
    assert spy.topics() == set(), "each answer goes to the asking client alone"
    for c in (asker, spy, reader):
        c.close()
    admin = AuthRawClient(node.plain, "admin-1", "admin", PASSWORD["admin"])
    assert admin.publish("$CONTROL/tally/v1", request) in ACCEPTED
    assert admin.publish("$CONTROL/tally/v1/response", "{}") == NOT_AUTHORIZED
    assert admin.publish("counters/a/inc") == NOT_AUTHORIZED
    admin.disconnect()
    for user in ("browser", "presser"):
        c = AuthRawClient(node.plain, f"{user}-1", user, PASSWORD[user])
        assert c.publish("$CONTROL/tally/v1", request) in ACCEPTED, user
        assert c.publish("$CONTROL/tally/v1", admin_only) == NOT_AUTHORIZED, user
        c.disconnect()
    for user in ("device", "tally-bridge"):
        c = AuthRawClient(node.plain, f"{user}-1", user, PASSWORD[user])
        assert c.publish("$CONTROL/tally/v1", request) == NOT_AUTHORIZED, user
        c.disconnect()
    # Taking the admin's client id does not make a device an admin.
    c = AuthRawClient(node.plain, "admin", "device", PASSWORD["device"])
    assert c.publish("$CONTROL/tally/v1", request) == NOT_AUTHORIZED
    c.disconnect()


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
def test_strangers_are_refused(node, transport):
    port = node.plain if transport == "tcp" else node.ws
    anonymous = Session(port, transport=transport)
    wrong = Session(port, "device", "not-the-password", transport)
    unknown = Session(port, "mallory", "device-demo", transport)
    for s in (anonymous, wrong, unknown):
        assert not s.connected and s.rc == 5, s.rc  # CONNACK: not authorised
        s.close()


# ==== TLS ====

def mosquitto_pub(port, *args):
    return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                           "-t", "counters/tls/inc", "-n", *args],
                          capture_output=True, text=True, timeout=20)


def test_tls_listener(node):
    ca = os.path.join(node.etc, "certs", "ca.crt")
    ref = watch(node)
    r = mosquitto_pub(node.tls, "--cafile", ca, "-u", "device", "-P", PASSWORD["device"])
    assert r.returncode == 0, r.stderr
    wait_value(ref, "counters/tls", "1")
    plain = mosquitto_pub(node.tls, "-u", "device", "-P", PASSWORD["device"])
    anonymous = mosquitto_pub(node.tls, "--cafile", ca)
    wrong = mosquitto_pub(node.tls, "--cafile", ca, "-u", "device", "-P", "nope")
    for r in (plain, anonymous, wrong):
        assert r.returncode != 0
    quiet(0.5)
    assert ref.last("counters/tls") == "1"
    ref.close()


# ==== Bridges ====

def test_authenticated_bridge_converges(brokers, workdir):
    etc = secure_files(workdir)
    a = Node(brokers, "a", "mosquitto.conf", etc,
             {"11883": free_port(), "18080": free_port(), "8883": free_port()})
    b = Node(brokers, "b", "node-b.conf", etc,
             {"11885": free_port(), "18082": free_port(), "11883": a.plain})
    on_a, on_b = watch(a), watch(b)
    login(a.plain, "device").publish("counters/x/inc", "2")
    login(b.ws, "presser", "websockets").publish("counters/x/inc", "5")
    login(b.plain, "device", client_id="meter-9").publish("counters/x/report", "10")
    wait_value(on_a, "counters/x", "17", timeout=20)
    wait_value(on_b, "counters/x", "17", timeout=20)
    assert "forbidden_topic" not in a.broker.read_log() + b.broker.read_log()
    assert "u'tally-bridge'" in a.broker.read_log()


def test_bridge_with_a_wrong_password_is_refused(brokers, workdir):
    etc = secure_files(workdir)
    a = Node(brokers, "a", "mosquitto.conf", etc,
             {"11883": free_port(), "18080": free_port(), "8883": free_port()})
    b_ports = {"11885": free_port(), "18082": free_port(), "11883": a.plain}
    options, extra = shipped("node-b.conf", etc, b_ports)
    brokers("b", options=options,
            extra=extra.replace("remote_password bridge-demo", "remote_password wrong"))
    wait_for(lambda: "disconnected, not authorised" in a.broker.read_log(), 10,
             what="a to refuse b's bridge")
    on_a = watch(a)
    on_b = login(b_ports["11885"], "admin")
    on_b.subscribe("counters/+")
    login(a.plain, "device").publish("counters/y/inc")
    wait_value(on_a, "counters/y", "1")
    quiet(3)
    assert on_b.last("counters/y") is None


def test_an_answer_goes_only_to_the_client_that_asked(node):
    """A Response Topic must not let a client reach a topic its acl does not
    let it write: tally's publishes pass no ACL. A device (which may write
    only increments and reports) names a presser's answer topic as its own;
    the presser receives nothing, and the device still gets its answers."""
    victim = login(node.plain, "presser", client_id="victim")
    victim.subscribe("tally/resp/victim")
    attacker = mqtt.Client(client_id="meter-v5", protocol=mqtt.MQTTv5)
    attacker.username_pw_set("device", PASSWORD["device"])
    answers = []
    attacker.on_message = lambda c, u, m: answers.append((m.topic, m.payload))
    attacker.connect("127.0.0.1", node.plain, 30)
    attacker.loop_start()
    attacker.subscribe("tally/resp/meter-v5", 1)
    for response_topic in ("tally/resp/victim", "tally/resp/meter-v5"):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = b"c-1"
        attacker.publish("counters/forged/inc", '{"delta": 1}', 1,
                         properties=props).wait_for_publish(10)
    own = wait_for(lambda: [p for t, p in answers if t == "tally/resp/meter-v5"], 10,
                   what="the device's own answer")
    assert b'"result":"applied"' in own[0]
    quiet(0.5)
    assert victim.topics() == set(), f"the device reached the presser: {victim.messages}"
    attacker.disconnect()
    attacker.loop_stop()
    victim.close()
