"""The rendezvous store of the local FMI backend: a torch.distributed TCPStore on loopback.

The local cloud hosts one store (`serve_store`) for its lifetime; every communicator connects
to it (`connect_store`) and namespaces its keys by communicator name.
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta

from torch.distributed import TCPStore

from cosmicai.comm.config import DEFAULT_OP_TIMEOUT_S
from cosmicai.errors import CosmicAIError

_RETRY_INTERVAL_S = 0.05


def serve_store(host: str = "127.0.0.1", port: int = 0) -> TCPStore:
    """Host a store on `host:port` (port 0 picks a free one, read it back from `.port`).

    The store lives as long as the returned object is referenced.
    """
    try:
        return TCPStore(
            host,
            port,
            is_master=True,
            wait_for_workers=False,
            timeout=timedelta(seconds=DEFAULT_OP_TIMEOUT_S),
        )
    except RuntimeError as exc:
        raise CosmicAIError(
            f"cannot host the FMI rendezvous store on {host}:{port}: {exc}; "
            f"pick another port (0 lets the system choose one)"
        ) from exc


def connect_store(host: str, port: int, timeout_s: float) -> TCPStore:
    """A client of the store at `host:port`, or an error once `timeout_s` has passed.

    A refused connection is retried until the deadline (the store may still be starting), and
    the deadline holds: TCPStore's own connect loop can overrun its timeout.
    """
    deadline = time.monotonic() + timeout_s
    last_error: OSError | None = None
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            with socket.create_connection((host, port), timeout=remaining):
                break
        except OSError as exc:
            last_error = exc
            time.sleep(min(_RETRY_INTERVAL_S, max(0.0, deadline - time.monotonic())))
    else:
        raise CosmicAIError(
            f"cannot reach the FMI rendezvous store at {host}:{port} within {timeout_s:g} s "
            f"({last_error or 'no attempt finished'}); start the local cloud (it hosts the "
            f"store) or fix Local.host/Local.port in the FMI configuration"
        )
    try:
        return TCPStore(
            host,
            port,
            is_master=False,
            wait_for_workers=False,
            timeout=timedelta(seconds=timeout_s),
        )
    except RuntimeError as exc:
        raise CosmicAIError(
            f"{host}:{port} accepts connections but is not an FMI rendezvous store ({exc}); "
            f"check Local.host/Local.port in the FMI configuration"
        ) from exc
