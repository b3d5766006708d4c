"""lm-serve on a network: API keys, loopback Host names, origins, body type and size, `n`, slow bodies."""

from __future__ import annotations

import socket

import httpx
import pytest
from serve_helpers import JSON, Server

KEY, FILED = "sk-first-key", "sk-from-the-file"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ROUTES = [("GET", "/v1/models", None), ("GET", "/metrics", None), ("POST", "/tokenize", {"prompt": "hi"}),
          ("POST", "/detokenize", {"tokens": [1]}), ("POST", "/v1/chat/completions", CHAT),
          ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
          ("POST", "/v1/embeddings", {"input": "hi"})]


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# one a line\n{FILED}\n\n")
    s = Server(tiny_llama, "--api-key", KEY, "--api-key-file", str(keys), "--allowed-origins", "https://app.example",
               "--read-timeout", "2")
    yield s
    s.stop()


def bearer(key: str) -> dict[str, str]:
    return {**JSON, "Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_every_route_but_health_wants_the_key(server, method, path, body):
    for headers in (JSON, bearer("sk-wrong"), bearer(KEY[:-1]), {**JSON, "Authorization": KEY}):
        refused = httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)
        assert refused.status_code == 401
        assert refused.json() == {"error": {"message": "Incorrect or missing API key: send it as "
                                            "`Authorization: Bearer KEY`", "type": "invalid_request_error",
                                            "code": "invalid_api_key"}}
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200


def test_either_key_opens_the_routes(server):
    assert httpx.get(server.url + "/v1/models", headers=bearer(KEY), timeout=30).status_code == 200
    tokens = httpx.post(server.url + "/tokenize", json={"prompt": "hi"}, headers=bearer(FILED), timeout=60)
    assert tokens.status_code == 200 and tokens.json()["count"] > 0


def test_a_rebound_host_name_is_refused(server):
    """DNS rebinding: a page at attacker.example resolving its own name to 127.0.0.1."""
    rebound = httpx.get(server.url + "/v1/models", headers={**bearer(KEY), "Host": f"attacker.example:{server.port}"},
                        timeout=30)
    assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "invalid_host"
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]"):
        response = httpx.get(server.url + "/v1/models", headers={**bearer(KEY), "Host": host}, timeout=30)
        assert response.status_code == 200


def test_only_listed_origins_are_served_and_get_cors(server):
    other = httpx.get(server.url + "/v1/models", headers={**bearer(KEY), "Origin": "https://evil.example"}, timeout=30)
    assert other.status_code == 403 and other.json()["error"]["code"] == "origin_not_allowed"
    listed = httpx.get(server.url + "/v1/models", headers={**bearer(KEY), "Origin": "https://app.example"}, timeout=30)
    assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == "https://app.example"
    preflight = httpx.options(server.url + "/v1/chat/completions", timeout=30, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://app.example"


def test_a_body_that_is_not_json_is_a_415(server):
    for kind in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Authorization": f"Bearer {KEY}", **({"Content-Type": kind} if kind else {})}
        response = httpx.post(server.url + "/v1/chat/completions", content=b'{"messages": []}', headers=headers,
                              timeout=30)
        assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"


def raw_request(server, head: bytes, body: bytes = b"") -> bytes:
    """Send `head` and `body` and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_a_40_mib_body_is_a_413_before_it_is_read(server):
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {40 * 1024 * 1024}\r\n\r\n").encode()
    answer = raw_request(server, head, b'{"messages": ' + b" " * 4096)  # 4 KiB sent of 40 MiB, then nothing
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"code":"body_too_large"' in answer


def test_a_chunked_body_past_the_limit_is_a_413(server):
    chunk = b" " * (1024 * 1024)

    def body():
        yield b'{"messages": '
        for _ in range(40):
            yield chunk

    response = httpx.post(server.url + "/v1/chat/completions", content=body(), headers=bearer(KEY), timeout=60)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_a_body_that_never_comes_is_cut_off(server):
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    answer = raw_request(server, head, b'{"messa')
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in answer


def test_n_is_bounded(server):
    response = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "n": 17}, headers=bearer(KEY), timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "`n` must be from 1 to 16 (lm-serve --max-n)"


def test_a_client_sending_its_headers_a_byte_at_a_time_is_cut_off(server):
    """Slowloris: 400 bytes of headers at a byte every 0.1 s would hold the connection 40 s."""
    import select
    import time

    head = (f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"X-Filler: {'x' * 300}\r\n\r\n").encode()
    sent, closed = 0, False
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for byte in head:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable and sock.recv(1024) == b"":
                closed = True
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            sent += 1
            time.sleep(0.1)
    assert closed and sent < len(head)  # cut off before its headers were complete (--read-timeout 2)
    assert server.alive()


def test_past_the_concurrency_limit_a_503_in_openais_shape(tiny_llama):
    s = Server(tiny_llama, "--limit-concurrency", "1")
    try:
        head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n")
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
            sock.sendall(head)  # in the server, its body still to come: the one request allowed
            statuses = [httpx.get(s.url + "/v1/models", timeout=30) for _ in range(3)]
            busy = statuses[-1]
            assert busy.status_code == 503  # (the first ones may come before the server reads `head`)
            assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "server_busy"
            assert httpx.get(s.url + "/health", timeout=30).status_code == 200
        answered = [httpx.get(s.url + "/v1/models", timeout=30).status_code for _ in range(50)]
        assert 200 in answered  # once the first is gone, the next is served
    finally:
        s.stop()
