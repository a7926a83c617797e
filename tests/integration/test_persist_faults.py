"""Persistence when something around the broker goes wrong: a second broker started on a
state_dir in use, a disk that fills up while the log is compacted, a broker killed while its
compaction child runs. Each test here failed on the code before the fix it covers (issue 10,
items 1, 2 and 11); see plugin/persist.c for the files and the guarantees.
"""
import errno
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import LOAD, wait_for
from test_persist import AckClient, assert_refuses_to_start, records, tally_lines

COMPACT_MIN_BYTES = 4 << 20  # persist.c: the log is compacted from this size on


class Stream:
    """Publishes QoS 1 increments with ids, at most `window` unacknowledged, until stopped."""

    def __init__(self, pub, topic, window=300):
        self.pub, self.topic, self.window = pub, topic, window
        self.sent = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            if self.sent - len(self.pub.acked_mids) < self.window:
                self.pub.send(self.topic, json.dumps({"id": f"s-{self.sent}"}), self.sent)
                self.sent += 1
            else:
                time.sleep(0.002)

    def stop(self):
        self.done.set()
        self.thread.join(10)


def test_second_broker_on_a_state_dir_in_use_refuses_and_the_first_loses_nothing(brokers,
                                                                                 workdir):
    """Item 1: the same config started twice (or two containers on one volume). The second
    broker must stop before it reads or cuts anything, naming the directory and the first
    broker's process; the first keeps acknowledging and keeps all of it through a kill -9."""
    state = os.path.join(workdir, "state-a")
    a = brokers("a", options={"state_dir": state})
    pub = AckClient(a.port, "streamer")
    stream = Stream(pub, "counters/shared/inc")
    pub.wait_acked(500)
    b = brokers("b", options={"state_dir": state, "node_id": "a"}, start=False)
    assert_refuses_to_start(b, f"{state} is in use", f"process {a.proc.pid}", "refusing to start")
    # A never noticed: it keeps acknowledging, and everything it acknowledged survives.
    seen = len(pub.acked_mids)
    wait_for(lambda: len(pub.acked_mids) >= seen + 500, 30, what="PUBACKs after B's attempt")
    assert a.proc.poll() is None, "the first broker died:\n" + tally_lines(a)
    a.kill()
    pub.abandon()
    stream.stop()
    acked = len(pub.acked())
    a.start()
    total = wait_for(lambda: a.total("shared"), 10, what="a total after restart")
    print(f"acked {acked} of {stream.sent} sent, total after kill -9 and restart {total}")
    assert acked <= total <= stream.sent
    # Once A is gone for good, the directory is free again.
    a.stop()
    b.start()
    b.wait_total("shared", total)


# ==== A full disk during compaction (item 2) ====

# Records as large as tally writes them (a 200-byte name, a 64-byte node id, an id): the log
# passes COMPACT_MIN_BYTES after about 14,000 increments.
NODE_ID = "node-" + "x" * 59
BIG_NAME = "L" * 199 + "0"


@pytest.fixture
def small_fs(workdir):
    """A 12 MiB tmpfs mounted for the test (root can always mount one)."""
    mnt = os.path.join(workdir, "fs")
    os.makedirs(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: " + r.stderr.strip())
    yield mnt
    subprocess.run(["umount", "-l", mnt], capture_output=True)


def fill_disk(mnt):
    """Writes a filler file until not one byte more fits; returns its path."""
    path = os.path.join(mnt, "filler")
    with open(path, "ab", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 4096, 512):
            while True:
                try:
                    f.write(b"\xff" * chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    assert os.statvfs(mnt).f_bavail == 0
    return path


def load(b, count):
    """Publishes count QoS 1 increments (with ids) to BIG_NAME with tally-load; returns how
    many were acknowledged. A write that fails drops the connection, which ends the run."""
    r = subprocess.run([LOAD, "--host", "127.0.0.1", "--port", str(b.port), "--count", str(count),
                        "--counters", "1", "--payload-id", "--topic-format",
                        f"counters/{BIG_NAME[:-1]}%u/inc", "--timeout", "60"],
                       capture_output=True, text=True, timeout=90)
    return json.loads(r.stdout.strip().splitlines()[-1])["acked"]


def log_used(state):
    """Bytes of header and whole records in state.log (the rest is space allocated ahead)."""
    data, recs = records(os.path.join(state, "state.log"))
    off, n = recs[-1]
    return off + 8 + n


def load_until_full(b):
    """Increments until one is refused for want of space; returns (acked, sent)."""
    acked = sent = 0
    while True:
        got = load(b, 2000)
        acked, sent = acked + got, sent + 2000
        if got < 2000:
            return acked, sent
        assert sent < 200000, "the disk never filled up"


def big_total(b):
    return wait_for(lambda: b.total(BIG_NAME), 10, what="a total after restart")


def test_compaction_on_a_full_disk_keeps_the_log_and_every_acknowledged_increment(small_fs,
                                                                                 brokers):
    """Item 2, as it was found: the log passes COMPACT_MIN_BYTES, the disk fills up, then
    snapshot_interval_ms comes and the rotation cannot allocate the new log. It must leave
    the old log in use, whole; once there is space again, increments are acknowledged, and
    a kill -9 and a restart keep every one of them (the old code appended them to a log
    without a header and refused to start: "damaged at offset 0 (bad header)")."""
    state = os.path.join(small_fs, "state")
    b = brokers("n1", options={"state_dir": state, "node_id": NODE_ID,
                               "snapshot_interval_ms": "10000"})
    acked = sent = load(b, 15000)
    assert acked == 15000 and log_used(state) >= COMPACT_MIN_BYTES
    filler = fill_disk(small_fs)
    more, tried = load_until_full(b)
    acked, sent = acked + more, sent + tried
    assert not os.path.exists(os.path.join(state, "state.snap")) and \
        "a snapshot of" not in tally_lines(b), "compacted before the disk was full: too slow"
    wait_for(lambda: "a snapshot of" in tally_lines(b), 20,
             what="a compaction that fails on the full disk")
    assert os.path.exists(os.path.join(state, "state.log"))
    acked, sent = acked + load(b, 200), sent + 200  # refused while the disk is full
    os.remove(filler)
    more = load(b, 2000)
    assert more == 2000, "increments refused after space came back:\n" + tally_lines(b)
    acked, sent = acked + more, sent + 2000
    b.kill()
    b.start()
    total = big_total(b)
    print(f"acked {acked} of {sent}, total after kill -9 and restart {total}")
    assert acked <= total <= sent


def test_restart_on_a_full_disk_keeps_every_acknowledged_increment(small_fs, brokers):
    """Item 2, the other half: a node killed while its disk is full starts again on that
    full disk with all it acknowledged (its log cannot grow: new local increments are
    refused, and compaction fails and keeps the log), and works normally once there is
    space (the old code refused to start: no room to rewrite meta or allocate the log)."""
    state = os.path.join(small_fs, "state")
    b = brokers("n1", options={"state_dir": state, "node_id": NODE_ID,
                               "snapshot_interval_ms": "600000"})
    acked = sent = load(b, 15000)
    filler = fill_disk(small_fs)
    more, tried = load_until_full(b)
    acked, sent = acked + more, sent + tried
    b.kill()
    b.options["snapshot_interval_ms"] = "1000"
    b.start()
    total = big_total(b)
    assert acked <= total <= sent
    wait_for(lambda: "a snapshot of" in tally_lines(b), 10,
             what="a compaction that fails on the full disk")
    assert load(b, 200) == 0, "acknowledged with no room to log it"
    os.remove(filler)
    more = load(b, 2000)
    assert more == 2000, "increments refused after space came back:\n" + tally_lines(b)
    acked, sent = acked + more, sent + 2000
    wait_for(lambda: os.path.exists(os.path.join(state, "state.snap")), 10,
             what="a compaction once there is space")
    b.kill()
    b.start()
    total = big_total(b)
    print(f"acked {acked} of {sent}, total after kill -9 and restart {total}")
    assert acked <= total <= sent


# ==== A kill -9 during compaction (item 11) ====

def children(pid):
    """Pids of the live (not zombie) children of pid."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in "ZX":
                out.append(int(entry))
    return out


def open_files(pid):
    """What each descriptor of pid refers to ("socket:[...]", a path, ...)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def foreign_files(pid, timeout=5.0):
    """The descriptors of pid other than /dev/null, once it has closed what it inherited
    (polled for up to timeout: the child closes them first thing, but not at fork)."""
    deadline = time.monotonic() + timeout
    while True:
        held = [f for f in open_files(pid) if f != "/dev/null"]
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.05)


def test_kill9_during_compaction_restarts_at_once_on_the_same_port(brokers, workdir):
    """Item 11: the compaction child must hold no descriptor of the broker's (its listening
    sockets, its state_dir lock) and die with it. The child is made to hang where a slow or
    stuck disk would hang it, opening state.snap.tmp, which the test makes a FIFO nobody reads.
    The old child kept the listening socket: the restart failed with "Address already in
    use" for as long as the child lived (here, for ever)."""
    state = os.path.join(workdir, "state-n1")
    b = brokers("n1", options={"state_dir": state, "node_id": NODE_ID,
                               "snapshot_interval_ms": "1000"})
    fifo = os.path.join(state, "state.snap.tmp")
    os.mkfifo(fifo)
    child = None
    try:
        assert load(b, 15000) == 15000
        child = wait_for(lambda: children(b.proc.pid), 15, what="a compaction child")[0]
        held = foreign_files(child)
        b.kill()
        os.remove(fifo)
        # The same port and the same state_dir, at once. (An orphan still listening would
        # accept connections into its backlog and never answer: wait for an answer.)
        b.start()
        b.wait_total(BIG_NAME, 15000)
        assert b.proc.poll() is None, b.read_log()[-2000:]
        assert held == [], f"the compaction child held {held}"
        wait_for(lambda: not os.path.exists(f"/proc/{child}/fd/0"), 5,
                 what="the compaction child to die with the broker")
    finally:
        if child and os.path.exists(f"/proc/{child}/fd/0"):
            os.kill(child, 9)  # the old code's orphan, still holding the port
