"""The control API on $CONTROL/tally/v1: admins list counters and read one
counter's per-node, per-incarnation and per-device breakdown; everyone else
is refused, and answers go to the asking client only."""
import json
import subprocess
import time

from conftest import wait_for

REQUEST = "$CONTROL/tally/v1"
RESPONSE = "$CONTROL/tally/v1/response"


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
    assert listed["data"]["totalCount"] == 2
    assert sorted((c["name"], c["value"]) for c in listed["data"]["counters"]) == [
        ("votes-no", -2), ("votes-yes", 5)]
    assert page["data"]["totalCount"] == 3 and len(page["data"]["counters"]) == 1
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


def test_non_admins_are_refused_and_logged(brokers):
    node = brokers("n1", options={"admin_usernames": "admin"})
    seed(node)
    for user in ("eve", None):
        rc, resp = ask(node, [{"command": "listCounters"}], username=user, v5=True)
        assert resp is None, resp
    wait_for(lambda: node.read_log().count(
        "to '$CONTROL/tally/v1': forbidden_topic") >= 2, 5, what="refusals logged")
    # Without any admin configured, nobody may use the API.
    bare = brokers("n2")
    rc, resp = ask(bare, [{"command": "listCounters"}])
    assert resp is None


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
