import json, time, threading
from conftest import wait_for
from tcpproxy import TcpProxy
from test_cluster import Watcher, close, closing, publisher  # noqa
from test_tiers import OPTIONS, edge_bridge, exact_everywhere, increments, viewers
from test_tier_faults import edge_through, values_of, never_down


def test_viewer_churn_while_cut(brokers, closing):
    h1 = brokers("h1", options=dict(OPTIONS))
    h2 = brokers("h2", options=dict(OPTIONS), bridges=[{"name": "h2-to-h1", "port": h1.port}])
    link = TcpProxy(h1.port)
    closing.append(link)
    e1 = edge_through(brokers, "e1", [link.port])
    e2 = edge_through(brokers, "e2", [h2.port])
    at = {n.name: Watcher(n.port, ["presence/+"], keep=True) for n in (h1, h2)}
    closing.extend(at.values())
    old = [Watcher(e1.port, ["presence/home"], client_id=f"e1-v{k}") for k in range(3)]
    closing.append(Watcher(e2.port, ["presence/home"], client_id="e2-v"))
    e2w = Watcher(e2.port, ["presence/home"], client_id="e2-v2")
    closing.append(e2w)
    wait_for(lambda: all(w.get("presence/home") == b"5" for w in at.values()), 20, what="5")
    for cut_for in (1.0, 4.5):
        link.cut()
        time.sleep(0.3)
        for v in old[:2]:
            v.close()
        old = old[2:] + [Watcher(e1.port, ["presence/home"], client_id=f"e1-n{cut_for}-{k}") for k in range(2)]
        time.sleep(cut_for)
        link.heal()
        wait_for(lambda: all(w.get("presence/home") == b"5" for w in at.values()) and e1.retained("presence/home") == "5", 15,
                 what=f"5 after heal {[w.get('presence/home') for w in at.values()]} e1 {e1.retained('presence/home')} e2 {e2w.get('presence/home')}")
    time.sleep(4)
    assert all(w.get("presence/home") == b"5" for w in at.values())
    assert e2w.get("presence/home") == b"5"


def test_flapping_edge_under_load(brokers, closing, workdir):
    h1 = brokers("h1", options=dict(OPTIONS))
    h2 = brokers("h2", options=dict(OPTIONS), bridges=[{"name": "h2-to-h1", "port": h1.port}])
    l1, l2 = TcpProxy(h1.port), TcpProxy(h2.port)
    closing.extend([l1, l2])
    e1 = edge_through(brokers, "e1", [l1.port, l2.port])
    e2 = edge_through(brokers, "e2", [h2.port])
    e3 = edge_through(brokers, "e3", [h1.port])
    edges = [e1, e2, e3]
    viewers(edges, closing)
    nodes = [h1, h2] + edges
    at = {n.name: Watcher(n.port, ["presence/+"], keep=True) for n in nodes}
    closing.extend(at.values())
    seen = [Watcher(e.port, ["counters/shared"], keep=True) for e in edges]
    closing.extend(seen)
    expected = {}
    load = threading.Thread(target=increments, args=(edges, 100, expected, 0.03))
    load.start()
    for i in range(6):
        time.sleep(0.5)
        (l1 if i % 2 == 0 else l2).cut()
        time.sleep(0.7)
        l1.heal(); l2.heal()
    load.join(60)
    assert not load.is_alive()
    exact_everywhere(nodes, expected, timeout=40)
    wait_for(lambda: all(w.get("presence/home") == b"6" for w in at.values()), 20, what="6")
    n0 = {k: w.count() for k, w in at.items()}
    time.sleep(4)
    later = {k: [p for t, p in w.messages()[n0[k]:] if t == "presence/home"] for k, w in at.items()}
    print(later)
    assert all(w.get("presence/home") == b"6" for w in at.values())
    never_down(seen, "counters/shared", expected["shared"])
