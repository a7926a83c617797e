"""What a node's presence announcements cost when one of many viewed pages changes (presence.c,
"Our announcements"): a change goes to the other nodes alone, in a message of its own, not with
the counts of every page the node holds; and at rest (tier.c, "the heartbeat's pages"): the
heartbeat is a keepalive of a few bytes, and all the pages go only to a node that wants them.

Two nodes bridged; a client on a holds PAGES views and then subscribes and unsubscribes one more
page CHANGES times. The count at b stays exact, and what a sends for replication while the page
churns, beyond what it sends at rest (its heartbeats, stats), is small per change. Before, each
change (up to one per publish_interval_ms) sent all PAGES counts again: about 35 KB here."""

import os
import struct
import time

import pytest

from conftest import bytes_a_change, chain, next_stats, repl_out_since, wait_for
from test_cluster import Watcher, str8, varint

PAGES = 3000
CHANGES = 40
EVERY_S = 0.1
PER_CHANGE_MAX = 3000  # bytes; a full announcement of PAGES pages is about 35 KB


def page(i):
    return f"presence/page-{i:04d}"


def view_pages(stats, watcher, holder, n):
    """holder (at a) views n pages; stats follows a's stats, watcher (at b) every count, until
    b shows each of the n pages viewed once."""
    stats.subscribe("$tally/stats/a")
    watcher.subscribe("presence/#")
    for start in range(0, n, 500):
        result, _ = holder.c.subscribe([(page(i), 0) for i in range(start, min(n, start + 500))])
        assert result == 0
    wait_for(lambda: all(watcher.last(page(i)) == "1" for i in range(n)), 20,
             what=f"{n} pages viewed once at b")


def test_one_page_churning_among_thousands_costs_little_and_stays_exact(brokers):
    a, b = chain(brokers, ["a", "b"], options={"stats_interval_ms": "200"})
    stats = a.client("stats")
    watcher = b.client("watcher")  # presence/# at b: not a viewer, sees every count there
    holder = a.client("holder")
    try:
        view_pages(stats, watcher, holder, PAGES)

        # beyond what a sends at rest (heartbeats: keepalives; stats)
        per_change, how = bytes_a_change(stats, "a", holder, CHANGES, EVERY_S)
        assert per_change < PER_CHANGE_MAX, f"{per_change:.0f} bytes a change ({how})"

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


REST_PAGES = 3000
REST_SECONDS = 8.0  # more than peer_timeout_ms / 3, when all the pages went again before
REST_BYTES_MAX = 4000  # a second; all of REST_PAGES pages are about 35 KB


def test_a_node_at_rest_sends_keepalives_stays_exact_and_its_viewers_leave_when_it_dies(brokers):
    """Two nodes bridged, a client on a holds REST_PAGES views and nothing changes: a's
    heartbeats are keepalives, each with the digest of a's counts (tier.c, "the heartbeat's own
    entry"), and b wants nothing while it holds them, so a sends no page at rest: its stats (every
    200 ms here) and keepalives, 2.1-2.2 KB/s measured over REST_SECONDS (2026-12-02); 6.3 KB/s on
    the code before, which sent all the pages every peer_timeout_ms / 3, and 34.4 KB/s before
    that, every second. b's counts stay exact all along, and when a dies (SIGKILL) b drops its
    viewers within peer_timeout_ms."""
    a, b = chain(brokers, ["a", "b"], options={"stats_interval_ms": "200"})
    stats = a.client("stats")
    watcher = b.client("watcher")
    holder = a.client("holder")
    try:
        view_pages(stats, watcher, holder, REST_PAGES)
        time.sleep(1.0)
        published = sum(len(watcher.values(page(i))) for i in range(REST_PAGES))
        start = next_stats(stats, "a")
        time.sleep(REST_SECONDS)
        sent, secs = repl_out_since(stats, "a", start)
        assert sent / secs < REST_BYTES_MAX, f"a sent {sent} B in {secs:.1f} s at rest"
        print(f"at rest: a sent {sent / secs:.0f} B/s for {REST_PAGES} views")
        # exact at b all along: every page still 1, none published again meanwhile
        assert all(watcher.last(page(i)) == "1" for i in range(REST_PAGES))
        assert sum(len(watcher.values(page(i))) for i in range(REST_PAGES)) == published
        assert b.retained(page(0)) == "1" and b.retained(page(REST_PAGES - 1)) == "1"

        killed = time.monotonic()  # holder still connected: its views go with a
        a.kill()
        wait_for(lambda: watcher.last(page(0)) == "0" and watcher.last(page(REST_PAGES - 1)) == "0",
                 20, what="a's viewers dropped at b")
        took = time.monotonic() - killed
        assert took <= 15.0 + 1.5, f"a's viewers left b {took:.1f} s after it died"
        print(f"a's viewers left b {took:.1f} s after it died")
        wait_for(lambda: all(watcher.last(page(i)) == "0" for i in range(REST_PAGES)), 5,
                 what=f"all {REST_PAGES} pages 0 at b")
    finally:
        holder.close()
        watcher.close()
        stats.close()


@pytest.mark.parametrize("state", [False, True], ids=["memory", "state_dir"])
def test_a_restarted_node_gets_all_counts_at_the_next_heartbeat(brokers, workdir, state):
    """b restarts (SIGKILL): it holds none of a's viewer counts, and a's heartbeats between its
    full announcements are keepalives, every 20 s here (peer_timeout_ms 60,000). a hears b anew
    (a new incarnation; or, restarted with its state and its incarnation, stats numbered from 1
    again) and its next heartbeat carries every count: b has them within a few seconds, not at
    a's next full announcement."""
    opts = {"stats_interval_ms": "200", "peer_timeout_ms": "60000"}
    a = brokers("a", options=dict(opts, bridge_clientids="*-to-*"))
    b_opts = dict(opts, bridge_clientids="*-to-*")
    if state:
        b_opts["state_dir"] = os.path.join(workdir, "state-b")
    b = brokers("b", bridges=[{"name": "b-to-a", "port": a.port}], options=b_opts)
    holder = a.client("holder")
    watcher = b.client("watcher")
    try:
        watcher.subscribe("presence/#")
        result, _ = holder.c.subscribe([(page(i), 0) for i in range(300)])
        assert result == 0
        wait_for(lambda: all(watcher.last(page(i)) == "1" for i in range(300)), 20,
                 what="300 pages viewed once at b")
        time.sleep(2.0)  # a's last full announcement is behind it: keepalives from now
        watcher.close()
        b.kill()
        b.start()
        back = time.monotonic()
        watcher = b.client("watcher")
        watcher.subscribe("presence/#")
        wait_for(lambda: all(watcher.last(page(i)) == "1" for i in range(300)), 20,
                 what="300 pages viewed once at b after its restart")
        took = time.monotonic() - back
        print(f"b restarted ({'with' if state else 'without'} state): all counts {took:.1f} s on")
        assert took < 5.0, f"b had a's counts {took:.1f} s after it restarted"
    finally:
        holder.close()
        watcher.close()


class Reader:
    """wire.c's little-endian u64s, varints and 8-bit-length strings."""

    def __init__(self, data):
        self.data, self.p = data, 0

    def u64(self):
        self.p += 8
        return struct.unpack_from("<Q", self.data, self.p - 8)[0]

    def varint(self):
        v = shift = 0
        while True:
            b = self.data[self.p]
            self.p += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v

    def str8(self):
        n = self.data[self.p]
        self.p += n + 1
        return self.data[self.p - n:self.p].decode()


def presence_decode(payload):
    """A PRESENCE of version 4 (wire.c): its range, pages, listing, wants and carried set."""
    assert payload[:4] == b"TL\x04\x03", payload[:4]
    r = Reader(payload)
    r.p = 4
    m = {"origin": r.str8(), "incarnation": r.u64(), "seq": r.u64(), "lo": r.u64(), "hi": r.u64()}
    m["pages"] = [(r.str8(), r.varint()) for _ in range(r.varint())]
    m["listed"], m["wants"] = [], []
    if r.p < len(payload):
        m["listed"] = [{"id": r.str8(), "incarnation": r.u64(), "seq": r.varint(),
                        "digest": r.u64(), "age_ms": r.varint()} for _ in range(r.varint())]
        m["wants"] = [r.str8() for _ in range(r.varint())]
    if r.p < len(payload):  # a hub's carried set (tier.c, "The carrier's keepalive")
        flags = r.varint()
        if flags == 4:
            m["carrier"] = r.str8()
        else:
            m["carried"] = {"flags": flags, "stamp": r.u64(), "digest": r.u64(),
                            "count": r.varint(), "age_ms": r.varint()}
    assert r.p == len(payload)
    return m


def presence_keepalive(origin, seq, digest, wants=()):
    """A keepalive of node `origin` (no range, no page) with its own entry and wants, as a node
    of PRESENCE version 3 sent it (no carried set: still read)."""
    own = str8(origin) + struct.pack("<Q", 1) + varint(seq) + struct.pack("<Q", digest) + varint(0)
    return (b"TL\x03\x03" + str8(origin) + struct.pack("<QQQQ", 1, seq, 1, 0) + varint(0)
            + varint(1) + own + varint(len(wants)) + b"".join(str8(w) for w in wants))


def test_a_node_that_lacks_our_counts_wants_them_and_has_them_at_our_next_heartbeat(brokers):
    """a's heartbeats at rest are keepalives that end with a's own entry, the digest of its
    counts (tier.c, "the heartbeat's own entry"). A node that holds other counts of a (it lost a
    change, restarted, or expired a while a still heard it) wants a in its own heartbeat, and a's
    next heartbeat carries all its pages; and a wants a node whose entry shows counts a lacks.
    Here the other node is a spy (a bridge-named client: z) that speaks the wire itself."""
    a = brokers("a", options={"bridge_clientids": "*-to-*"})
    holder = a.client("holder")
    spy = Watcher(a.port, ["$tally/v1/presence/a"], client_id="z-to-a", keep=True)
    try:
        result, _ = holder.c.subscribe([(page(i), 0) for i in range(300)])
        assert result == 0
        wait_for(lambda: a.retained(page(299)) == "1", 10, what="a counts its 300 pages")

        def heard(since, test):
            return [m for m in (presence_decode(p) for _, p in spy.messages()[since:]) if test(m)]

        def full(m):
            return m["lo"] == 0 and m["lo"] <= m["hi"]

        def keepalive(m):
            return m["lo"] > m["hi"] and not m["pages"]

        # z is heard: a knows it anew and sends all its pages once; then keepalives only
        seq = 1
        spy.c.publish("$tally/v1/presence/z", presence_keepalive("z", seq, 0), 1)
        wait_for(lambda: heard(0, full), 5, what="a's full announcement to z, heard anew")
        time.sleep(2.5)
        mark = spy.count()
        time.sleep(2.5)
        rest = heard(mark, lambda m: True)
        assert rest and all(keepalive(m) for m in rest), rest
        own = [e for m in rest for e in m["listed"] if e["id"] == "a"]
        assert len(own) == len(rest) and len({e["digest"] for e in own}) == 1 and own[0]["digest"]
        assert not [m for m in rest if m["wants"]]

        # z wants a: a's next heartbeat has all its pages
        mark = spy.count()
        seq += 1
        spy.c.publish("$tally/v1/presence/z", presence_keepalive("z", seq, 0, ["a"]), 1)
        wait_for(lambda: heard(mark, full), 3, what="a's full announcement, wanted")
        first = spy.messages()[mark:]
        pages = sum(len(presence_decode(p)["pages"]) for _, p in first)
        assert pages == 300, pages

        # z's entry shows counts a lacks: a wants z; z's next shows none: a wants nothing
        mark = spy.count()
        seq += 1
        spy.c.publish("$tally/v1/presence/z", presence_keepalive("z", seq, 12345), 1)
        wait_for(lambda: heard(mark, lambda m: "z" in m["wants"]), 3, what="a wants z")
        seq += 1
        spy.c.publish("$tally/v1/presence/z", presence_keepalive("z", seq, 0), 1)
        time.sleep(0.5)
        mark = spy.count()
        time.sleep(2.5)
        assert heard(mark, keepalive) and not heard(mark, lambda m: m["wants"])
    finally:
        spy.close()
        holder.close()
