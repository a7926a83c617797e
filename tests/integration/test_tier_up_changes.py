"""What an edge's UPs cost when one of many viewed pages changes (tier.c, "Edge: the pages that
changed"): the UP carries that page's hash range alone, not the edge's whole page list.

Two hubs (h1, h2, a cluster of two), edge e1 on h1, edge e2 on h2. A client on e1 views PAGES
pages (one SUBSCRIBE); then it subscribes and unsubscribes one more page CHANGES times, 10 times
a second. What e1 sends (its stats' repl.bytes_out: its UPs) while the page churns, beyond what
it sends at rest (heartbeat UPs), is small per change; viewers stay exact at both hubs and at
e2, whose own viewer watches the churned page. Before, each change sent all PAGES pages again:
11,609-12,551 B a change here (the code before, 2026-12-02; 42-48 B after)."""

from conftest import bytes_a_change, wait_for
from test_tiers import OPTIONS, edge_bridge

PAGES = 500
CHANGES = 40
EVERY_S = 0.1
PER_CHANGE_MAX = 1000  # bytes; the whole list of PAGES pages is about 11 KB


def page(i):
    return f"presence/a-page-of-the-site-{i:04d}"


def test_one_page_churning_at_an_edge_costs_its_range_alone_and_stays_exact(brokers):
    opts = dict(OPTIONS, stats_interval_ms="200")
    h1 = brokers("h1", options=dict(opts))
    h2 = brokers("h2", options=dict(opts), bridges=[{"name": "h2-to-h1", "port": h1.port}])
    e1 = brokers("e1", options=dict(opts, role="edge"), extra=edge_bridge("e1", (h1, h2)))
    e2 = brokers("e2", options=dict(opts, role="edge"), extra=edge_bridge("e2", (h2, h1)))
    stats = e1.client("stats")
    holder = e1.client("holder")
    at_h1, at_h2 = h1.client("watch-h1"), h2.client("watch-h2")  # presence/#: not viewers
    other = e2.client("other")  # a viewer of the churned page at e2
    clients = [stats, holder, at_h1, at_h2, other]
    try:
        stats.subscribe("$tally/stats/e1")
        at_h1.subscribe("presence/#")
        at_h2.subscribe("presence/#")
        other.subscribe("presence/churn")
        result, _ = holder.c.subscribe([(page(i), 0) for i in range(PAGES)])
        assert result == 0
        for w in (at_h1, at_h2):
            wait_for(lambda: all(w.last(page(i)) == "1" for i in range(PAGES)), 20,
                     what=f"{PAGES} pages viewed once at both hubs")
        wait_for(lambda: other.last("presence/churn") == "1", 10, what="presence/churn 1 at e2")

        # beyond what e1 sends at rest (heartbeat UPs, no page list, and stats)
        per_change, how = bytes_a_change(stats, "e1", holder, CHANGES, EVERY_S)
        print(f"e1 sent {per_change:.0f} B a change beyond its rest ({how})")
        assert per_change < PER_CHANGE_MAX, f"{per_change:.0f} bytes a change ({how})"

        # exact everywhere: e1's viewer of the churned page left (an even number of changes),
        # e2's stays; then e1's comes back
        for w in (at_h1, at_h2, other):
            wait_for(lambda: w.last("presence/churn") == "1", 5, what="presence/churn 1")
            assert set(w.values("presence/churn")) <= {"1", "2"}
        holder.c.subscribe("presence/churn", 0)
        for w in (at_h1, at_h2, other):
            wait_for(lambda: w.last("presence/churn") == "2", 5, what="presence/churn 2")
        assert all(w.last(page(i)) == "1" for w in (at_h1, at_h2) for i in range(PAGES))
        # a page left: 0 at both hubs, the others stay
        holder.c.unsubscribe(page(7))
        for w in (at_h1, at_h2):
            wait_for(lambda: w.last(page(7)) == "0", 5, what=f"{page(7)} 0 at the hubs")
        assert h2.retained(page(7)) == "0" and h2.retained(page(8)) == "1"
    finally:
        for c in clients:
            c.close()
