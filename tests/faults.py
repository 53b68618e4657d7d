"""Real parts that misbehave, for fault tests (issue 11): a TCP proxy in front of a PostgreSQL
that can cut a connection after the statement was sent, and a Redis that never answers.

Both listen on 127.0.0.1 ports of their own and are stopped by the test that started them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Blackhole", "PgProxy", "blackhole", "pg_proxy", "pg_socket_path"]

_CHUNK = 65536
_SYNC = b"S\x00\x00\x00\x04"  # the frontend Sync message


def pg_socket_path(socket_dir: str) -> Path:
    """The Unix socket file of the embedded server whose socket directory is ``socket_dir``."""
    found = sorted(p for p in Path(socket_dir).glob(".s.PGSQL.*") if not p.name.endswith(".lock"))
    assert found, f"no PostgreSQL socket in {socket_dir}"
    return found[0]


class PgProxy:
    """Forwards 127.0.0.1:<port> to a PostgreSQL Unix socket, with faults on demand.

    ``cut_after(marker, when=...)`` arms a cut of the connection whose next statement contains
    ``marker``:

    - ``when="sent"``: the statement is forwarded up to its Sync message (where an autocommit
      statement commits), then both sockets are closed: the statement runs on the server (to
      its commit, or until something ends it) and the client never hears back;
    - ``when="answered"``: the server's answer (sent after the commit) is swallowed and both
      sockets are closed: the statement committed, the client never learns it.

    With ``refuse_after_cut`` every later connection is refused until ``heal()``.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._when = "sent"
        self._refuse_after_cut = False
        self.refusing = False
        self.cut = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name="pg-proxy", daemon=True).start()

    def cut_after(self, marker: bytes, *, when: str = "sent", refuse_after_cut: bool = False) -> None:
        assert when in ("sent", "answered"), when
        with self._lock:
            self._marker = marker
            self._when = when
            self._refuse_after_cut = refuse_after_cut
            self.cut.clear()

    def heal(self) -> None:
        with self._lock:
            self._marker = None
            self.refusing = False

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                server.connect(str(self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
            link: dict[str, str | None] = {"armed": None}  # the cut armed on this connection
            threading.Thread(target=self._from_client, args=(client, server, link), daemon=True).start()
            threading.Thread(target=self._from_server, args=(server, client, link), daemon=True).start()

    def _from_client(self, client: socket.socket, server: socket.socket, link: dict[str, str | None]) -> None:
        try:
            while data := client.recv(_CHUNK):
                server.sendall(data)
                with self._lock:
                    if link["armed"] is None and self._marker is not None and self._marker in data:
                        link["armed"] = self._when
                        self._marker = None
                    hit = link["armed"] == "sent" and data.endswith(_SYNC)
                if hit:
                    self._cut(client, server)
                    return
        except OSError:
            pass
        self._drop(client, server)

    def _from_server(self, server: socket.socket, client: socket.socket, link: dict[str, str | None]) -> None:
        try:
            while data := server.recv(_CHUNK):
                with self._lock:
                    hit = link["armed"] == "answered"
                if hit:
                    self._cut(client, server)  # the answer is swallowed
                    return
                client.sendall(data)
        except OSError:
            pass
        self._drop(server, client)

    def _cut(self, *socks: socket.socket) -> None:
        with self._lock:
            self.refusing = self._refuse_after_cut
        self._drop(*socks)
        self.cut.set()

    def _drop(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._sockets.discard(sock)


@contextlib.contextmanager
def pg_proxy(target: Path) -> Iterator[PgProxy]:
    proxy = PgProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()


class Blackhole:
    """A "Redis" on 127.0.0.1 that accepts connections and never answers (BASELINES.md).

    ``connected`` is set once a client connected; ``release()`` closes every accepted socket and
    the listener, so a client blocked on it gets its connection closed and cannot reconnect.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.connected = threading.Event()
        self._accepted: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="blackhole", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._accepted.append(conn)  # read nothing, answer nothing
            self.connected.set()

    def release(self) -> None:
        self._closed = True
        # shutdown() wakes the thread blocked in accept(); close() alone would leave it listening.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        for conn in self._accepted:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self.release()


@contextlib.contextmanager
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()
