"""Brokers that run a shipped config file (conf/, docker/, the Debian
package's drop-in) as it is, with only what a test must change: each port
the file names becomes a free 127.0.0.1 port, file paths of an installed
system become the test's own, the plugin line names the plugin under test,
and the broker logs to a file and stays root. So what is tested is what is
shipped."""
import os
import socket
import subprocess

from conftest import PLUGIN, REPO, Broker, free_port, wait_for

MAKE_PASSWORDS = os.path.join(REPO, "conf", "secure", "make-passwords.sh")
# The demo passwords conf/secure/make-passwords.sh documents.
PASSWORD = {"tally-bridge": "bridge-demo", "admin": "admin-demo", "device": "device-demo"}


def make_passwords(path):
    """The shipped script's password file at path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    subprocess.run([MAKE_PASSWORDS, path], check=True, capture_output=True)
    return path


def conf_lines(path):
    """(key, value) of every setting in a mosquitto config file."""
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition(" ")
                yield key, value.strip()


def shipped_ports(path):
    """Every port the file listens on or bridges to."""
    ports = set()
    for key, value in conf_lines(path):
        if key == "listener":
            ports.add(value.split()[0])
        elif key == "address":
            ports.update(a.rsplit(":", 1)[1] for a in value.split())
    return ports


def render(path, ports, paths, plugin, log, hosts=None):
    """The text of config `path` with ports[p] for each shipped port p
    (hosts["name:port"] for a bridge address naming another container),
    each prefix of paths replaced, `plugin` on the plugin line (None keeps
    the shipped one) and a log file."""
    hosts = hosts or {}
    out = ["user root", f"log_dest file {log}"]
    for key, value in conf_lines(path):
        if key in ("log_dest", "user"):
            continue
        if key == "listener":
            value = f"{ports[value.split()[0]]} 127.0.0.1"
        elif key == "address":
            value = " ".join(hosts.get(a) or f"127.0.0.1:{ports[a.rsplit(':', 1)[1]]}"
                             for a in value.split())
        elif key == "plugin" and plugin:
            value = plugin
        for old, new in paths.items():
            value = value.replace(old, new)
        out.append(f"{key} {value}")
    return "\n".join(out) + "\n"


class ShippedBroker(Broker):
    """A Broker (conftest) whose config is a shipped file, rendered."""

    def __init__(self, workdir, name, path, ports, paths=None, plugin=PLUGIN, hosts=None):
        super().__init__(workdir, name)
        self.path, self.ports, self.paths, self.plugin = path, ports, paths or {}, plugin
        self.hosts = hosts
        listeners = [v.split()[0] for k, v in conf_lines(path) if k == "listener"]
        self.port = ports[listeners[0]]
        self.all_ports = [ports[p] for p in listeners]

    def config(self):
        return render(self.path, self.ports, self.paths, self.plugin, self.log, self.hosts)

    def start(self, wait=True):
        super().start(wait)
        if wait:
            for port in self.all_ports:
                wait_for(lambda: self._accepts(port), 10, what=f"{self.name} on {port}")
        return self

    def _accepts(self, port):
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.read_log()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False


def port_map(*paths):
    """A free port for every port the files name (shared between files, so
    a bridge's address follows the listener it points at)."""
    ports = {}
    for path in paths:
        for p in sorted(shipped_ports(path)):
            ports.setdefault(p, free_port())
    return ports
