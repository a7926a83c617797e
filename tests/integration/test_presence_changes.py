"""What a node's presence announcements cost when one of many viewed pages changes (presence.c,
"Our announcements"): a change goes to the other nodes alone, in a message of its own, not with
the counts of every page the node holds; the full announcement still goes every heartbeat.

Two nodes bridged; a client on a holds PAGES views and then subscribes and unsubscribes one more
page CHANGES times. The count at b stays exact, and what a sends for replication while the page
churns, beyond what it sends at rest (its heartbeats, stats), is small per change. Before, each
change (up to one per publish_interval_ms) sent all PAGES counts again: about 35 KB here."""

import json
import time

from conftest import chain, wait_for

PAGES = 3000
CHANGES = 40
EVERY_S = 0.1
PER_CHANGE_MAX = 3000  # bytes; a full announcement of PAGES pages is about 35 KB


def page(i):
    return f"presence/page-{i:04d}"


def next_stats(client, node):
    """The next stats document node publishes from now on."""
    topic = f"$tally/stats/{node}"
    n = len(client.values(topic))
    wait_for(lambda: len(client.values(topic)) > n, 5, what=f"a new {topic}")
    return json.loads(client.last(topic))


def repl_out_since(client, node, start):
    """(bytes node sent for replication, seconds) from the stats document start to the next."""
    end = next_stats(client, node)
    return (end["repl"]["bytes_out"] - start["repl"]["bytes_out"],
            (end["uptime_ms"] - start["uptime_ms"]) / 1000)


def test_one_page_churning_among_thousands_costs_little_and_stays_exact(brokers):
    a, b = chain(brokers, ["a", "b"], options={"stats_interval_ms": "200"})
    stats = a.client("stats")
    watcher = b.client("watcher")  # presence/# at b: not a viewer, sees every count there
    holder = a.client("holder")
    try:
        stats.subscribe("$tally/stats/a")
        watcher.subscribe("presence/#")
        for start in range(0, PAGES, 500):
            result, _ = holder.c.subscribe([(page(i), 0) for i in range(start, start + 500)])
            assert result == 0
        wait_for(lambda: all(watcher.last(page(i)) == "1" for i in range(PAGES)), 20,
                 what=f"{PAGES} pages viewed once at b")

        # at rest: heartbeats (every page, once a second) and stats
        time.sleep(1.0)
        rest_start = next_stats(stats, "a")
        time.sleep(3.0)
        rest_bytes, rest_s = repl_out_since(stats, "a", rest_start)

        churn_start = next_stats(stats, "a")
        t0 = time.monotonic()
        for k in range(CHANGES):
            if k % 2 == 0:
                holder.c.subscribe("presence/churn", 0)
            else:
                holder.c.unsubscribe("presence/churn")
            time.sleep(max(0.0, t0 + EVERY_S * (k + 1) - time.monotonic()))
        churn_bytes, churn_s = repl_out_since(stats, "a", churn_start)

        extra = churn_bytes - rest_bytes / rest_s * churn_s
        assert extra / CHANGES < PER_CHANGE_MAX, (
            f"{extra / CHANGES:.0f} bytes a change ({churn_bytes} B in {churn_s:.1f} s churning, "
            f"{rest_bytes} B in {rest_s:.1f} s at rest)")

        # exact at b: the churned page left (an even number of changes), then comes back
        wait_for(lambda: watcher.last("presence/churn") == "0", 5, what="presence/churn 0 at b")
        assert set(watcher.values("presence/churn")) <= {"0", "1"}
        holder.c.subscribe("presence/churn", 0)
        wait_for(lambda: watcher.last("presence/churn") == "1", 5, what="presence/churn 1 at b")
        assert all(watcher.last(page(i)) == "1" for i in range(PAGES))
        holder.c.unsubscribe(page(7))
        wait_for(lambda: watcher.last(page(7)) == "0", 5, what=f"{page(7)} 0 at b")
        assert b.retained(page(7)) == "0" and b.retained(page(8)) == "1"
    finally:
        holder.close()
        watcher.close()
        stats.close()
