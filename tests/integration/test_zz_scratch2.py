import json, time, threading
from conftest import wait_for
from tcpproxy import TcpProxy
from test_cluster import Watcher, close, closing, publisher  # noqa
from test_tiers import OPTIONS, edge_bridge, exact_everywhere, increments, viewers
from test_tier_faults import edge_through, values_of, never_down


def test_ghost_viewers_after_edge_restart_with_state(brokers, closing, workdir):
    h1 = brokers("h1", options=dict(OPTIONS))
    h2 = brokers("h2", options=dict(OPTIONS), bridges=[{"name": "h2-to-h1", "port": h1.port}])
    e1 = edge_through(brokers, "e1", [h1.port, h2.port], {"state_dir": f"{workdir}/s1"})
    e2 = edge_through(brokers, "e2", [h2.port, h1.port])
    at = {n.name: Watcher(n.port, ["presence/+"], keep=True) for n in (h1, h2)}
    closing.extend(at.values())
    closing.append(Watcher(e2.port, ["presence/home"], client_id="e2-v"))
    vs = [Watcher(e1.port, ["presence/home"], client_id=f"e1-v{k}") for k in range(3)]
    wait_for(lambda: all(w.get("presence/home") == b"4" for w in at.values()), 20, what="4")
    e1.kill()
    for v in vs: v.close()
    e1.start()
    wait_for(lambda: all(w.get("presence/home") == b"1" for w in at.values()), 10,
             what=f"1 {[w.get('presence/home') for w in at.values()]}")


def test_viewer_churn_across_hub_cut(brokers, closing):
    h1 = brokers("h1", options=dict(OPTIONS))
    link = TcpProxy(h1.port)
    closing.append(link)
    h2 = brokers("h2", options=dict(OPTIONS), bridges=[{"name": "h2-to-h1", "port": link.port}])
    e1 = edge_through(brokers, "e1", [h1.port])
    e2 = edge_through(brokers, "e2", [h2.port])
    nodes = [h1, h2, e1, e2]
    at = {n.name: Watcher(n.port, ["presence/+"], keep=True) for n in nodes}
    closing.extend(at.values())
    vs1 = [Watcher(e1.port, ["presence/home", "presence/about"], client_id=f"e1-v{k}") for k in range(3)]
    vs2 = [Watcher(e2.port, ["presence/home"], client_id=f"e2-v{k}") for k in range(2)]
    closing.extend(vs2)
    wait_for(lambda: all(w.get("presence/home") == b"5" for w in at.values()), 20, what="5")
    for cut_for in (1.0, 4.5, 0.2):
        link.cut()
        time.sleep(0.3)
        vs1[0].close()
        vs1 = vs1[1:] + [Watcher(e1.port, ["presence/home"], client_id=f"e1-n{cut_for}")]
        vs2[0].close()
        vs2 = vs2[1:] + [Watcher(e2.port, ["presence/home", "presence/about"], client_id=f"e2-n{cut_for}")]
        time.sleep(cut_for)
        link.heal()
        wait_for(lambda: all(w.get("presence/home") == b"5" for w in at.values()), 15,
                 what=f"5 after heal { {k: w.get('presence/home') for k, w in at.items()} }")
    abouts = sum(1 for v in vs1 + vs2 if "presence/about" in str(v.c._userdata) ) 
    time.sleep(4)
    print({k: (w.get("presence/home"), w.get("presence/about")) for k, w in at.items()})
    assert all(w.get("presence/home") == b"5" for w in at.values())
    for v in vs1: v.close()
