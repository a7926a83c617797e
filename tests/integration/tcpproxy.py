"""A small TCP proxy on 127.0.0.1 that a test can cut and heal, to partition
a bridge without touching the brokers on either side.

    proxy = TcpProxy(target_port)      # listens on proxy.port at once
    proxy.cut()                        # drops every connection, refuses new ones
    proxy.heal()                       # accepts and forwards again
    proxy.close()
    TcpProxy(target_port, delay=1.2)  # every byte arrives 1.2 s late, in order

Threads, not asyncio, so it runs beside paho's threads in the same test.
Bounded: at most max_conns connections at a time (more are closed at once),
every socket call has a timeout, and close() joins every thread it started.
"""
import collections
import select
import socket
import threading
import time


class TcpProxy:
    def __init__(self, target_port, target_host="127.0.0.1", max_conns=16, delay=0.0):
        self.target = (target_host, target_port)
        self.max_conns = max_conns
        self.delay = delay  # seconds each chunk is held, both ways
        self.lock = threading.Lock()
        self.conns = []  # (client socket, upstream socket) pairs being forwarded
        self.threads = []
        self.open = True  # False while cut
        self.closing = threading.Event()
        self.accepted = 0  # connections forwarded since start, for tests to wait on
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._spawn(self._accept_loop)

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        with self.lock:
            self.threads = [x for x in self.threads if x.is_alive()] + [t]

    def _accept_loop(self):
        while not self.closing.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                refuse = not self.open or len(self.conns) >= self.max_conns
            if refuse:
                sock.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                sock.close()
                continue
            pair = (sock, upstream)
            with self.lock:
                if not self.open:  # cut while we were connecting upstream
                    sock.close()
                    upstream.close()
                    continue
                self.conns.append(pair)
                self.accepted += 1
            self._spawn(self._pump, pair)

    def _pump(self, pair):
        """Forwards both ways until either side closes or the pair is cut;
        each chunk read leaves `delay` seconds later, in order."""
        a, b = pair
        peer = {a: b, b: a}
        held = {a: collections.deque(), b: collections.deque()}  # (due, chunk) read from each
        try:
            while not self.closing.is_set():
                with self.lock:
                    if pair not in self.conns:
                        return
                now = time.monotonic()
                for s, q in held.items():
                    while q and q[0][0] <= now:
                        peer[s].settimeout(5)
                        peer[s].sendall(q.popleft()[1])
                wait = min([0.1] + [q[0][0] - now for q in held.values() if q])
                ready, _, _ = select.select([a, b], [], [], max(wait, 0))
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    held[s].append((time.monotonic() + self.delay, data))
        except (OSError, ValueError):  # ValueError: cut() closed a socket under select
            return
        finally:
            self._drop(pair)

    def _drop(self, pair):
        with self.lock:
            if pair in self.conns:
                self.conns.remove(pair)
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def connections(self):
        with self.lock:
            return len(self.conns)

    def cut(self):
        """Closes every forwarded connection and refuses new ones until heal()."""
        with self.lock:
            self.open = False
            pairs = list(self.conns)
        for pair in pairs:
            self._drop(pair)

    def heal(self):
        with self.lock:
            self.open = True

    def close(self):
        self.cut()
        self.closing.set()
        self.listener.close()
        with self.lock:
            threads = list(self.threads)
        for t in threads:
            t.join(5)
