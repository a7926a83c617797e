"""Persistence: nothing acknowledged is lost, nothing is counted twice.

Every test runs a real broker with plugin_opt_state_dir in its temp directory, kills it with
SIGKILL (or stops it with SIGTERM, which writes a snapshot) and starts it again on the same
directory. See plugin/persist.c for the file format these tests damage on purpose.
"""
import json
import os
import signal
import struct
import subprocess
import threading
import time
import zlib

import paho.mqtt.client as mqtt
import pytest

from conftest import LOAD, RawClient, wait_for

HEADER_LEN = 12  # "TALLYLOG" / "TALLYSNP" + u32 version


class AckClient:
    """A QoS 1 publisher that records which of its messages got a PUBACK.

    Nothing is retried by the client library: once the broker is killed, the test calls
    abandon() and only what was acknowledged before counts as acknowledged.
    """

    def __init__(self, port, client_id, inflight=200):
        self.c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
        self.c.max_inflight_messages_set(inflight)
        self.c.max_queued_messages_set(0)
        self.lock = threading.Lock()
        self.acked_mids = set()
        self.mid_key = {}
        self.connected = threading.Event()
        self.c.on_connect = lambda *a: self.connected.set()
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        assert self.connected.wait(10), "publisher did not connect"

    def _on_publish(self, c, u, mid):
        with self.lock:
            self.acked_mids.add(mid)

    def send(self, topic, payload, key):
        info = self.c.publish(topic, payload, qos=1)
        with self.lock:
            self.mid_key[info.mid] = key

    def acked(self):
        with self.lock:
            return {self.mid_key[m] for m in self.acked_mids if m in self.mid_key}

    def wait_acked(self, n, timeout=30):
        wait_for(lambda: len(self.acked()) >= n, timeout, what=f"{n} PUBACKs")

    def abandon(self):
        """Stops the network loop at once (no reconnect, no resend) and drops the socket."""
        self.c.loop_stop()
        try:
            self.c.socket() and self.c.socket().close()
        except OSError:
            pass

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def persisted(brokers, workdir, name="n1", **options):
    opts = {"state_dir": os.path.join(workdir, f"state-{name}")}
    opts.update(options)
    return brokers(name, options=opts)


def stream_then_kill(b, n, payload_of, kill_after):
    """Publishes n QoS 1 increments, SIGKILLs the broker once kill_after are acknowledged;
    returns the keys (0..n-1) of the acknowledged ones."""
    pub = AckClient(b.port, "streamer")
    sender = threading.Thread(
        target=lambda: [pub.send("counters/stream/inc", payload_of(i), i) for i in range(n)])
    sender.start()
    pub.wait_acked(kill_after)
    b.kill()
    pub.abandon()
    sender.join(30)
    acked = pub.acked()
    assert kill_after <= len(acked) < n, f"the kill came too late: {len(acked)} of {n} acked"
    return acked


def publish_all_acked(port, items, client_id="retrier"):
    """Publishes (topic, payload) items at QoS 1 and waits for every PUBACK."""
    pub = AckClient(port, client_id)
    for i, (topic, payload) in enumerate(items):
        pub.send(topic, payload, i)
    pub.wait_acked(len(items))
    pub.close()


def test_kill9_mid_stream_with_ids_keeps_acked_and_dedups_retries(brokers, workdir):
    b = persisted(brokers, workdir)
    n = 3000
    acked = stream_then_kill(b, n, lambda i: json.dumps({"delta": 1, "id": f"s-{i}"}), 800)
    b.start()
    # What was acknowledged survived the kill, and nothing else appeared.
    total = wait_for(lambda: b.total("stream"), 10, what="a total after restart")
    assert len(acked) <= total <= n
    # Retry everything unacknowledged, plus every acknowledged one again: the applied-but-
    # unacknowledged ones and the repeats must be dropped by the persisted dedup window.
    retry = [i for i in range(n) if i not in acked] + sorted(acked)[:500]
    publish_all_acked(b.port, [("counters/stream/inc", json.dumps({"delta": 1, "id": f"s-{i}"}))
                               for i in retry])
    b.wait_total("stream", n)
    print(f"acked before kill: {len(acked)}, total after restart: {total}, retried {len(retry)}")


def test_applied_but_unacknowledged_then_kill9_retries_are_not_counted_twice(brokers, workdir):
    """The worst case of the stream above, made certain: the broker applies every increment
    but the client never reads a PUBACK (a raw socket that only writes), then the broker is
    killed. The client must retry all of them; the window restored from disk drops them all."""
    b = persisted(brokers, workdir)
    n = 500
    raw = RawClient(b.port, "raw", version=4)
    try:
        for i in range(n):
            raw.publish_nowait("counters/raw/inc", json.dumps({"delta": 3, "id": f"u-{i}"}))
        b.wait_total("raw", 3 * n)
        b.kill()
    finally:
        raw.close()
    b.start()
    b.wait_total("raw", 3 * n)
    publish_all_acked(b.port, [("counters/raw/inc", json.dumps({"delta": 3, "id": f"u-{i}"}))
                               for i in range(n)])
    time.sleep(0.3)
    b.wait_total("raw", 3 * n)


def test_kill9_mid_stream_without_ids_is_bounded(brokers, workdir):
    b = persisted(brokers, workdir)
    n = 3000
    acked = stream_then_kill(b, n, lambda i: "1", 800)
    b.start()
    total = wait_for(lambda: b.total("stream"), 10, what="a total after restart")
    print(f"acked {len(acked)} of {n}, total after restart {total}")
    assert len(acked) <= total <= n


def test_fsync_every_change_survives_kill9(brokers, workdir):
    b = persisted(brokers, workdir, fsync_interval_ms="0")
    acked = stream_then_kill(b, 1000, lambda i: json.dumps({"id": f"f-{i}"}), 200)
    b.start()
    total = wait_for(lambda: b.total("stream"), 10, what="a total after restart")
    assert len(acked) <= total <= 1000


def fill(b, counters=5, per=20):
    items = [(f"counters/c{k}/inc", json.dumps({"delta": k + 1, "id": f"k{k}-{i}"}))
             for i in range(per) for k in range(counters)]
    publish_all_acked(b.port, items)
    for k in range(counters):
        b.wait_total(f"c{k}", (k + 1) * per)


def state_file(workdir, name, file):
    return os.path.join(workdir, f"state-{name}", file)


def records(path):
    """(offset, length) of every whole record in a state file (state.log is allocated ahead:
    zeros after its last record)."""
    with open(path, "rb") as f:
        data = f.read()
    out, off = [], HEADER_LEN
    while off + 8 <= len(data):
        n, crc = struct.unpack_from("<II", data, off)
        if n == 0 or off + 8 + n > len(data) or zlib.crc32(data[off + 8:off + 8 + n]) != crc:
            break
        out.append((off, n))
        off += 8 + n
    return data, out


def assert_totals(b, counters=5, per=20):
    for k in range(counters):
        assert b.total(f"c{k}") == (k + 1) * per


def tally_lines(b):
    return "\n".join(line for line in b.read_log().splitlines() if "tally:" in line)


def assert_refuses_to_start(b, *needles):
    b.start(wait=False)
    wait_for(lambda: b.proc.poll() is not None or b._listening(), 20, what="exit or listen")
    assert b.proc.poll() is not None, "started on damaged state:\n" + tally_lines(b)
    assert b.proc.returncode != 0
    log = b.read_log()
    for needle in needles:
        assert needle in log, f"{needle!r} not in the log:\n{log[-2000:]}"


@pytest.mark.parametrize("tail", [
    pytest.param(b"\x17\x00\x00", id="3-garbage-bytes"),
    pytest.param(struct.pack("<II", 40, 0xDEADBEEF) + b"S\x02c9", id="partial-record"),
    pytest.param(None, id="last-record-cut-short"),
])
def test_torn_log_tail_is_cut_with_a_warning(brokers, workdir, tail):
    b = persisted(brokers, workdir)
    fill(b)
    b.kill()
    log = state_file(workdir, "n1", "state.log")
    if tail is None:
        data, recs = records(log)
        off, n = recs[-1]
        # The last record holds c4's state only: cut it and c4 loses its last increment at
        # most, so write it again as a duplicate first (same state, idempotent).
        with open(log, "ab") as f:
            f.write(data[off:off + 8 + n])
        os.truncate(log, os.path.getsize(log) - 3)
    else:
        with open(log, "ab") as f:
            f.write(tail)
    b.start()
    assert "torn last record" in b.read_log()
    assert "state.log" in b.read_log()
    assert_totals(b)
    # The log is usable again: another increment and another kill keep everything.
    publish_all_acked(b.port, [("counters/c0/inc", "5")])
    b.wait_total("c0", 25)
    b.kill()
    b.start()
    b.wait_total("c0", 25)


@pytest.mark.parametrize("tail", [
    pytest.param(b"\x00" * 64, id="zero-filled"),
    pytest.param(b"garbage bytes!", id="ascii-garbage"),
])
def test_garbage_tail_whose_length_field_is_insane_is_still_a_torn_tail(brokers, workdir, tail):
    """A power loss can leave the end of the file zero-filled (the size grew, the data never
    reached the disk); a torn write can leave any bytes. Neither is damage in the middle."""
    b = persisted(brokers, workdir)
    fill(b)
    b.kill()
    with open(state_file(workdir, "n1", "state.log"), "ab") as f:
        f.write(tail)
    b.start(wait=False)
    wait_for(lambda: b.proc.poll() is not None or b._listening(), 10, what="start or exit")
    assert b.proc.poll() is None, "refused to start on a torn tail:\n" + tally_lines(b)
    if tail.strip(b"\x00"):  # zeros are the log's space allocated ahead: cut silently
        assert "torn last record" in b.read_log()
    assert_totals(b)


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x5A]))


def test_corrupted_snapshot_refuses_to_start(brokers, workdir):
    b = persisted(brokers, workdir)
    fill(b)
    assert b.stop() == 0
    snap = state_file(workdir, "n1", "state.snap")
    data, recs = records(snap)
    assert data[:8] == b"TALLYSNP" and len(recs) >= 6
    off, n = recs[len(recs) // 2]
    flip(snap, off + 8 + n // 2)  # inside the payload: the CRC no longer matches
    assert_refuses_to_start(b, "state.snap", f"damaged at offset {off}", "refusing to start")


def test_truncated_snapshot_refuses_to_start(brokers, workdir):
    b = persisted(brokers, workdir)
    fill(b)
    b.stop()
    snap = state_file(workdir, "n1", "state.snap")
    os.truncate(snap, os.path.getsize(snap) - 10)  # the end record is gone
    assert_refuses_to_start(b, "state.snap", "damaged at offset", "refusing to start")


def test_corrupted_log_in_the_middle_refuses_to_start(brokers, workdir):
    b = persisted(brokers, workdir)
    fill(b)
    b.kill()
    log = state_file(workdir, "n1", "state.log")
    data, recs = records(log)
    assert len(recs) >= 50
    off, n = recs[len(recs) // 2]
    flip(log, off + 8 + n // 2)
    assert_refuses_to_start(b, "state.log", f"damaged at offset {off}", "refusing to start")


def test_log_length_field_damaged_in_the_middle_refuses_to_start(brokers, workdir):
    """A length field in the middle that now points past the end of the file is damage in
    the middle, not a torn tail: cutting there would drop every record after it."""
    b = persisted(brokers, workdir)
    fill(b)
    b.kill()
    log = state_file(workdir, "n1", "state.log")
    data, recs = records(log)
    off, n = recs[len(recs) // 2]
    with open(log, "r+b") as f:
        f.seek(off + 2)
        f.write(b"\x08")  # length += 512 KiB: past the end of the file, below the record cap
    assert_refuses_to_start(b, "state.log", f"damaged at offset {off}", "refusing to start")


def test_repeated_ids_after_restart_are_not_counted(brokers, workdir):
    b = persisted(brokers, workdir)
    first = [("counters/d/inc", json.dumps({"delta": 2, "id": f"r-{i}"})) for i in range(50)]
    publish_all_acked(b.port, first)
    b.wait_total("d", 100)
    b.kill()  # the window must come back from the log ...
    b.start()
    publish_all_acked(b.port, first)
    publish_all_acked(b.port, [("counters/d/inc", json.dumps({"delta": 2, "id": "r-new"}))])
    b.wait_total("d", 102)
    assert b.stop() == 0  # ... and from the snapshot
    b.start()
    publish_all_acked(b.port, first + [("counters/d/inc", json.dumps({"delta": 2, "id": "r-new"}))])
    time.sleep(0.5)
    b.wait_total("d", 102)
    # An id is scoped to its counter: the same id on another counter counts.
    publish_all_acked(b.port, [("counters/e/inc", json.dumps({"delta": 2, "id": "r-1"}))])
    b.wait_total("e", 2)


def test_totals_survive_clean_stop_and_a_second_kill(brokers, workdir):
    b = persisted(brokers, workdir)
    fill(b)
    assert b.stop() == 0
    b.start()
    assert_totals(b)
    assert records(state_file(workdir, "n1", "state.log"))[1] == []  # all in the snapshot
    publish_all_acked(b.port, [("counters/c1/inc", "-40")])
    b.wait_total("c1", 0)
    b.kill()
    b.start()
    b.wait_total("c1", 0)  # a counter at 0 still exists and is listed
    assert_totals(b, counters=1)


def test_state_dir_of_another_node_refuses_to_start(brokers, workdir):
    a = persisted(brokers, workdir, name="a")
    fill(a, counters=1, per=3)
    a.stop()
    other = brokers("b", options={"state_dir": os.path.join(workdir, "state-a")}, start=False)
    assert_refuses_to_start(other, "belongs to node 'a', not 'b'", "refusing to start")


def test_without_state_dir_state_is_in_memory_only(brokers):
    b = brokers("n1")
    b.pub("counters/m/inc", "3")
    b.wait_total("m", 3)
    assert "state is in memory only" in b.read_log()
    b.kill()
    b.start()
    time.sleep(0.5)
    assert b.total("m", timeout=1) is None


def test_stats_name_the_state_dir(brokers, workdir):
    b = persisted(brokers, workdir, stats_interval_ms="200")
    stats = wait_for(lambda: b.retained("$tally/stats/n1"), 5, what="stats")
    assert json.loads(stats)["persist"] == os.path.join(workdir, "state-n1")


def test_restart_keeps_incarnation_after_kill9(brokers, workdir):
    """Same boot, process killed: the page cache kept every write, so the node keeps its
    slot (a fresh incarnation each restart would grow the state of every counter)."""
    b = persisted(brokers, workdir, stats_interval_ms="200")
    first = json.loads(wait_for(lambda: b.retained("$tally/stats/n1"), 5, what="stats"))
    b.kill()
    b.start()
    again = json.loads(wait_for(lambda: b.retained("$tally/stats/n1"), 5, what="stats"))
    assert first["incarnation"] == again["incarnation"]


def test_sigterm_exit_code_is_zero_and_snapshot_is_complete(brokers, workdir):
    b = persisted(brokers, workdir)
    fill(b, counters=3, per=4)
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(20) == 0
    data, recs = records(state_file(workdir, "n1", "state.snap"))
    last_off, last_n = recs[-1]
    assert data[last_off + 8:last_off + 9] == b"E"
    assert last_off + 8 + last_n == len(data)


@pytest.fixture
def tiny_fs(workdir):
    """A 64 KiB tmpfs for a state_dir that fills up; skipped where mount is not allowed."""
    mnt = os.path.join(workdir, "tiny")
    os.makedirs(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: " + r.stderr.strip())
    yield mnt
    subprocess.run(["umount", "-l", mnt], capture_output=True)


def test_disk_full_never_acknowledges_what_it_did_not_write(brokers, tiny_fs):
    """A log that cannot grow (ENOSPC) must not end in a success PUBACK: after a kill -9 and a
    restart, at least every increment acknowledged with success is still counted."""
    if not os.path.exists(LOAD):
        pytest.skip("tally-load not built")
    b = brokers("n1", options={"state_dir": os.path.join(tiny_fs, "state")})
    with open(os.path.join(tiny_fs, "filler"), "wb") as f:  # leave a few KiB free
        try:
            f.write(b"\0" * (50 * 1024))
        except OSError:
            pass
    r = subprocess.run([LOAD, "--host", "127.0.0.1", "--port", str(b.port), "--count", "2000",
                        "--counters", "1", "--payload-id", "--timeout", "60"],
                       capture_output=True, text=True, timeout=90)
    report = json.loads(r.stdout.strip().splitlines()[-1])
    b.kill()
    os.remove(os.path.join(tiny_fs, "filler"))
    b.start()
    total = wait_for(lambda: b.total("c0"), 10, what="a total after restart")
    print(f"load: {report}; total after restart {total}")
    assert total >= report["acked"], (
        f"{report['acked']} acknowledged with success, {total} after a restart:\n"
        + tally_lines(b))


def test_compaction_while_running_keeps_totals_and_ids(brokers, workdir):
    """The log is compacted into state.snap while increments keep coming (past 4 MiB of log
    and snapshot_interval_ms); a kill -9 after that loses nothing and forgets no id."""
    if not os.path.exists(LOAD):
        pytest.skip("tally-load not built")
    b = persisted(brokers, workdir, snapshot_interval_ms="1000", dedup_window="300000")
    early = [("counters/early/inc", json.dumps({"delta": 7, "id": f"e-{i}"})) for i in range(20)]
    publish_all_acked(b.port, early)
    r = subprocess.run([LOAD, "--host", "127.0.0.1", "--port", str(b.port), "--count", "120000",
                        "--counters", "100", "--payload-id", "--timeout", "120"],
                       capture_output=True, text=True, timeout=150)
    assert json.loads(r.stdout.strip().splitlines()[-1])["acked"] == 120000, r.stdout + r.stderr
    snap = state_file(workdir, "n1", "state.snap")
    wait_for(lambda: os.path.exists(snap), 15, what="a snapshot while running")
    log_after = os.path.getsize(state_file(workdir, "n1", "state.log"))
    publish_all_acked(b.port, [("counters/c7/inc", "5")] * 3)
    b.wait_total("c7", 1215)
    b.kill()
    b.start()
    for k in (0, 7, 99):
        b.wait_total(f"c{k}", 1200 + (15 if k == 7 else 0))
    publish_all_acked(b.port, early)
    time.sleep(0.3)
    b.wait_total("early", 140)
    print(f"snapshot {os.path.getsize(snap)} bytes, log right after compaction {log_after} bytes")
