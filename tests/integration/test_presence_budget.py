"""A page's count under presence_delivery_budget (CONTRACT.md, "Presence"): a page with a large
audience is published less often, so that its deliveries a second stay within the budget; a
viewer's own subscription still delivers the count that includes it; at rest the count is exact.

The viewers are raw MQTT clients on one node (tests/rawmqtt.py): they subscribe and never read,
which is all a viewer must do to be counted."""

import time

import pytest

from conftest import RawClient, wait_for

VIEWERS = 200
BUDGET = 400  # deliveries a second: 200 viewers get a count every 500 ms at most


@pytest.fixture
def node(brokers):
    return brokers("n1", options={"presence_delivery_budget": str(BUDGET)})


def counts(client, page):
    return [int(v) for v in client.values(f"presence/{page}")]


def test_large_audience_gets_bounded_deliveries_and_exact_count_at_rest(node):
    crowd = []
    watcher = node.client("watcher")  # presence/# : not a viewer, sees every publish
    watcher.subscribe("presence/#")
    me = node.client("me")
    try:
        for i in range(VIEWERS - 1):
            c = RawClient(node.port, f"v{i}", version=4)
            c.subscribe("presence/big")
            crowd.append(c)
        me.subscribe("presence/big")
        # my own subscription delivers a count that includes me, at once
        wait_for(lambda: me.last("presence/big") == str(VIEWERS), 3, what="the count with me")
        wait_for(lambda: watcher.last("presence/big") == str(VIEWERS), 5,
                 what="every viewer counted")

        # Arrivals: a new viewer every 50 ms for 4 s, 80 changes of the count.
        before = len(watcher.values("presence/big"))
        start = time.monotonic()
        for i in range(80):
            c = RawClient(node.port, f"late{i}", version=4)
            c.subscribe("presence/big")
            crowd.append(c)
            time.sleep(max(0.0, start + 0.05 * (i + 1) - time.monotonic()))
        elapsed = time.monotonic() - start
        published = len(watcher.values("presence/big")) - before
        # at least 500 ms between publishes (200 to 280 viewers, 400 deliveries a second),
        # plus the one in flight at each end; without the budget, one per 100 ms
        assert published <= elapsed / 0.5 + 2, (published, elapsed)
        assert published >= 2, "the count was not published at all while it changed"

        # at rest: exact, for the watcher, for me, and retained for a newcomer
        expected = str(VIEWERS + 80)
        wait_for(lambda: watcher.last("presence/big") == expected, 3, what=f"count {expected}")
        wait_for(lambda: me.last("presence/big") == expected, 3, what="my count at rest")
        assert node.retained("presence/big") == expected
        for c in crowd[-80:]:
            c.close()
        wait_for(lambda: watcher.last("presence/big") == str(VIEWERS), 5,
                 what="the late viewers gone")
    finally:
        for c in crowd:
            c.close()
        me.close()
        watcher.close()


def test_small_page_is_published_at_the_interval(node):
    watcher = node.client("watcher")
    watcher.subscribe("presence/#")
    viewers = []
    try:
        for i in range(3):  # 3 viewers: every 7.5 ms would do, publish_interval_ms rules
            c = node.client(f"s{i}")
            c.subscribe("presence/small")
            viewers.append(c)
            wait_for(lambda: watcher.last("presence/small") == str(i + 1), 2,
                     what=f"{i + 1} viewers within the interval")
    finally:
        for c in viewers:
            c.close()
        watcher.close()
