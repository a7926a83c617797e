"""A bridge's client id is also its MQTT session: a client connecting with it
takes the session over and cuts the bridge. With `protect_clientids`, tally
refuses such a login at CONNECT unless it gives a `bridge_usernames` username
(whose password `password_file` still checks), and leaves every other login to
Mosquitto exactly as before.

Without it (the old code), a client taking `b-to-a` every 0.2 s on the shipped
cluster kept node a from hearing node b for as long as it went on."""
import json
import signal
import socket
import threading
import time

import pytest

from conftest import wait_for
from shipped import PASSWORD, make_passwords
from test_shipped_cluster import cluster, count  # noqa: F401  (the shipped cluster fixture)

ACCEPTED, NOT_AUTHORISED = 0, 5  # MQTT 3.1.1 CONNACK return codes
V5_NOT_AUTHORISED = 0x87
ATTACK_PERIOD_S = 0.2


def _str(b):
    return len(b).to_bytes(2, "big") + b


def _remaining_length(n):
    out = b""
    while True:
        n, digit = n >> 7, n & 0x7F
        out += bytes([digit | (0x80 if n else 0)])
        if not n:
            return out


def connect(port, client_id, username=None, password=None, version=4):
    """A raw CONNECT (version 3: MQTT 3.1, 4: 3.1.1, 5); (CONNACK return or
    reason code, the open socket)."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    name = b"MQIsdp" if version == 3 else b"MQTT"
    body = _str(name) + bytes([version, flags]) + (60).to_bytes(2, "big")
    body += (b"\x00" if version == 5 else b"") + _str(client_id.encode())
    if username is not None:
        body += _str(username.encode())
    if password is not None:
        body += _str(password.encode())
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x10" + _remaining_length(len(body)) + body)
    ack = b""
    while len(ack) < 4:
        chunk = s.recv(4 - len(ack))
        if not chunk:
            break
        ack += chunk
    assert ack[:1] == b"\x20", f"no CONNACK for {client_id!r}: {ack!r}"
    return ack[3], s


def connack(port, client_id, username=None, password=None, version=4):
    code, s = connect(port, client_id, username, password, version)
    s.close()
    return code


class Attack:
    """Every ATTACK_PERIOD_S, a new connection per (port, id), each held open
    until the next: what cut the bridges before protect_clientids."""

    def __init__(self, targets):
        self.targets, self.codes, self.rounds = targets, [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        held = []
        while not self.stop.is_set():
            for port, client_id in self.targets:
                code, s = connect(port, client_id)
                self.codes.append((client_id, code))
                held.append(s)
            while len(held) > len(self.targets):
                held.pop(0).close()
            self.rounds += 1
            self.stop.wait(ATTACK_PERIOD_S)
        for s in held:
            s.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(15)


def test_a_client_taking_bridge_ids_is_refused_and_the_nodes_keep_converging(cluster):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    count(c, "likes", 1)
    for node in (a, b, c):
        node.wait_total("likes", 1, timeout=20)
    # The bridges' ids where they log in, and their local sides (local.<id>),
    # which are sessions on the bridging node itself.
    targets = [(a.port, "b-to-a"), (b.port, "c-to-b"), (b.port, "local.b-to-a"),
               (c.port, "local.c-to-b")]
    with Attack(targets) as attack:
        wait_for(lambda: attack.rounds >= 5, 10, what="a second of the attack")
        started = time.monotonic()
        count(b, "likes", 2)
        count(c, "likes", 3)
        # Bounded: one hop or two plus a broker loop, far less than a
        # reconnecting bridge's backoff (restart_timeout 1 10).
        a.wait_total("likes", 6, timeout=8)
        b.wait_total("likes", 6, timeout=8)
        took = time.monotonic() - started
        assert attack.thread.is_alive(), "the attack ended before the totals arrived"
        wait_for(lambda: attack.rounds >= 25, 15, what="five seconds of the attack")
    print(f"totals arrived at a {took:.2f} s into the attack; {attack.rounds} rounds of "
          f"{len(targets)} connections")
    assert attack.codes and all(code == NOT_AUTHORISED for _, code in attack.codes), attack.codes
    for node in (a, b, c):
        log = node.read_log()
        assert "already connected, closing old connection" not in log, f"{node.name} cut"
    assert "tally: refused login of client 'b-to-a' (username '')" in a.read_log()
    assert "tally: refused login of client 'local.b-to-a'" in b.read_log()
    # A bridge with the right username and password still takes its id (the
    # bridge's own session is taken over: a real bridge reconnecting does that).
    assert connack(a.port, "b-to-a", "tally-bridge", PASSWORD["tally-bridge"]) == ACCEPTED
    count(b, "likes", 4)
    for node in (a, b, c):
        node.wait_total("likes", 10, timeout=30)


# (client id, username, password): every kind of login, on ids tally
# protects (*-to-*) and on ids it does not.
LOGINS = [
    (cid, user, pw)
    for cid in ("dev-1", "b-to-a", "local.b-to-a")
    for user, pw in ((None, None), ("device", PASSWORD["device"]), ("device", "wrong"),
                     ("device", None), ("nobody", "x"),
                     ("tally-bridge", PASSWORD["tally-bridge"]), ("tally-bridge", "wrong"))
]


def outcomes(broker, version=4):
    return {login: connack(broker.port, *login, version=version) for login in LOGINS}


@pytest.mark.parametrize("anonymous", ["true", "false"])
def test_every_other_login_is_decided_as_without_protect_clientids(brokers, workdir, anonymous):
    passwords = make_passwords(f"{workdir}/passwords")
    extra = f"allow_anonymous {anonymous}\npassword_file {passwords}\n"
    plain = brokers("plain", options={"bridge_usernames": "tally-bridge"}, extra=extra)
    guarded = brokers("guarded", extra=extra, options={"bridge_usernames": "tally-bridge",
                                                       "protect_clientids": "*-to-*"})
    before, after = outcomes(plain), outcomes(guarded)
    changed = {login for login in LOGINS if before[login] != after[login]}
    protected_not_bridge = {(cid, user, pw) for cid, user, pw in LOGINS
                            if "-to-" in cid and user != "tally-bridge"}
    # What the password file and allow_anonymous decide, without tally:
    assert before[("dev-1", None, None)] == (ACCEPTED if anonymous == "true" else NOT_AUTHORISED)
    assert before[("dev-1", "device", PASSWORD["device"])] == ACCEPTED
    assert before[("dev-1", "device", "wrong")] == NOT_AUTHORISED
    assert before[("b-to-a", "tally-bridge", PASSWORD["tally-bridge"])] == ACCEPTED
    # With tally: the protected ids are refused to everyone but the bridges'
    # user, and nothing else changes, the bridges' wrong password included.
    assert all(after[login] == NOT_AUTHORISED for login in protected_not_bridge), after
    assert changed == {login for login in protected_not_bridge if before[login] == ACCEPTED}
    assert after[("b-to-a", "tally-bridge", "wrong")] == NOT_AUTHORISED
    # MQTT v5 clients are refused alike (reason code 0x87).
    assert connack(guarded.port, "b-to-a", version=5) == V5_NOT_AUTHORISED
    assert connack(guarded.port, "b-to-a", "tally-bridge", PASSWORD["tally-bridge"],
                   version=5) == ACCEPTED
    # A reload (SIGHUP) registers password_file's check again, still after
    # tally's: every login is decided as before it.
    guarded.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "Reloading config." in guarded.read_log(), 10, what="the reload")
    assert outcomes(guarded) == after


def test_with_no_password_file_logins_with_a_username_are_refused(brokers):
    """README's limit, as it is: with nothing else deciding logins (no
    password_file, no auth plugin), Mosquitto 2.0.11 refuses a login with a
    username once any plugin joins the login check, and lets it in without."""
    options = {"bridge_usernames": "tally-bridge"}
    plain = brokers("plain", options=options)
    guarded = brokers("guarded", options={**options, "protect_clientids": "*-to-*"})
    assert connack(plain.port, "dev-1", "anyone", "x") == ACCEPTED
    assert connack(guarded.port, "dev-1", "anyone", "x") == NOT_AUTHORISED
    assert connack(guarded.port, "dev-1") == ACCEPTED
    assert connack(guarded.port, "b-to-a") == NOT_AUTHORISED


def stats(broker):
    raw = broker.retained(f"$tally/stats/{broker.name}")
    return json.loads(raw) if raw else {}


def test_a_flood_of_refused_logins_is_counted_logged_under_log_rate_and_stalls_nothing(
        brokers, workdir):
    """Hundreds of logins taking protected ids, over MQTT 3.1, 3.1.1 and 5, with
    a reload (SIGHUP) in the middle: each is refused and counted once in the
    stats (logins_refused), the log holds at most log_rate of them a second
    and says how many it left out, logins tally defers are not counted, and
    an ordinary client keeps counting meanwhile."""
    passwords = make_passwords(f"{workdir}/passwords")
    node = brokers("n1", extra=f"allow_anonymous true\npassword_file {passwords}\n",
                   options={"bridge_usernames": "tally-bridge", "protect_clientids": "*-to-*",
                            "log_rate": "5", "stats_interval_ms": "200"})
    # (id, username, password, MQTT version, refused by tally)
    logins = [("b-to-a", None, None, 3, True), (f"{'x' * 5000}-to-a", None, None, 4, True),
              ("é-to-€", "device", PASSWORD["device"], 5, True),
              ("b-to-a", "tally-bridge", "wrong", 4, False),  # password_file refuses it
              ("B-TO-A", None, None, 4, False)]  # not protected (case matters, as for sessions)
    rounds, codes = 60, []
    counter = node.client("counter")
    sighup_at = rounds // 2

    def flood(worker):
        for i in range(rounds):
            if worker == 0 and i == sighup_at:
                node.proc.send_signal(signal.SIGHUP)
            for cid, user, pw, version, _ in logins:
                codes.append((cid, version, connack(node.port, cid, user, pw, version=version)))

    started = time.monotonic()
    workers = [threading.Thread(target=flood, args=(w,)) for w in range(2)]
    for w in workers:
        w.start()
    acked = []
    while any(w.is_alive() for w in workers):
        info = counter.publish("counters/likes/inc", "1")
        info.wait_for_publish(5)
        acked.append(info.is_published())
        time.sleep(0.05)
    for w in workers:
        w.join(60)
    took = time.monotonic() - started
    counter.close()
    assert acked and all(acked), "an increment was not acknowledged during the flood"
    node.wait_total("likes", len(acked), timeout=10)
    assert "Reloading config." in node.read_log()

    refused = 2 * rounds * sum(1 for login in logins if login[4])
    for cid, version, code in codes:
        protected = "-to-" in cid
        want = (V5_NOT_AUTHORISED if version == 5 else NOT_AUTHORISED) if protected else ACCEPTED
        assert code == want, (cid[:20], version, code)
    wait_for(lambda: stats(node).get("logins_refused") == refused, 10,
             what=f"logins_refused {refused} (is {stats(node).get('logins_refused')})")
    assert stats(node)["rejected_total"] == 0  # logins are not publishes

    # Past the window the flood filled, one more refusal brings the line that
    # says how many were left out.
    def summed():
        connack(node.port, "b-to-a")
        return "more refusals not logged in the last second" in node.read_log()
    wait_for(summed, 10, interval=0.3, what="the line counting refusals left out of the log")
    lines = node.read_log().count("tally: refused login of client")
    assert 5 <= lines <= 5 * (int(took) + 15), f"{lines} refusal lines in {took:.1f} s"


def test_a_reload_keeps_the_options_a_restart_applies(brokers, workdir):
    """README (Options): Mosquitto 2.0.11 reloads no plugin on SIGHUP, so a
    changed protect_clientids takes effect at the next start, not before."""
    passwords = make_passwords(f"{workdir}/passwords")
    node = brokers("n1", extra=f"allow_anonymous true\npassword_file {passwords}\n",
                   options={"bridge_usernames": "tally-bridge", "protect_clientids": "*-to-*"})
    assert (connack(node.port, "b-to-a"), connack(node.port, "x-1")) == (NOT_AUTHORISED, ACCEPTED)
    node.options["protect_clientids"] = "x-*"
    with open(node.conf, "w") as f:
        f.write(node.config())
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "Reloading config." in node.read_log(), 10, what="the reload")
    assert (connack(node.port, "b-to-a"), connack(node.port, "x-1")) == (NOT_AUTHORISED, ACCEPTED)
    node.stop()
    node.start()
    assert (connack(node.port, "b-to-a"), connack(node.port, "x-1")) == (ACCEPTED, NOT_AUTHORISED)
