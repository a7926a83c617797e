"""Options on one broker: a bad option stops mosquitto at start with a message naming the
option and what is allowed; custom topic roots work; max_counters bounds new counters."""

import json
import re

import pytest

from conftest import RawClient, wait_for

NOT_AUTHORIZED = 0x87

# (key, value, what the log must say is allowed)
BAD_OPTIONS = [
    ("node_id", "a b", r"\[A-Za-z0-9_.-\], 1 to 64 bytes"),
    ("node_id", "n" * 65, r"\[A-Za-z0-9_.-\], 1 to 64 bytes"),
    ("node_id", "n/1", r"\[A-Za-z0-9_.-\], 1 to 64 bytes"),
    ("publish_interval_ms", "0", "an integer from 1 to 60000"),
    ("publish_interval_ms", "abc", "an integer from 1 to 60000"),
    ("publish_interval_ms", "99999999", "an integer from 1 to 60000"),
    ("publish_interval_ms", "100ms", "an integer from 1 to 60000"),
    ("max_counters", "0", "an integer from 1 to"),
    ("max_counters", "-5", "an integer from 1 to"),
    ("max_devices", "0", "an integer from 1 to"),
    ("max_viewers", "0", "an integer from 1 to"),
    ("dedup_window", "0", "an integer from 1 to"),
    ("log_rate", "0", "an integer from 1 to"),
    ("stats_interval_ms", "6000", "an integer from 100 to 5000"),
    ("sums_interval_ms", "1001", r"an integer from 0 \(publish_interval_ms\) to 1000"),
    ("sums_interval_ms", "-1", r"an integer from 0 \(publish_interval_ms\) to 1000"),
    ("sums_budget", "1000001", r"an integer from 1 to 1000000"),
    ("sums_budget", "0", r"an integer from 1 to 1000000"),  # no "0 means unlimited"
    ("publish_qos", "3", "0, 1 or 2"),
    ("acl", "maybe", "'allow' .* or 'defer'"),
    ("prefix", "a/b", "a topic level without / \\+ #"),
    ("prefix", "$c", "a topic level without / \\+ #"),
    ("presence_prefix", "p#", "a topic level"),
    ("presence_prefix", "counters", "different from prefix"),
    ("group", ".g1", r"1 to 63 bytes"),  # ".g1" would be region g1's replica
    ("region", ".r1", r"1 to 62 bytes, not starting with '.'"),
    ("region", "r1", "set with group: a region is a group of groups"),
    # A region and up to two above it, '/' between them (README, Regions of regions).
    ("region", "r1/z1/w1/v1", r"then up to two regions each above the last, '/' between them"),
    ("region", "r1//z1", r"'/' between them"),
    ("region", "r1/.z1", r"'/' between them"),
    # A light hub, a full hub of a group with light hubs, or a split hub (README, Light hubs,
    # Split hubs).
    ("hub", "lite", r"'light' \(holds its group's slots.*'split' \(every hub of the group"),
    ("hub", "light", "set with group: light and split hubs are hubs of a group"),
    ("hub", "split", "set with group: light and split hubs are hubs of a group"),
    # No bridge username: no login could take the ids, the bridges' own neither.
    ("protect_clientids", "*-to-*", "needs plugin_opt_bridge_usernames"),
]


def start_fails(brokers, options):
    b = brokers("n1", options=options, start=False)
    b.start(wait=False)
    rc = b.proc.wait(15)
    assert rc != 0
    return b.read_log()


@pytest.mark.parametrize("key,value,allowed", BAD_OPTIONS,
                         ids=[f"{k}={v[:12]!r}" for k, v, _ in BAD_OPTIONS])
def test_bad_value_stops_the_broker(brokers, key, value, allowed):
    log = start_fails(brokers, {key: value})
    pattern = rf"tally: bad value( '{re.escape(value)}')? for plugin_opt_{key}: .*{allowed}"
    assert re.search(pattern, log), log[-1500:]


def test_unknown_option_stops_the_broker_and_lists_the_known_ones(brokers):
    log = start_fails(brokers, {"publish_intervall_ms": "100"})
    assert "tally: unknown option plugin_opt_publish_intervall_ms" in log, log[-1500:]
    assert "plugin_opt_publish_interval_ms (an integer from 1 to 60000)" in log


def test_limits_are_accepted(brokers):
    broker = brokers("n1", options={"publish_interval_ms": "60000", "max_counters": "1",
                                    "node_id": "N" * 64, "acl": "allow", "log_rate": "100000"})
    assert broker.pub("counters/only/inc", "1").returncode == 0
    broker.wait_total("only", 1)  # the first change of a name is published at once


def test_custom_prefix_and_presence_prefix(brokers):
    broker = brokers("n1", options={"prefix": "ctr", "presence_prefix": "seen",
                                    "stats_interval_ms": "200"})
    watcher = broker.client("watch")
    watcher.subscribe("#")
    c = RawClient(broker.port, "custom")
    viewer = broker.client("viewer")
    try:
        assert c.publish("ctr/x/inc", "5") < 0x80
        assert c.publish("ctr/x/inc", '{"delta":-2}') < 0x80
        assert c.publish("ctr/x/inc", "nope") == NOT_AUTHORIZED
        wait_for(lambda: watcher.last("ctr/x") == "3", 5, what="ctr/x == 3")
        # the state document goes at its own pace (under ASan, a while after the total)
        wait_for(lambda: json.loads(watcher.last("ctr/x/state") or "{}").get("value") == 3, 5,
                 what="ctr/x/state at 3")
        state = json.loads(watcher.last("ctr/x/state"))
        assert (state["name"], state["value"]) == ("x", 3)
        # The default roots are ordinary topics now: passed through, not counted.
        assert c.publish("counters/x/inc", "7") < 0x80
        assert c.publish("counters/x", "7") < 0x80
        wait_for(lambda: watcher.last("counters/x") == "7", 5, what="counters/x passed through")
        assert c.publish("ctr/x", "99") == NOT_AUTHORIZED
        assert c.publish("ctr/x/state", "99") == NOT_AUTHORIZED
        assert c.publish("seen/home", "99") == NOT_AUTHORIZED
        viewer.subscribe("seen/home")
        wait_for(lambda: watcher.last("seen/home") == "1", 5, what="seen/home == 1")
        viewer.subscribe("presence/home")  # not a page under the custom root
        assert broker.total("x") is None
        assert json.loads(broker.retained("$tally/stats/n1"))["counters"] == 1
        wait_for(lambda: json.loads(broker.retained("$tally/stats/n1"))["viewers"] == 1, 5,
                 what="one viewer")
        assert watcher.values("presence/home") == []
        assert "99" not in [p for _, p, _ in watcher.messages]
    finally:
        c.disconnect()
        viewer.close()
        watcher.close()


def test_max_counters_refuses_a_new_name_only(brokers):
    broker = brokers("n1", options={"max_counters": "3"})
    c = RawClient(broker.port, "many")
    try:
        for name in ("a", "b", "c"):
            assert c.publish(f"counters/{name}/inc", "1") < 0x80
        assert c.publish("counters/d/inc", "1") == NOT_AUTHORIZED
        assert c.publish("counters/d/report", "5") == NOT_AUTHORIZED
        for name in ("a", "b", "c"):
            assert c.publish(f"counters/{name}/inc", "2") < 0x80
        assert c.publish("counters/a/report", "10") < 0x80
        for name, total in (("a", 13), ("b", 3), ("c", 3)):
            broker.wait_total(name, total)
        assert broker.total("d", timeout=1) is None
        lines = [line for line in broker.read_log().splitlines()
                 if line.endswith("tally: refused publish from client 'many' to "
                                  "'counters/d/inc': max_counters_reached")]
        assert len(lines) == 1
    finally:
        c.disconnect()
