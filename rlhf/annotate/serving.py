"""Running the app under uvicorn: in the foreground (``rlhf annotate serve``) or in a thread (tests, benchmarks)."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import uvicorn
from starlette.types import ASGIApp


def serve_forever(app: ASGIApp, host: str, port: int) -> None:
    uvicorn.run(app, host=host, port=port, log_level="info")


@contextmanager
def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1", startup_timeout_s: float = 10.0) -> Iterator[str]:
    """Serve on a free port of ``host`` in a daemon thread; yields the base URL, stops on exit.

    The socket is bound here (port 0: the OS picks) and handed to uvicorn, so the port is known
    before the server starts and no other process can take it in between.
    """
    # proto=IPPROTO_TCP, not the default 0: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every keep-alive response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="annotate-server")
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host}:{port} within {startup_timeout_s} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
