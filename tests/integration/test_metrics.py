"""tally-exporter (issue 15): every figure of $tally/stats/<node> as a
Prometheus metric, counters as counters, gauges as gauges, a node label on
each, refusals by reason; scraped by Debian's real prometheus and queried
through its HTTP API."""
import json
import os
import subprocess

import pytest

from conftest import chain, free_port, wait_for
from metrics import EXPORTER, Exporter, Prometheus, http_get
from test_secure import PASSWORD as SECURE_PASSWORD
from test_secure import node  # noqa: F401  (the conf/secure/ node fixture)

# stats path -> (metric, scale): what the exporter promises for each figure.
KNOWN = {
    "counters": ("tally_counters", 1), "devices": ("tally_devices", 1),
    "viewers": ("tally_viewers", 1), "applied": ("tally_increments_applied_total", 1),
    "duplicates": ("tally_increments_duplicate_total", 1),
    "reports": ("tally_reports_applied_total", 1),
    "reports_unchanged": ("tally_reports_unchanged_total", 1),
    "repl.msgs_in": ("tally_replication_received_messages_total", 1),
    "repl.bytes_in": ("tally_replication_received_bytes_total", 1),
    "repl.msgs_out": ("tally_replication_sent_messages_total", 1),
    "repl.bytes_out": ("tally_replication_sent_bytes_total", 1),
    "repl.refused": ("tally_replication_refused_total", 1),
    "repl.repaired": ("tally_replication_repaired_counters_total", 1),
    "nodes.heard": ("tally_nodes_heard", 1), "nodes.alive": ("tally_nodes_alive", 1),
    "dedup.ids": ("tally_dedup_ids", 1), "dedup.window": ("tally_dedup_window", 1),
    "limits.max_counters": ("tally_limit_max_counters", 1),
    "limits.max_devices": ("tally_limit_max_devices", 1),
    "limits.max_viewers": ("tally_limit_max_viewers", 1),
    "uptime_ms": ("tally_uptime_seconds", 0.001),
    "time_ms": ("tally_stats_time_seconds", 0.001),
    "seq": ("tally_stats_published_total", 1),
    "logins_refused": ("tally_logins_refused_total", 1),
}
# Carried as labels of tally_node_info, or a sum of a labelled counter.
NOT_METRICS = {"rejected_total"}


def leaves(doc, prefix=""):
    """(path, value) of every number or boolean in a stats document."""
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from leaves(value, path + ".")
        elif isinstance(value, (int, float)):
            yield path, float(value)


def stats_doc(node, name):
    r = subprocess.run(["mosquitto_sub", "-p", str(node.port), "-t", f"$tally/stats/{name}",
                        "-C", "1", "-W", "5"], capture_output=True, text=True, timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


@pytest.fixture
def cluster(brokers, workdir):
    a, b = chain(brokers, ["a", "b"], options={"stats_interval_ms": "500"})
    for delta in ("1", "2", "3"):
        assert a.pub("counters/likes/inc", delta).returncode == 0
    for payload in ("4", "abc", "1.5"):
        b.pub("counters/likes/inc", payload)
    b.pub("counters/meter/report", "10", extra=["-i", "meter-1"])
    a.wait_total("likes", 10)
    b.wait_total("likes", 10)
    return a, b


@pytest.fixture
def exporter(cluster, workdir):
    e = Exporter(workdir, cluster[0].port)
    yield e
    assert e.stop() == 0, "tally-exporter did not stop cleanly on SIGTERM"


def test_every_stats_figure_is_a_typed_metric_per_node(cluster, exporter):
    a, b = cluster
    for name in ("a", "b"):
        # Scrape until the exporter serves the document we read (same seq).
        def matching():
            doc = stats_doc(a, name)
            samples, types = exporter.samples()
            seq = samples.get(("tally_stats_published_total", frozenset({("node", name)})))
            return (doc, samples, types) if doc and seq == doc["seq"] else None
        doc, samples, types = wait_for(matching, 20, interval=0.1,
                                       what=f"the exporter to serve {name}'s latest stats")
        label = frozenset({("node", name)})
        for path, value in leaves(doc):
            if path in NOT_METRICS:
                continue
            if path in KNOWN:
                metric, scale = KNOWN[path]
                key = (metric, label)
            elif path.startswith("rejected."):
                metric, scale = "tally_rejected_total", 1
                key = (metric, label | {("reason", path.split(".", 1)[1])})
            elif path.startswith("peers."):
                peer, field = path.split(".")[1:]
                metric, scale = {"alive": ("tally_peer_up", 1),
                                 "last_heard_ms": ("tally_peer_last_heard_seconds", 0.001)}[field]
                key = (metric, label | {("peer", peer)})
            else:  # a figure the exporter does not know by name
                metric, scale = "tally_stats_" + path.replace(".", "_"), 1
                key = (metric, label)
            assert key in samples, f"{name}: stats figure {path} is not exported as {metric}"
            assert samples[key] == pytest.approx(value * scale, rel=1e-12), (path, metric)
        assert samples[("tally_node_info", label | {("incarnation", doc["incarnation"]),
                                                    ("persist", doc["persist"])})] == 1
    assert types["tally_increments_applied_total"] == "counter"
    assert types["tally_rejected_total"] == "counter"
    assert types["tally_logins_refused_total"] == "counter"
    assert types["tally_counters"] == "gauge"
    assert types["tally_peer_up"] == "gauge"
    wait_for(lambda: exporter.samples()[0].get(
        ("tally_peer_up", frozenset({("node", "a"), ("peer", "b")}))) == 1, 20,
        what="a to report peer b as up")
    wait_for(lambda: exporter.samples()[0].get(
        ("tally_rejected_total", frozenset({("node", "b"), ("reason", "not_an_integer")}))) == 2,
        20, what="b's two refusals (abc, 1.5) by reason")


def test_prometheus_scrapes_the_totals_the_broker_states(cluster, exporter, workdir):
    a, b = cluster
    prom = Prometheus(workdir, [f"127.0.0.1:{exporter.port}"])
    try:
        for name, node in (("a", a), ("b", b)):
            # the totals can converge before the node's next stats (every 500 ms)
            applied = 3 if name == "a" else 1
            wait_for(lambda: (stats_doc(node, name) or {}).get("applied") == applied, 10,
                     interval=0.2, what=f"{name}'s stats to count {applied} applied")
            wait_for(lambda: prom.value(f'tally_increments_applied_total{{node="{name}"}}')
                     == applied, 30, interval=0.3,
                     what=f"prometheus: tally_increments_applied_total{{node=\"{name}\"}} "
                          f"== {applied}")
        wait_for(lambda: prom.value('tally_rejected_total{node="b",reason="not_an_integer"}')
                 == 2, 30, interval=0.3, what="refusals by reason in prometheus")
        assert prom.value('sum(tally_counters)') == 4  # likes and meter, on each node
        meta = prom.api("metadata", metric="tally_increments_applied_total")
        assert meta["tally_increments_applied_total"][0]["type"] == "counter"
        meta = prom.api("metadata", metric="tally_viewers")
        assert meta["tally_viewers"][0]["type"] == "gauge"
        # A new increment shows up in the next scrapes (stats every 500 ms).
        assert a.pub("counters/likes/inc", "5").returncode == 0
        wait_for(lambda: prom.value('tally_increments_applied_total{node="a"}') == 4, 30,
                 interval=0.3, what="the new increment in prometheus")
        assert prom.value('up{job="tally"}') == 1
    finally:
        prom.stop()


def test_exporter_logs_in_over_tls_to_the_locked_down_setup(node, workdir):
    """conf/secure/: only users of the password file connect, over TLS here."""
    ca = os.path.join(node.etc, "certs", "ca.crt")
    r = subprocess.run(["mosquitto_pub", "-p", str(node.plain), "-u", "device", "-P",
                        SECURE_PASSWORD["device"], "-q", "1", "-t", "counters/tls/inc", "-m", "2"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    e = Exporter(workdir, node.tls, extra=["--cafile", ca, "-u", "admin", "-P",
                                           SECURE_PASSWORD["admin"]])
    try:
        wait_for(lambda: e.samples()[0].get(
            ("tally_increments_applied_total", frozenset({("node", "n1")}))) == 1, 20,
            what="the exporter to read n1's stats over TLS")
    finally:
        assert e.stop() == 0
    # Over TLS without the right password: refused, and the exporter says so.
    port = free_port()
    log = os.path.join(workdir, "refused-exporter.log")
    with open(log, "w") as out:
        p = subprocess.Popen([EXPORTER, "-p", str(node.tls), "--cafile", ca, "-u", "admin",
                              "-P", "wrong", "--listen", f"127.0.0.1:{port}"],
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "refused" in open(log).read(), 20, what="the exporter to be refused")
        text = wait_for(lambda: _scrape(port), 10, what="the refused exporter to serve")
        assert "tally_exporter_broker_connected 0" in text
        assert "tally_increments_applied_total{" not in text
    finally:
        p.terminate()
        p.wait(10)


def _scrape(port):
    try:
        return http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None


def test_exporter_reconnects_and_says_when_it_cannot(cluster, exporter):
    """README: while it cannot reach its node it serves the last figures
    with tally_exporter_broker_connected 0, and reconnects by itself."""
    a, _ = cluster
    applied = ("tally_increments_applied_total", frozenset({("node", "a")}))
    wait_for(lambda: exporter.samples()[0].get(applied) == 3, 20, what="a's 3 increments")
    a.kill()
    wait_for(lambda: "tally_exporter_broker_connected 0" in exporter.text(), 20,
             what="the exporter to notice its broker is gone")
    assert exporter.samples()[0][applied] == 3, "the last figures are still served"
    a.start()  # same port, a fresh node a (memory only): its counts start again
    assert a.pub("counters/likes/inc", "1").returncode == 0
    wait_for(lambda: "tally_exporter_broker_connected 1" in exporter.text()
             and exporter.samples()[0].get(applied) == 1, 30,
             what="the exporter back, with the restarted node's figures")
