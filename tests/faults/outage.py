"""A TCP forwarder in front of the test S3 server that a test can take down and bring back.

`Outage(target_port)` listens on a free 127.0.0.1 port and forwards every connection to the
target. `down()` closes the listener and every open connection (clients then see refused or
reset connections, as when a server stops); `up()` listens again on the same port. Threads only,
so it lives and dies with the test.
"""

from __future__ import annotations

import socket
import threading
import time


class Outage:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target = host, target_port
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        probe = socket.socket()
        probe.bind((host, 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # the port may linger for a moment after down()
            try:
                s.bind((self.host, self.port))
                break
            except OSError:
                time.sleep(0.1)
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        s, self._listener = self._listener, None
        if s is not None:
            _close(s)  # shutdown first: a bare close() does not wake the blocked accept()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            _close(c)

    def outage(self, seconds: float) -> threading.Thread:
        """Down now, up again after `seconds` (in the background); returns the thread."""
        self.down()
        t = threading.Thread(target=lambda: (time.sleep(seconds), self.up()), daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection((self.host, self.target), timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _close(src), _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
