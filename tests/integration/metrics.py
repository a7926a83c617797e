"""tally-exporter and a real Prometheus (Debian's `prometheus`) for the
tests: processes on 127.0.0.1 ports, scraped and queried over HTTP."""
import json
import os
import subprocess
import urllib.parse
import urllib.request

from conftest import BUILD, free_port, wait_for

EXPORTER = os.path.join(BUILD, "clients", "tally-exporter")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def parse_exposition(text):
    """{(name, frozenset of label pairs): value} and {name: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif line and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            name, _, labels = head.partition("{")
            pairs = []
            for item in filter(None, labels.rstrip("}").split('",')):
                k, _, v = item.partition('="')
                pairs.append((k, v.rstrip('"')))
            samples[(name, frozenset(pairs))] = float(value)
    return samples, types


class Exporter:
    def __init__(self, workdir, broker_port, binary=EXPORTER, extra=()):
        self.port = free_port()
        self.log = open(os.path.join(workdir, f"exporter-{self.port}.log"), "w")
        self.proc = subprocess.Popen([binary, "-p", str(broker_port), "--listen",
                                      f"127.0.0.1:{self.port}", *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._up, 10, what="tally-exporter to serve /metrics")

    def _up(self):
        assert self.proc.poll() is None, f"tally-exporter exited with {self.proc.returncode}"
        try:
            return "tally_exporter_broker_connected 1" in self.text()
        except OSError:
            return False

    def text(self):
        return http_get(f"http://127.0.0.1:{self.port}/metrics")

    def samples(self):
        return parse_exposition(self.text())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


class Prometheus:
    """Debian's prometheus scraping targets every 500 ms, its storage and
    listener its own."""

    def __init__(self, workdir, targets):
        self.dir = os.path.join(workdir, "prometheus")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        conf = os.path.join(self.dir, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global:\n  scrape_interval: 500ms\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: tally\n    static_configs:\n"
                    f"      - targets: {json.dumps(targets)}\n")
        self.log = open(os.path.join(self.dir, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={conf}",
             f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, 60, interval=0.2, what="prometheus to be ready")

    def _ready(self):
        assert self.proc.poll() is None, f"prometheus exited:\n{self.read_log()[-3000:]}"
        try:
            return http_get(f"http://127.0.0.1:{self.port}/-/ready").strip() != ""
        except OSError:
            return False

    def read_log(self):
        with open(os.path.join(self.dir, "prometheus.log"), errors="replace") as f:
            return f.read()

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        doc = json.loads(http_get(url))
        assert doc["status"] == "success", doc
        return doc["data"]

    def value(self, query):
        """The query's single value now, or None when it has no result."""
        result = self.api("query", query=query)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.log.close()
