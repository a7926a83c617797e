"""Replicas named once a stream (SYNC version 5, repl.c's rule 7), on real brokers.

A node's stream of SYNCs names a replica (node id, incarnation) the first time it sends one of
its slots, then gives its number alone. In a star, a spy with a bridge's name at the hub reads
the hub's stream: no number is named twice, later messages carry numbers alone, every total is
exact and no node took a message as lost (`repl.unnamed` 0).

A stream whose naming message a node never got, forged from a client with a bridge's name: the
node applies nothing of a message it cannot resolve, counts it, and asks in its DIGEST for a
repair and for that number; once named, the number alone is taken; a new session of the same
sender is not resolved with the old one's numbers.

Repairs of a gap (DIGEST version 4): a node asks a neighbour for the messages of its stream it
lacks, from the first to the last, reaching back to an ask whose repair has not come; the
neighbour's repair holds only the entries those messages carried last, or everything when asked
for all or of another session; and a counter that took several messages of the stream, whole,
when asked for any of them.
"""
import struct
import time

from conftest import wait_for
from test_cluster import (BASE_OPTIONS, TOPOLOGIES, Closer, Watcher, captured_rounds, close,
                          closing, cluster, publish_all, publisher, read_varint, stats,  # noqa: F401
                          str8, varint)


def read_str8(b, at):
    n = b[at]
    return b[at + 1:at + 1 + n].decode(), at + 1 + n


def sync_head(msg):
    """(session, seq, [(number, name or None)], where the devices begin) of a SYNC of version 5."""
    assert msg[:4] == b"TL\x05\x01", msg[:4]
    _, at = read_str8(msg, 4)
    (session,) = struct.unpack_from("<Q", msg, at)
    seq, at = read_varint(msg, at + 8)
    count, at = read_varint(msg, at)
    reps = []
    for _ in range(count):
        key, at = read_varint(msg, at)
        name = None
        if key & 1:
            name, at = read_str8(msg, at)
            at += 8  # the incarnation
        reps.append((key >> 1, name))
    return session, seq, reps, at


def sync_replicas(msg):
    """(session, seq, [(number, name or None)]) of a SYNC of version 5."""
    return sync_head(msg)[:3]


def sync_slots(msg):
    """[(counter, how many slots)] of a SYNC of version 5 whose counters hold slots alone (no
    devices, bases or fold entries: increments only)."""
    _, _, _, at = sync_head(msg)
    devices, at = read_varint(msg, at)
    assert devices == 0
    count, at = read_varint(msg, at)
    out = []
    for _ in range(count):
        name, at = read_str8(msg, at)
        slots, at = read_varint(msg, at)
        for _ in range(3 * slots):
            _, at = read_varint(msg, at)
        assert msg[at:at + 3] == b"\0\0\0", "devices, a base or fold entries"
        out.append((name, slots))
        at += 3
    assert at == len(msg)
    return out


def sync_counters(msg):
    """The counters of a SYNC of version 5 (as sync_slots)."""
    return [name for name, _ in sync_slots(msg)]


def digest_asks(msg):
    """{node asked: (numbers to name again, since, until, session)} of a DIGEST of version 6
    (the neighbours it hears and how far, after the buckets, are not read)."""
    assert msg[:4] == b"TL\x06\x02", msg[:4]
    _, at = read_str8(msg, 4)
    _, at = read_varint(msg, at + 8)
    count, at = read_varint(msg, at)
    out = {}
    for _ in range(count):
        node, at = read_str8(msg, at)
        n, at = read_varint(msg, at)
        names = []
        for _ in range(n):
            no, at = read_varint(msg, at)
            names.append(no)
        since, at = read_varint(msg, at)
        until = session = 0
        if since:
            (session,) = struct.unpack_from("<Q", msg, at)
            span, at = read_varint(msg, at + 8)
            until = since + span
        out[node] = (names, since, until, session)
    return out


def digest_requests(msg):
    """{node asked: [numbers to name again]} of a DIGEST."""
    return {node: ask[0] for node, ask in digest_asks(msg).items()}


def forged_digest(sender, asked, since, until, session):
    """A DIGEST of version 4 (still read) from sender, of no counter, asking node `asked` for a repair of the
    SYNCs [since, until] of its stream (of session)."""
    msg = b"TL\x04\x02" + str8(sender) + struct.pack("<Q", 0) + varint(0) + varint(1)
    msg += str8(asked) + varint(0) + varint(since)
    if since:
        msg += struct.pack("<Q", session) + varint(until - since)
    return msg + varint(256) + bytes(8 * 256)


def repair_of_c(spy, node, since, until, session):
    """The repair c sends spy (a client named as node's bridge to c) when node asks c, in a
    forged DIGEST, for the SYNCs [since, until] of its stream of session: its messages."""
    seen = spy.count()
    spy.c.publish(f"$tally/v1/digest/{node}", forged_digest(node, "c", since, until, session), 1)
    wait_for(lambda: any(sync_head(m)[1] == 0 for _, m in spy.messages()[seen:]), 5,
             what="c's repair")
    time.sleep(0.5)  # all its parts
    return [m for _, m in spy.messages()[seen:] if sync_head(m)[1] == 0]


def test_a_stream_names_each_replica_once(brokers, closing):
    nodes, _, watchers = cluster(brokers, closing, TOPOLOGIES["star"])
    names = [f"names-{i}" for i in range(40)]
    spy, _ = captured_rounds(closing, watchers, nodes["a"], "spy-to-a", [nodes["b"], nodes["c"]],
                             names, 4, 200)
    streams = {}
    for topic, msg in spy.messages():
        assert topic == "$tally/v1/sync/a", topic  # a leaf's SYNCs do not pass the hub
        session, seq, reps = sync_replicas(msg)
        streams.setdefault(session, []).append((seq, reps))
    assert len(streams) == 1, f"a's stream changed session: {sorted(streams)}"
    (stream,) = streams.values()
    named, numbered = {}, 0
    for seq, reps in stream:
        for no, name in reps:
            if name is not None:
                assert no not in named, f"a named replica {no} twice ({named[no]}, then {seq})"
                named[no] = seq
            else:
                numbered += 1
    assert {"b", "c"} <= {n for _, reps in stream for _, n in reps}, "a named no replica"
    assert numbered >= len(stream) // 2, f"{numbered} numbers alone in {len(stream)} SYNCs"
    for n in nodes:
        assert stats(watchers[n], n)["repl"]["unnamed"] == 0
    print(f"a sent {len(stream)} SYNCs: {len(named)} replicas named once each, then "
          f"{numbered} times by number alone; exact totals, nothing taken as lost")


def forged(session, seq, reps, counter, p):
    """A SYNC of version 5 from node x: reps as (number, name or None); one slot of each
    replica on counter, p increments."""
    msg = b"TL\x05\x01" + str8("x") + struct.pack("<Q", session) + varint(seq) + varint(len(reps))
    for no, name in reps:
        msg += varint(no << 1 | (name is not None))
        if name is not None:
            msg += str8(name) + struct.pack("<Q", 7)
    msg += varint(0) + varint(1) + str8(counter) + varint(len(reps))
    for ref in range(len(reps)):
        msg += varint(ref) + varint(p) + varint(0)
    return msg + varint(0) + varint(0) + varint(0)


def test_a_number_never_named_is_asked_for(brokers, closing):
    node = brokers("c", options=dict(BASE_OPTIONS))
    counts = Watcher(node.port, ["counters/named", "$tally/stats/c"])
    spy = Watcher(node.port, ["$tally/v1/digest/c"], client_id="spy-to-c", keep=True)
    x = publisher(node.port, client_id="x-to-c")
    closing.extend([counts, spy, Closer(lambda: close(x))])
    wait_for(lambda: stats(counts, "c"), 10, what="c's stats")

    def send(*msg):
        publish_all(x, [("$tally/v1/sync/x", m) for m in msg], 1)

    def unnamed():
        return stats(counts, "c")["repl"]["unnamed"]

    # seq 2 of x's stream numbers replica 3, whose naming message c never got
    send(forged(1111, 2, [(3, None)], "named", 5))
    wait_for(lambda: unnamed() == 1, 5, what="c to count a SYNC it could not resolve")
    wait_for(lambda: any(digest_requests(m).get("x") == [3] for _, m in spy.messages()), 5,
             what="c's DIGEST to ask x to name replica 3 again")
    assert counts.get("counters/named") is None  # nothing of it applied
    send(forged(1111, 3, [(3, "z")], "named", 6))  # named again
    wait_for(lambda: counts.get("counters/named") == b"6", 5, what="the named slot taken")
    send(forged(1111, 4, [(3, None)], "named", 9))  # by number alone now
    wait_for(lambda: counts.get("counters/named") == b"9", 5, what="the number taken")
    send(forged(2222, 1, [(3, None)], "named", 20))  # x restarted: its numbers are new
    wait_for(lambda: unnamed() == 2, 5, what="c to refuse an old session's number")
    time.sleep(0.5)
    assert counts.get("counters/named") == b"9"
    assert stats(counts, "c")["repl"]["refused"] == 0
    print("a number never named: not applied, asked for in c's DIGEST; taken once named; "
          "not taken from the sender's next session")


def forged_stream_node(brokers, closing):
    """Node c alone, x (a client with a bridge's name) to send it SYNCs and a spy to read its
    DIGESTs: (send(*messages), the spy, a watcher of counters/gapped)."""
    node = brokers("c", options=dict(BASE_OPTIONS))
    counts = Watcher(node.port, ["counters/gapped"])
    spy = Watcher(node.port, ["$tally/v1/digest/c"], client_id="spy-to-c", keep=True)
    x = publisher(node.port, client_id="x-to-c")
    closing.extend([counts, spy, Closer(lambda: close(x))])

    def send(*msg):
        publish_all(x, [("$tally/v1/sync/x", m) for m in msg], 1)
    return send, spy, counts


def test_a_gap_is_asked_for_from_the_first_message_lacked(brokers, closing):
    send, spy, counts = forged_stream_node(brokers, closing)

    def asked(since, until, *msgs):
        """Sends msgs; waits for a DIGEST of c's asking x for the SYNCs [since, until]."""
        seen = spy.count()
        send(*msgs)
        wait_for(lambda: any("x" in digest_asks(m) for _, m in spy.messages()[seen:]), 5,
                 what=f"c to ask x for {since}-{until}")
        asks = [digest_asks(m)["x"] for _, m in spy.messages()[seen:] if "x" in digest_asks(m)]
        want = (since, until, 1111 if since else 0)
        assert asks[0][1:] == want, f"c asked x {asks[0]}, not {want}"

    asked(0, 0, forged(1111, 1, [(3, "z")], "gapped", 5))  # all of a stream first heard
    wait_for(lambda: counts.get("counters/gapped") == b"5", 5, what="x's first SYNC taken")
    send(forged(1111, 0, [(3, "z")], "gapped", 5))  # x's repair: the ask is closed
    time.sleep(0.3)
    asked(2, 3, forged(1111, 4, [(3, None)], "gapped", 9))  # 2 and 3 lost
    wait_for(lambda: counts.get("counters/gapped") == b"9", 5, what="seq 4 taken")
    asked(2, 5, forged(1111, 6, [(3, None)], "gapped", 10))  # 5 lost; 2's repair has not come
    send(forged(1111, 0, [(3, "z")], "gapped", 10))  # x's repair: the ask is closed
    time.sleep(0.3)
    asked(7, 7, forged(1111, 8, [(3, None)], "gapped", 11))  # 7 lost
    wait_for(lambda: counts.get("counters/gapped") == b"11", 5, what="seq 8 taken")
    print("c asked x for the SYNCs it lacked, from the first gap on while its repair had not "
          "come, and for the next gap's alone once it had")


def test_a_repair_holds_what_the_messages_asked_for_carried(brokers, closing):
    node = brokers("c", options=dict(BASE_OPTIONS))
    counts = Watcher(node.port, ["counters/+"])
    x = Watcher(node.port, ["$tally/v1/sync/c"], client_id="x-to-c", keep=True)
    inc = publisher(node.port)
    closing.extend([counts, x, Closer(lambda: close(inc))])
    early = [f"early-{i}" for i in range(30)]
    publish_all(inc, [(f"counters/{n}/inc", "1") for n in early], 1)
    wait_for(lambda: all(counts.get(f"counters/{n}") == b"1" for n in early), 10,
             what="the early counters")

    def stream():
        return [(sync_head(m)[:2], sync_counters(m)) for _, m in x.messages()]
    wait_for(lambda: set(early) <= {n for _, names in stream() for n in names}, 10,
             what="c's stream to carry the early counters")
    publish_all(inc, [("counters/late/inc", "1")], 1)
    wait_for(lambda: any("late" in names for _, names in stream()), 10,
             what="c's stream to carry late")
    ((session, late_seq),) = {head for head, names in stream() if "late" in names}
    assert all(seq < late_seq for (_, seq), names in stream() if set(names) & set(early))

    def repair(since, until, of_session):
        msgs = repair_of_c(x, "x", since, until, of_session)
        return sorted(n for m in msgs for n in sync_counters(m)), sum(len(m) for m in msgs)

    just_late, small = repair(late_seq, late_seq, session)
    assert just_late == ["late"], just_late
    before_late, _ = repair(1, late_seq - 1, session)
    assert before_late == sorted(early), before_late
    whole, large = repair(0, 0, 0)
    assert whole == sorted(early + ["late"]), whole
    other, _ = repair(late_seq, late_seq, session ^ 1)  # of another session: all of it
    assert other == whole
    print(f"a repair of seq {late_seq} of c's stream held late alone ({small} B), of seqs 1 to "
          f"{late_seq - 1} the early counters alone; of all, or of another session, all "
          f"{len(whole)} counters ({large} B)")


def test_a_counter_split_over_syncs_is_repaired_whole_from_any_of_them(brokers, closing):
    """c learns 300 slots of big from x at once and forwards them to its other neighbour y in
    one write, over several SYNCs of at most 4096 bytes (naming 300 replicas takes more); each
    slot is marked with the last of them (repl.c, rule 4a), and the SYNCs that ended within big
    are noted (r->continued). Asked for the first of them alone, as y would after losing it, c
    repairs big whole, not only what that message ended with."""
    node = brokers("c", options=dict(BASE_OPTIONS, max_message_bytes="4096"))
    counts = Watcher(node.port, ["counters/big", "counters/warm"])
    y = Watcher(node.port, ["$tally/v1/sync/c"], client_id="y-to-c", keep=True)
    x = publisher(node.port, client_id="x-to-c")
    closing.extend([counts, y, Closer(lambda: close(x))])
    # x names its 300 replicas (in two messages: one would pass 4096 bytes), on warm, while c
    # has no other neighbour to forward them to
    publish_all(x, [("$tally/v1/sync/x", forged(1111, 1 + k, [(i, f"r{i}") for i in range(
        150 * k, 150 * k + 150)], "warm", 1)) for k in (0, 1)], 1)
    wait_for(lambda: counts.get("counters/warm") == b"300", 10, what="c to take warm")
    # y is heard (a DIGEST asking nothing); then big's 300 slots come in one message
    quiet = b"TL\x04\x02" + str8("y") + struct.pack("<Q", 5) + varint(0) + varint(0)
    y.c.publish("$tally/v1/digest/y", quiet + varint(256) + bytes(8 * 256), 1)
    time.sleep(0.5)
    publish_all(x, [("$tally/v1/sync/x", forged(1111, 3, [(i, None) for i in range(300)],
                                                "big", 1))], 1)
    wait_for(lambda: counts.get("counters/big") == b"300", 10, what="c to take big")

    def carried(msgs):
        return sum(n for m in msgs for name, n in sync_slots(m) if name == "big")
    wait_for(lambda: carried(m for _, m in y.messages()) >= 300, 10,
             what="c's stream to y to carry big's 300 slots")
    parts = [(sync_head(m)[:2], m) for _, m in y.messages()
             if sync_head(m)[1] and "big" in sync_counters(m)]
    assert len(parts) >= 2, f"big took {len(parts)} SYNC of c's"
    (session,) = {head[0] for head, _ in parts}
    first = min(head[1] for head, _ in parts)
    repair = repair_of_c(y, "y", first, first, session)
    assert carried(repair) == 300, f"the repair held {carried(repair)} of big's 300 slots"
    print(f"big took {len(parts)} SYNCs of c's (from seq {first}); a repair of seq {first} "
          f"alone held all 300 of its slots, in {len(repair)} messages")
