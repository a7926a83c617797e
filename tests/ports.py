"""A free TCP port on 127.0.0.1 for a broker that a test or a benchmark starts: one picker for
tests/integration/conftest.py and tests/bench/common.py. Standard library only."""
import random
import socket


def pick_free_port(low, high, taken, mine=None, tries=1000):
    """A port drawn at random from [low, high) that nothing on 127.0.0.1 is bound to, not in
    `taken`, and one that mine(port) accepts if `mine` is given; it is added to `taken`, so
    that it is never handed out twice. None if `tries` draws found none."""
    for _ in range(tries):
        port = random.randrange(low, high)
        if port in taken or (mine and not mine(port)):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    return None
