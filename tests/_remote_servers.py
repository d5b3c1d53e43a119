"""Real servers on 127.0.0.1 for the remote-read tests and benchmark, with fault injection and counters.

* :class:`ObjectServer`: a small HTTP server holding objects in memory; honours ``Range`` (one range) and
  ``If-Match``, sends ``ETag`` and ``Content-Range``; ``honour_if_match=False`` plays a server that ignores it.
* :class:`S3Proxy`: moto's threaded S3 server (a real S3 HTTP API) behind a forwarding proxy, so the same
  faults and counters apply to S3 requests made by obstore.

Both count GET requests and body bytes sent, and consume a queue of faults, one per GET: ``"503"``,
``"reset"`` (connection closed, no answer), ``"truncate"`` (headers promise the range, half the body comes),
``("delay", seconds)``, or a callable run before the request is served (e.g. replacing the object).
"""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

Fault = str | tuple[str, float] | Callable[[], None]


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.faults: list[Fault] = []
        self.latency = 0.0  # added to every GET
        self.log: list[tuple[str, str]] = []  # (path without query, Range header) of every GET, in order

    def reset(self) -> None:
        with self.lock:
            self.requests = self.bytes = 0
            self.log.clear()

    def next_fault(self, path: str = "", range_: str = "") -> Fault | None:
        with self.lock:
            self.requests += 1
            self.log.append((path.split("?", 1)[0], range_))
            return self.faults.pop(0) if self.faults else None

    def sent(self, n: int) -> None:
        with self.lock:
            self.bytes += n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body in two writes wait on delayed ACKs (~40 ms a request)
    server: Any

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        counters: _Counters = self.server.counters
        fault = counters.next_fault(self.path, self.headers.get("Range", ""))
        if counters.latency:
            time.sleep(counters.latency)
        if callable(fault):
            fault()
            fault = None
        if isinstance(fault, tuple):
            time.sleep(fault[1])
            fault = None
        if fault == "503":
            self._send(503, {}, b"busy")
            return
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
            return
        status, headers, body = self.server.answer(self)
        if fault == "truncate" and len(body) > 1:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            counters.sent(len(body) // 2)
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self._send(status, headers, body)

    def do_HEAD(self) -> None:
        status, headers, body = self.server.answer(self)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.server.counters.sent(len(body))  # before the write: a client may count as soon as it has the bytes
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.counters = _Counters()
        self.answer = answer

    def handle_error(self, request: object, client_address: object) -> None:
        """Injected resets end connections abruptly on purpose: nothing to report."""


class _Running:
    """Start/stop and counters shared by both servers."""

    server: _Server

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def counters(self) -> _Counters:
        return self.server.counters

    @property
    def port(self) -> int:
        return self.server.server_address[1]


class ObjectServer(_Running):
    """Objects in memory behind ``http://127.0.0.1:PORT/NAME``."""

    def __init__(self, honour_if_match: bool = True, honour_range: bool = True) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}  # name: (data, ETag), replaced in one assignment
        self.last_headers: dict[str, str] = {}  # of the last request answered
        self.honour_if_match, self.honour_range = honour_if_match, honour_range
        self.server = _Server(self._answer)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def put(self, name: str, data: bytes) -> None:
        self.objects[name] = (bytes(data), '"' + hashlib.sha256(data).hexdigest()[:32] + '"')

    def _answer(self, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        self.last_headers = dict(request.headers.items())
        name = unquote(request.path.split("?", 1)[0].lstrip("/"))  # obstore's GCS client escapes '/' and '.'
        if name not in self.objects:
            return 404, {}, b"no such object"
        data, etag = self.objects[name]
        wanted = request.headers.get("If-Match")
        if self.honour_if_match and wanted is not None and wanted != etag:
            return 412, {"ETag": etag}, b"precondition failed"
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if not self.honour_range or match is None:
            return 200, {"ETag": etag}, data
        first = int(match.group(1))
        last = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
        if first >= len(data):
            return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
        headers = {"ETag": etag, "Content-Range": f"bytes {first}-{last}/{len(data)}", "Accept-Ranges": "bytes"}
        headers["Last-Modified"] = "Tue, 08 Dec 2026 00:00:00 GMT"  # object_store's GCS and Azure clients need it
        return 206, headers, data[first : last + 1]


class S3Proxy(_Running):
    """moto's S3 server, reached through a proxy that counts and injects faults. ``endpoint`` is the proxy's."""

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise

        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.moto_port = probe.getsockname()[1]
        probe.close()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self.moto.start()
        self.last_headers: dict[str, str] = {}  # of the last request forwarded
        self.server = _Server(self._forward)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        super().stop()
        self.moto.stop()

    def _forward(self, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        self.last_headers = dict(request.headers.items())
        upstream = http.client.HTTPConnection("127.0.0.1", self.moto_port, timeout=60)
        try:
            upstream.request(request.command, request.path, headers=dict(request.headers.items()))
            response = upstream.getresponse()
            body = response.read()
            skip = {"content-length", "transfer-encoding", "connection", "server", "date"}
            headers = {k: v for k, v in response.getheaders() if k.lower() not in skip}
            return response.status, headers, body
        finally:
            upstream.close()
