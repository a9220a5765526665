"""Ending an HTTP exchange on time, however slowly the server answers.

requests' `timeout` bounds each socket read, not a whole answer: a server that trickles a byte
every half second holds a request (and Ctrl-C) for as long as it likes. So every exchange runs
under a `Watch` (its deadline and stop event); the connections of a `watched_session()` report to
the Watch of the thread that uses them, and a watchdog thread shuts their socket down as soon as
the Watch is due, which ends the blocked read at once (during the TCP connect itself, only the
connect timeout applies: the socket does not exist yet).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import poolmanager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

TICK = 0.05  # seconds between the watchdog's looks: the delay between a deadline (or Ctrl-C) and the cut

_current = threading.local()  # .watch: the Watch of the exchange this thread is running
# Orders a cut against the connection being handed to another exchange (a pooled connection is reused).
_handover = threading.Lock()


class Watch:
    """One exchange's deadline (time.monotonic) and stop event, and the connection it is using.

    `stop_grace`: seconds the exchange may go on after the stop event is set (a submit's answer
    names the job, which can then be cancelled; cut short, the job would run unseen).
    """

    def __init__(self, deadline: float, stop: threading.Event | None, stop_grace: float = 0.0) -> None:
        self.deadline = deadline
        self.stop = stop
        self.stop_grace = stop_grace
        self.connection: Any = None
        self.cut = False  # set once the watchdog has acted: the exchange's error means "late" or "stopped"
        self.finished = False
        self._stopped_at: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if now >= self.deadline:
            return True
        if self.stop is None or not self.stop.is_set():
            return False
        if self._stopped_at is None:
            self._stopped_at = now
        return now - self._stopped_at >= self.stop_grace

    def cut_connection(self) -> None:
        with _handover:
            if self.finished:
                return
            self.cut = True
            connection = self.connection
            if connection is None or getattr(connection, "pasd_watch", None) is not self or connection.sock is None:
                return
            connection.pasd_was_cut = True
            sock = getattr(connection.sock, "socket", connection.sock)  # urllib3's TLS-in-TLS wraps the socket
            try:  # the plain socket's shutdown, also under TLS: it wakes the blocked read in the other thread
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except (OSError, TypeError):
                pass  # already closed, or not a socket we know how to cut


class Watchdog:
    """A thread that runs while exchanges do, cutting each one that is due."""

    def __init__(self) -> None:
        self._watches: set[Watch] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, deadline: float, stop: threading.Event | None, stop_grace: float = 0.0) -> Iterator[Watch]:
        """Run one exchange on this thread under a Watch."""
        watch = Watch(deadline, stop, stop_grace)
        with self._lock:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fal-pasd-watchdog", daemon=True)
                self._thread.start()
        _current.watch = watch
        try:
            yield watch
        finally:
            _current.watch = None
            with _handover:
                watch.finished = True
            with self._lock:
                self._watches.discard(watch)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._watches:
                    self._thread = None  # the next exchange starts a new thread
                    return
                due = [watch for watch in self._watches if watch.due()]
            for watch in due:  # again at every tick: the socket may appear later (while connecting)
                watch.cut_connection()
            time.sleep(TICK)


class _Reporting:
    """Connection mixin: tells the current thread's Watch which connection its request uses."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        watch = getattr(_current, "watch", None)
        with _handover:
            if getattr(self, "pasd_was_cut", False):  # shut down during an earlier exchange: start afresh
                self.close()  # type: ignore[attr-defined]
                self.pasd_was_cut = False
            self.pasd_watch = watch
            if watch is not None:
                watch.connection = self
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Reporting, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Reporting, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections report to the Watch of their thread."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if manager.pool_classes_by_scheme is poolmanager.pool_classes_by_scheme:  # not SOCKS, which has its own
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


def watched_session(pool_size: int) -> requests.Session:
    """A requests Session whose exchanges a Watchdog can cut; `pool_size` connections kept per host."""
    session = requests.Session()
    adapter = WatchedAdapter(pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
