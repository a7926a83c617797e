"""A hand-written MQTT 3.1.1 / 5 client on a plain socket, standard library only, shared
by the integration tests (tests/integration/conftest.py re-exports it) and the benchmarks.
It does what paho 1.6.1 cannot: read the reason code of a PUBACK (MQTT v5), send topics
paho would refuse, and go silent without ever sending PINGREQ (a dead network)."""
import socket


class RawClient:
    """A hand-written MQTT client on a plain socket, for what paho 1.6.1 cannot do:
    read the reason code of a PUBACK (MQTT v5), send topics paho would refuse, and
    go silent without ever sending PINGREQ (a dead network connection)."""

    def __init__(self, port, client_id, version=5, keepalive=60, clean=True):
        self.version = version
        self.mid = 0
        self.messages = []  # (topic, payload bytes, retain) of PUBLISHes received
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # As a latency-minded client should (tally's nodes run with set_tcp_nodelay): with
        # Nagle's algorithm a request written while the last small packet is unacknowledged
        # waits for the broker's delayed ACK, 40 ms, in every subscribe/unsubscribe round.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = client_id.encode()
        body = (self._str(b"MQTT") + bytes([version, 0x02 if clean else 0x00])
                + keepalive.to_bytes(2, "big") + self._props() + self._str(cid))
        self._send(0x10, body)
        kind, _, rest = self.recv()
        if kind != 0x20 or rest[1] != 0:
            raise ConnectionError(f"CONNACK refused: {rest!r}")

    # -- encoding ------------------------------------------------------------
    @staticmethod
    def _str(b):
        return len(b).to_bytes(2, "big") + b

    def _props(self):
        return b"\x00" if self.version == 5 else b""

    @staticmethod
    def _packet(first, body):
        n, length = len(body), b""
        while True:
            byte, n = n % 128, n // 128
            length += bytes([byte | (0x80 if n else 0)])
            if not n:
                return bytes([first]) + length + body

    def _send(self, first, body):
        self.sock.sendall(self._packet(first, body))

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def recv(self):
        """The next packet: (type nibble << 4, flags, body)."""
        first = self._read(1)[0]
        n, mult = 0, 1
        while True:
            b = self._read(1)[0]
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return first & 0xF0, first & 0x0F, self._read(n)

    def _next_mid(self):
        self.mid = self.mid % 65535 + 1
        return self.mid

    def _expect(self, kind, mid):
        """Reads until the packet of kind answering mid; keeps PUBLISHes; returns its body."""
        while True:
            k, flags, body = self.recv()
            if k == 0x30:
                self.messages.append(self.take_publish(flags, body))
            elif k == kind and int.from_bytes(body[:2], "big") == mid:
                return body

    def take_publish(self, flags, body):
        """A received PUBLISH as (topic, payload bytes, retain); acknowledges QoS 1 (the only
        QoS the tests subscribe with above 0)."""
        tlen = int.from_bytes(body[:2], "big")
        topic, rest = body[2:2 + tlen], body[2 + tlen:]
        if flags & 0x06:
            pmid, rest = rest[:2], rest[2:]
            self._send(0x40, pmid)
        if self.version == 5:
            rest = rest[1 + rest[0]:]  # short properties only
        return topic.decode(errors="replace"), rest, bool(flags & 1)

    def publish_packet(self, topic, payload=b"", qos=0, retain=False, mid=None):
        """The bytes of one PUBLISH (mid: its packet id, QoS 1 and 2), to send many at once or
        without waiting for answers. topic and payload may be str or bytes."""
        topic = topic.encode() if isinstance(topic, str) else topic
        payload = payload.encode() if isinstance(payload, str) else payload
        body = self._str(topic) + (mid.to_bytes(2, "big") if qos else b"")
        return self._packet(0x30 | (qos << 1) | (1 if retain else 0),
                            body + self._props() + payload)

    # -- operations ------------------------------------------------------------
    def publish_nowait(self, topic, payload=b"", qos=1):
        """Sends one PUBLISH and reads nothing (its PUBACK is left unread); returns its mid."""
        mid = self._next_mid() if qos else None
        self.sock.sendall(self.publish_packet(topic, payload, qos, mid=mid))
        return mid

    def publish(self, topic, payload=b"", qos=1, retain=False):
        """Publishes and waits for the answer; returns the reason code (0 = success;
        QoS 0: None). topic and payload may be str or bytes."""
        mid = self._next_mid() if qos else None
        self.sock.sendall(self.publish_packet(topic, payload, qos, retain, mid))
        if qos == 0:
            return None
        ans = self._expect(0x40 if qos == 1 else 0x50, mid)
        rc = ans[2] if len(ans) > 2 else 0
        if qos == 2:
            if rc >= 0x80:
                return rc
            self._send(0x62, mid.to_bytes(2, "big"))
            self._expect(0x70, mid)
        return rc

    def subscribe(self, topic, qos=1):
        """Subscribes and returns the granted QoS / reason code from the SUBACK."""
        mid = self._next_mid()
        self._send(0x82, mid.to_bytes(2, "big") + self._props() + self._str(topic.encode())
                   + bytes([qos]))
        ans = self._expect(0x90, mid)
        return ans[-1]

    def unsubscribe(self, topic):
        mid = self._next_mid()
        self._send(0xA2, mid.to_bytes(2, "big") + self._props() + self._str(topic.encode()))
        self._expect(0xB0, mid)

    def ping(self):
        """A round trip: proves the broker still serves this connection."""
        self._send(0xC0, b"")
        while True:
            k, _, _ = self.recv()
            if k == 0xD0:
                return True

    def disconnect(self):
        try:
            self._send(0xE0, b"")
        except OSError:
            pass
        self.sock.close()

    def close(self):
        """Drops the socket without DISCONNECT (shut down first, so that a thread blocked
        reading it returns)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
