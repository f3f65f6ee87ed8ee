"""A real HTTP server on loopback for download tests: serves a folder, honours ``Range``, logs every
request, and can drop the connection half-way through a file (once per path) to test resuming."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerState:
    root: Path
    drop_once: set[str] = field(default_factory=set)  # paths whose first full transfer is cut at half
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range header, status)


def _handler(state: ServerState):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            target = state.root / path.lstrip("/")
            rng = self.headers.get("Range")
            if not target.is_file():
                state.requests.append((path, rng, 404))
                self.send_error(404)
                return
            data = target.read_bytes()
            start = 0
            if rng and (m := re.fullmatch(r"bytes=(\d+)-", rng)):
                start = int(m.group(1))
                if start >= len(data):
                    state.requests.append((path, rng, 416))
                    self.send_error(416)
                    return
            status = 206 if start else 200
            state.requests.append((path, rng, status))
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if path in state.drop_once and not start:
                state.drop_once.discard(path)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the client sees the connection end mid-body
                return
            self.wfile.write(body)

    return Handler


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """The base URL of a threaded HTTP server on 127.0.0.1 answering with ``handler``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def serve(root: Path) -> Iterator[tuple[str, ServerState]]:
    """(base URL, state) of a threaded HTTP server on 127.0.0.1 serving ``root``."""
    state = ServerState(Path(root))
    with serving(_handler(state)) as url:
        yield url, state
