"""A real ``redis-server`` for the cluster tests, started and stopped by them.

``make test`` installs Debian's ``redis-server`` when it is missing (Makefile,
``redis-server`` target), so a missing binary is a failure, never a skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections import deque

START_TIMEOUT_S = 20.0


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``start()`` waits for "Ready to accept connections"; ``stop()`` ends it. No data is
    saved: a restart comes back empty, like a Redis that lost its memory."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_tcp_port(host)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: deque[str] = deque(maxlen=500)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make test` (it installs "
                               "Debian's redis-server package) or apt-get install "
                               "redis-server")
        self.proc = subprocess.Popen(
            [binary, "--bind", self.host, "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
             "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if "Ready to accept connections" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(START_TIMEOUT_S) or self.proc.poll() is not None:
            self.proc.kill()
            raise RuntimeError("redis-server did not start:\n" + "\n".join(self.lines))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def wait_gone(self, key: str, timeout: float) -> float:
        """Seconds until ``key`` no longer exists (polled every 20 ms: a key's expiry has
        no event to await); ``TimeoutError`` after ``timeout``."""
        import redis

        client = redis.Redis(host=self.host, port=self.port, socket_timeout=2.0)
        started = time.monotonic()
        try:
            while client.exists(key):
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"{key} still exists after {timeout}s")
                time.sleep(0.02)
        finally:
            client.close()
        return time.monotonic() - started


class TcpProxy:
    """A TCP forwarder to Redis that a test can cut: one node's path to the registry
    fails while the other nodes' still works (a partition on loopback)."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.host = host
        self.open = threading.Event()
        self.open.set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every connection and refuse new ones until ``restore()``."""
        self.open.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()
