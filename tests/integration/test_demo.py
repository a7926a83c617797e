"""scripts/demo.sh as README tells people to run it (issue 15): it starts,
README's control-API example answers against it, a node that dies is
reported once (not by every device's publish), and Ctrl-C or kill stops
everything it started within a second.

The demo builds and installs tally (cmake --install) and uses the fixed
ports of conf/cluster/ (11884-11886, 18081-18083), as a user's would.
"""
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import REPO, wait_for

pytestmark = [pytest.mark.nosan, pytest.mark.alone, pytest.mark.slow]  # fixed ports
PORTS = (11884, 11885, 11886, 18081, 18082, 18083)


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def descendants(pid):
    """Every live process below pid (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Demo:
    def __init__(self, workdir):
        assert not any(listening(p) for p in PORTS), "the demo's ports are taken"
        env = dict(os.environ, DEMO_SECONDS="300", DEMO_DIR=os.path.join(workdir, "demo"))
        # A session of its own, as a terminal gives it: Ctrl-C goes to its group. And SIGINT
        # handled as a terminal leaves it: a suite started in the background by a shell
        # without job control inherits it ignored, and a shell cannot trap an ignored signal.
        self.proc = subprocess.Popen([os.path.join(REPO, "scripts", "demo.sh")], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                      signal.SIG_DFL))
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_for(lambda: "tally demo is running" in self.output() or self.proc.poll() is not None,
                 600, interval=0.5, what="the demo to start")
        assert self.proc.poll() is None, self.output()
        self.family = descendants(self.proc.pid)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self):
        return "".join(self.lines)

    def stop(self, how):
        """Stops the demo as a user would; returns the seconds it took."""
        start = time.monotonic()
        if how == "ctrl-c":
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.terminate()
        self.proc.wait(30)
        took = time.monotonic() - start
        print(f"demo stopped by {how} in {took:.3f} s")
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") and cmdline(p)
                                 for p in self.family), 5, what="the demo's children to go")
        return took

    def kill_all(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in self.family:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def demo(workdir):
    d = Demo(workdir)
    yield d
    d.kill_all()


def readme_control_example():
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"```sh\n(.*?)```", f.read(), re.S)
    return next(b for b in blocks if "mosquitto_rr" in b and "$CONTROL/tally/v1" in b)


def test_readme_control_example_answers_and_ctrl_c_stops_at_once(demo):
    subprocess.run(["mosquitto_pub", "-p", "11884", "-t", "counters/likes/inc", "-m", "1"],
                   check=True, timeout=10)
    r = subprocess.run(["bash", "-c", readme_control_example()], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, f"README's example failed:\n{r.stdout}{r.stderr}"
    assert '"command":"getCounter"' in r.stdout.replace(" ", ""), r.stdout
    assert '"error"' not in r.stdout, r.stdout

    took = demo.stop("ctrl-c")
    assert took < 1.0, f"Ctrl-C took {took:.2f} s"
    assert not any(listening(p) for p in PORTS)


def test_dead_node_reported_once_and_kill_stops_at_once(demo):
    node_b = next(p for p in demo.family if "conf/cluster/node-b.conf" in cmdline(p))
    os.kill(node_b, signal.SIGKILL)
    wait_for(lambda: "node b stopped" in demo.output(), 5, what="the demo to report node b")
    time.sleep(3)  # the devices publishing through node b keep trying meanwhile
    out = demo.output()
    assert out.count("node b stopped") == 1, out
    assert "refused" not in out.lower(), out

    took = demo.stop("kill")
    assert took < 1.0, f"kill took {took:.2f} s"
    assert not any(listening(p) for p in PORTS)
