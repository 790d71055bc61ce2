"""An HTTPAdapter whose open connections another thread can cut (`abort()`).

`requests`' timeout bounds each socket operation, not a whole call: a controller that drips one header line
every two seconds holds a `timeout=3` call for as long as it likes. The supervisor therefore gives every call
one overall deadline and, when it passes, calls `abort()`: shutting the sockets down makes the blocked read
in the call's thread return at once, so the abandoned thread ends too instead of lingering.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class AbortableAdapter(HTTPAdapter):
    def __init__(self) -> None:
        self._connections: weakref.WeakSet[HTTPConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        super().__init__(max_retries=0)

    def _track(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connections.add(connection)

    def _pool_classes(self) -> dict[str, type[HTTPConnectionPool]]:
        track = self._track

        class TrackedHTTPConnection(HTTPConnection):
            def connect(self) -> None:
                super().connect()
                track(self)

        class TrackedHTTPSConnection(HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                track(self)

        class TrackedHTTPPool(HTTPConnectionPool):
            ConnectionCls = TrackedHTTPConnection

        class TrackedHTTPSPool(HTTPSConnectionPool):
            ConnectionCls = TrackedHTTPSConnection

        return {"http": TrackedHTTPPool, "https": TrackedHTTPSPool}

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes()

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = self._pool_classes()
        return manager

    def abort(self) -> int:
        """Shut down every open connection; returns how many sockets were cut."""
        with self._lock:
            connections = list(self._connections)
            self._connections = weakref.WeakSet()
        cut = 0
        for connection in connections:
            sock = getattr(connection, "sock", None)
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                cut += 1
        return cut
