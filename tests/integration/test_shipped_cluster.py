"""The shipped three-node cluster (conf/cluster/) identifies its bridges by
credentials, so no anonymous client can pass for one (issue 10, item 5).

The nodes run conf/cluster/node-{a,b,c}.conf themselves (shipped.py: only
ports, paths and the plugin's path changed), with the password file written
by the shipped script. With the old configs (`bridge_clientids *-to-*`) an
anonymous client calling itself `b-to-a` wrote one forged replication
message and a total jumped by a billion, for good (merges keep maxima).
Now such a client is not even let in (`protect_clientids *-to-*`: a bridge's
id is its session; test_bridge_takeover.py), and one with any other id is
refused `$tally/`.
"""
import fnmatch
import glob
import os
import subprocess
import time

import pytest

from conftest import REPO
from shipped import PASSWORD, ShippedBroker, conf_lines, make_passwords, port_map
from test_cluster import forged_sync

CLUSTER = os.path.join(REPO, "conf", "cluster")
DOCKER = os.path.join(REPO, "docker")
FORGED_P = 10 ** 9


def bridge_settings(path):
    """{connection name: {key: value}} of the bridges a config file opens."""
    bridges, current = {}, None
    for key, value in conf_lines(path):
        if key == "connection":
            current = bridges.setdefault(value, {})
        elif current is not None:
            current[key] = value
    return bridges


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CLUSTER, "*.conf"))
                                    + glob.glob(os.path.join(DOCKER, "*.conf"))),
                         ids=os.path.basename)
def test_every_shipped_cluster_config_trusts_credentials_not_client_ids(path):
    keys = dict(conf_lines(path))
    assert "plugin_opt_bridge_clientids" not in keys, "a client id is no proof of a bridge"
    assert keys.get("plugin_opt_bridge_usernames") == "tally-bridge"
    assert keys.get("password_file"), "bridges' passwords must be checked"
    assert keys.get("plugin_opt_protect_clientids") == "*-to-*", "a bridge's id is its session"
    for name, bridge in bridge_settings(path).items():
        assert bridge.get("remote_username") == "tally-bridge", name
        assert bridge.get("remote_password"), name
        for client_id in (bridge["clientid"], "local." + bridge["clientid"]):
            assert fnmatch.fnmatchcase(client_id, "*-to-*"), f"{name}: {client_id} unprotected"


def mosquitto_pub(port, topic, payload_file, client_id, *extra):
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "5",
                        "-q", "1", "-d", "-i", client_id, "-t", topic, "-f", payload_file,
                        *extra], capture_output=True, text=True, timeout=20)
    return r.stdout + r.stderr


@pytest.fixture
def cluster(brokers, workdir):
    """conf/cluster's a <- b <- c, each from its own shipped file."""
    files = [os.path.join(CLUSTER, f"node-{n}.conf") for n in "abc"]
    ports = port_map(*files)
    passwords = make_passwords(os.path.join(workdir, "etc", "passwords"))
    www = os.path.join(workdir, "www")
    os.makedirs(www)
    paths = {"/etc/mosquitto/tally/passwords": passwords, "/usr/share/tally/www": www}
    nodes = {}
    for n, f in zip("abc", files):
        nodes[n] = brokers(f"node-{n}", cls=ShippedBroker, path=f, ports=ports, paths=paths)
    return nodes


def count(node, name, delta):
    r = node.pub(f"counters/{name}/inc", str(delta))
    assert r.returncode == 0, r.stderr


def test_anonymous_client_with_a_bridge_id_cannot_change_totals(cluster, workdir):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    count(c, "likes", 5)
    for node in (a, b, c):
        node.wait_total("likes", 5, timeout=20)

    forged = os.path.join(workdir, "forged.bin")
    # A SYNC claiming a billion increments for a node "zz" and for node b;
    # tally consumes replication messages (0x87 in the PUBACK either way),
    # so the totals and the log tell whether it was taken.
    refusals = []
    for sender, counter in (("zz", "likes"), ("b", "likes"), ("zz", "fresh")):
        with open(forged, "wb") as f:
            f.write(forged_sync(sender, counter, FORGED_P))
        # The ids of the real bridges, and one the old pattern *-to-* let in:
        # refused at CONNECT, before they could take a bridge's session.
        for client_id in ("b-to-a", "c-to-b", "x-to-anything"):
            for node in (a, b):
                out = mosquitto_pub(node.port, f"$tally/v1/sync/{sender}", forged, client_id)
                assert "CONNACK (135)" in out and "sending PUBLISH" not in out, out
                refusals.append((node, f"refused login of client '{client_id}'"))
        # Any other id gets in, and is refused $tally/.
        for node in (a, b):
            mosquitto_pub(node.port, f"$tally/v1/sync/{sender}", forged, "impostor")
            refusals.append((node, "refused publish from client 'impostor' to "
                                   f"'$tally/v1/sync/{sender}': forbidden_topic"))
    # The cluster still replicates, and nothing forged counted.
    count(a, "likes", 2)
    count(c, "likes", 3)
    for node in (a, b, c):
        node.wait_total("likes", 10, timeout=30)
        assert node.total("fresh") is None, f"{node.name}: a forged counter appeared"
    # Two anti-entropy rounds (sync_interval_ms 2000) later, still exact:
    # a forged slot would have been offered to every node by now.
    time.sleep(4.5)
    for node in (a, b, c):
        assert node.total("likes", timeout=2) == 10
    for node, line in refusals:
        assert line in node.read_log(), f"{node.name}: no '{line}'"
    # Nor can it log in as the bridges' user without their password.
    out = mosquitto_pub(a.port, "$tally/v1/sync/zz", forged, "b-to-a", "-u", "tally-bridge",
                        "-P", "guess")
    assert "CONNACK (135)" in out and "sending PUBLISH" not in out, out


def test_admin_of_the_shipped_cluster_answers_the_control_api(cluster):
    """README's control-API example, against the shipped config."""
    a = cluster["a"]
    count(a, "votes-yes", 4)
    a.wait_total("votes-yes", 4)
    r = subprocess.run(["mosquitto_rr", "-p", str(a.port), "-u", "admin", "-P",
                        PASSWORD["admin"], "-t", "$CONTROL/tally/v1", "-e",
                        "$CONTROL/tally/v1/response", "-W", "5", "-m",
                        '{"commands":[{"command":"getCounter","name":"votes-yes"}]}'],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert '"value":4' in r.stdout.replace(" ", ""), r.stdout
