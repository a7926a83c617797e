"""The Docker image's configuration (issue 15), without a Docker engine:
the Dockerfile only runs docker/build-image.sh, and this test runs that
script's `configure` step into a throwaway root, then starts brokers from
what it wrote (shipped.py: ports and paths moved under the test's own) and
from the compose cluster's node configs, and checks the compose file
publishes its ports on 127.0.0.1 only."""
import json
import os
import pwd
import re
import subprocess

import pytest
import yaml

from conftest import CLI, REPO
from shipped import PASSWORD, ShippedBroker, port_map
from test_cluster import forged_sync

DOCKER = os.path.join(REPO, "docker")


@pytest.fixture
def root(workdir):
    """The image's / after build-image.sh configure."""
    root = os.path.join(workdir, "root")
    subprocess.run([os.path.join(DOCKER, "build-image.sh"), "configure", root], check=True,
                   capture_output=True)
    os.makedirs(os.path.join(root, "usr/share/tally/www"))
    return root


def image_paths(root):
    return {p: os.path.join(root, p.lstrip("/"))
            for p in ("/etc/tally", "/var/lib/tally", "/usr/share/tally/www")}


def test_configure_writes_default_config_passwords_and_state_dir(root):
    for path in ("etc/tally/mosquitto.conf", "etc/tally/passwords", "var/lib/tally"):
        assert os.path.exists(os.path.join(root, path)), path
    for path in ("etc/tally/passwords", "var/lib/tally"):
        owner = pwd.getpwuid(os.stat(os.path.join(root, path)).st_uid).pw_name
        assert owner == "mosquitto", path
    with open(os.path.join(root, "etc/tally/passwords")) as f:
        users = {line.split(":", 1)[0] for line in f if line.strip()}
    assert {"tally-bridge", "admin"} <= users


def test_default_config_starts_a_broker_that_counts(brokers, root):
    conf = os.path.join(root, "etc/tally/mosquitto.conf")
    node = brokers("image", cls=ShippedBroker, path=conf, ports=port_map(conf),
                   paths=image_paths(root))
    assert node.pub("counters/likes/inc", "3").returncode == 0
    node.wait_total("likes", 3)
    # State goes where the image's volume is.
    assert os.listdir(os.path.join(root, "var/lib/tally"))
    # The admin of the image's password file gets control-API answers.
    r = subprocess.run(["mosquitto_rr", "-p", str(node.port), "-u", "admin", "-P",
                        PASSWORD["admin"], "-t", "$CONTROL/tally/v1", "-e",
                        "$CONTROL/tally/v1/response", "-W", "5", "-m",
                        '{"commands":[{"command":"getCounter","name":"likes"}]}'],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and '"value":3' in r.stdout.replace(" ", ""), r.stdout + r.stderr


def healthcheck_command():
    with open(os.path.join(DOCKER, "Dockerfile")) as f:
        text = f.read()
    m = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", text)
    assert m, "no HEALTHCHECK CMD in the Dockerfile"
    return json.loads(m.group(1))


def test_healthcheck_command_passes_against_the_default_config(brokers, root):
    cmd = healthcheck_command()
    assert cmd[0] == "tally" and "health" in cmd
    conf = os.path.join(root, "etc/tally/mosquitto.conf")
    ports = port_map(conf)
    node = brokers("image", cls=ShippedBroker, path=conf, ports=ports, paths=image_paths(root))
    args = [CLI] + [str(ports["1883"]) if a == "1883" else a for a in cmd[1:]]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    node.stop()
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0, "healthy without a broker"


def test_compose_publishes_ports_on_loopback_only():
    with open(os.path.join(DOCKER, "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    ports = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert len(ports) == 6
    assert all(p.startswith("127.0.0.1:") for p in ports), ports


def test_compose_cluster_replicates_with_credentials_only(brokers, root, workdir):
    files = {n: os.path.join(DOCKER, f"node-{n}.conf") for n in "abc"}
    ports = {n: port_map(f) for n, f in files.items()}
    hosts = {f"node-{n}:1883": f"127.0.0.1:{ports[n]['1883']}" for n in "abc"}
    nodes = {}
    for n in "abc":
        paths = image_paths(root)
        state = os.path.join(root, "var/lib/tally", n)  # a volume each
        os.makedirs(state)
        paths["/var/lib/tally"] = state
        nodes[n] = brokers(f"node-{n}", cls=ShippedBroker, path=files[n], ports=ports[n],
                           paths=paths, hosts=hosts)
    assert nodes["c"].pub("counters/likes/inc", "4").returncode == 0
    for node in nodes.values():
        node.wait_total("likes", 4, timeout=30)
    forged = os.path.join(workdir, "forged.bin")
    with open(forged, "wb") as f:
        f.write(forged_sync("zz", "likes", 10 ** 9))
    # A bridge's id is refused at CONNECT (protect_clientids *-to-*); any
    # other id gets in and is refused $tally/.
    for client_id in ("b-to-a", "impostor"):
        subprocess.run(["mosquitto_pub", "-p", str(nodes["a"].port), "-i", client_id, "-q", "1",
                        "-t", "$tally/v1/sync/zz", "-f", forged], capture_output=True,
                       timeout=20)
    assert nodes["a"].pub("counters/likes/inc", "1").returncode == 0
    for node in nodes.values():
        node.wait_total("likes", 5, timeout=30)
    log = nodes["a"].read_log()
    assert "tally: refused login of client 'b-to-a'" in log
    assert "'impostor' to '$tally/v1/sync/zz': forbidden_topic" in log
