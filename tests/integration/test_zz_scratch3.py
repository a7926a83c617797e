import json, time, threading
from conftest import wait_for
from test_cluster import Watcher, close, closing, publisher  # noqa
from test_tiers import OPTIONS, edge_bridge, exact_everywhere, increments, viewers, get_counter
from test_tier_faults import edge_through, values_of, never_down


def test_edge_restarts_without_state_across_hubs(brokers, closing, workdir):
    opts = {"stats_interval_ms": "200", "admin_usernames": "admin"}
    h1 = brokers("h1", options=dict(OPTIONS, state_dir=f"{workdir}/sh1", **opts))
    h2 = brokers("h2", options=dict(OPTIONS, **opts), bridges=[{"name": "h2-to-h1", "port": h1.port}])
    e1 = edge_through(brokers, "e1", [h1.port, h2.port], opts)
    e2 = edge_through(brokers, "e2", [h2.port, h1.port], opts)
    nodes = [h1, h2, e1, e2]
    seen = Watcher(e2.port, ["counters/shared"], keep=True)
    closing.append(seen)
    expected = {}
    increments([e1, e2], 10, expected)
    exact_everywhere(nodes, expected)
    for i in range(4):
        if i == 1:
            h1.kill()
        e1.kill()
        e1.start()
        increments([e1, e2], 5, expected)
        exact_everywhere([n for n in nodes if n.proc.poll() is None], expected)
        if i == 2:
            h1.start()
    exact_everywhere(nodes, expected, timeout=30)

    def lives():
        out = {}
        for hub in (h1, h2):
            for name in ("shared", "own-e1"):
                reps, folds = get_counter(hub, name)
                out[(hub.name, name)] = (sum(r["node"] == "e1" for r in reps), len(folds))
        return out
    seen_l = {}
    wait_for(lambda: seen_l.update(lives()) or set(seen_l.values()) == {(1, 0)}, 40,
             interval=0.5, what=f"one slot of e1 {seen_l}")
    exact_everywhere(nodes, expected, timeout=5)
    vals = values_of(seen, "counters/shared")
    assert vals == sorted(vals), vals
