"""A stand-in for real OpenAI-compatible servers: it answers with what vLLM, llama.cpp's server
(and any other server recorded) answered to the same requests, byte for byte, and can be told to
misbehave (an error as a plain string, a 500 that is not JSON, a 429 before the answer, a
connection cut in the middle of a stream).

Recording: `python tests/replay_server.py record UPSTREAM_URL OUT.jsonl --port P` runs a proxy on
port P that forwards every request to UPSTREAM_URL and appends the exchange to OUT.jsonl; point
lm-generate's --server at the proxy. tests/data/replay/README.md says how each file was made.

A request is found by its method, path and body (as canonical JSON); one that was not recorded
is answered 404, naming what was asked, so a test fails loudly rather than passing on a guess.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def key(method: str, path: str, body: bytes) -> str:
    if body:
        try:
            body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
        except json.JSONDecodeError:
            pass
    return f"{method} {path} {body.decode('utf-8', 'replace')}"


def load(path: Path) -> dict[str, dict[str, Any]]:
    exchanges = {}
    for line in path.read_text().splitlines():
        if line.strip():
            x = json.loads(line)
            exchanges[key(x["method"], x["path"], x["request"].encode())] = x
    return exchanges


class Fault:
    """One misbehaviour, used for the next request to `path` (then the recording answers)."""

    def __init__(self, path: str, status: int, body: bytes, headers: dict[str, str] | None = None,
                 cut_after: int | None = None):
        self.path, self.status, self.body, self.headers, self.cut_after = path, status, body, headers or {}, cut_after


class ReplayServer:
    def __init__(self, recordings: Path):
        self.exchanges = load(recordings)
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, int]] = []  # (method, path, status) of every request answered
        self.lock = threading.Lock()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def _take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.path == path:
                    self.faults.remove(fault)
                    return fault
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = replay._take_fault(self.path)
                if fault is not None:
                    return self._send(fault.status, fault.body, fault.headers, fault.cut_after)
                x = replay.exchanges.get(key(self.command, self.path, body))
                if x is None:
                    return self._send(404, json.dumps({"error": {"message": f"not recorded: {self.command} "
                                                                 f"{self.path} {body[:300]!r}"}}).encode(), {})
                self._send(x["status"], base64.b64decode(x["response_b64"]),
                           {"Content-Type": x.get("content_type") or "application/json"})

            do_GET = do_POST = _answer

            def _send(self, status: int, body: bytes, headers: dict[str, str], cut_after: int | None = None) -> None:
                with replay.lock:
                    replay.seen.append((self.command, self.path, status))
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut_after is not None:  # promise the whole body, send part, hang up
                    self.wfile.write(body[:cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        return Handler

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def record(upstream: str, out: Path, port: int) -> None:
    """A proxy on `port` that forwards to `upstream` and appends each exchange to `out`."""
    import httpx

    lock = threading.Lock()

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {"Content-Type": "application/json"} if body else {}
            r = httpx.request(self.command, upstream.rstrip("/") + self.path, content=body or None, headers=headers,
                              timeout=600)
            data = r.content
            with lock, out.open("a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path, "request": body.decode(),
                                    "status": r.status_code, "content_type": r.headers.get("content-type"),
                                    "response_b64": base64.b64encode(data).decode()}) + "\n")
            self.send_response(r.status_code)
            self.send_header("Content-Type", r.headers.get("content-type") or "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _forward

    ThreadingHTTPServer(("127.0.0.1", port), Proxy).serve_forever()


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "record" and sys.argv[4] == "--port":
        record(sys.argv[2], Path(sys.argv[3]), int(sys.argv[5]))
    else:
        sys.exit("usage: replay_server.py record UPSTREAM_URL OUT.jsonl --port P")
