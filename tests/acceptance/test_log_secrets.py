"""Secrets never reach the installed daemon's output: not from a malformed request's raw bytes (aiohttp's
own logger), not from a failing alert webhook's URL."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import TOKEN, Daemon, free_port, incoming, post, write_config

pytestmark = pytest.mark.acceptance

SECRETS = ("SECRETVALUE", "SECRET2", "SECRET3", TOKEN)
HEAD = b"POST /webhooks/sendpulse?token=SECRETVALUE HTTP/1.1\r\nHost: x\r\n"
AUTH = b"Authorization: Bearer SECRET2\r\n"
MALFORMED = {
    "a byte 0xff in a header value": HEAD + b"X-Webhook-Token: SECRET3\xff\r\n" + AUTH + b"Content-Length: 2\r\n\r\n[]",
    "a byte 0xff in the token header": b"POST /webhooks/sendpulse HTTP/1.1\r\nHost: x\r\n"
    b"X-Webhook-Token: SECRET3\xff\r\n" + AUTH + b"Content-Length: 2\r\n\r\n[]",
    "a byte 0xff in a header name": HEAD + b"X-SECRET3\xff: a\r\n" + AUTH + b"Content-Length: 0\r\n\r\n",
    "a control byte in the request line": b"POST /webhooks/sendpulse?token=SECRET\x01VALUE HTTP/1.1\r\nHost: x\r\n"
    + AUTH
    + b"\r\n",
    "a byte 0xff in the path": b"POST /webhooks/send\xffpulse?token=SECRETVALUE HTTP/1.1\r\nHost: x\r\n"
    + AUTH
    + b"\r\n",
    "a bad method": b"P\xffST /webhooks/sendpulse?token=SECRETVALUE HTTP/1.1\r\n" + AUTH + b"\r\n",
    "a bad version": b"POST /webhooks/sendpulse?token=SECRETVALUE HTTP/9.x\r\n" + AUTH + b"\r\n",
    "bad chunked encoding": HEAD + AUTH + b"Transfer-Encoding: chunked\r\n\r\nSECRET3\r\nSECRET3\r\n0\r\n\r\n",
    "chunked and a length": HEAD + AUTH + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "a header line too long": HEAD + b"Authorization: Bearer SECRET2" + b"A" * 9000 + b"\r\n\r\n",
    "bare LF line ends": HEAD.replace(b"\r\n", b"\n") + AUTH.replace(b"\r\n", b"\n") + b"\n",
}


def send_raw(port, raw):
    """The answer's head (a refused request may leave the connection open)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(raw)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := conn.recv(65536)):
            answer += chunk
    return answer


def test_malformed_requests_never_put_their_bytes_in_the_log(tmp_path):
    daemon = Daemon(write_config(tmp_path, level="DEBUG")).start()
    try:
        for name, raw in MALFORMED.items():
            answer = send_raw(daemon.port, raw)
            assert answer.startswith(b"HTTP/1."), (name, answer)
            assert post(daemon.url, [incoming(f"after {name}")])[0] == 200  # still serving
        daemon.wait_for_log("bad HTTP request from 127.0.0.1: ")
        assert daemon.status()["journal"]["events"] == len(MALFORMED)
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    log = daemon.log()
    leaked = [secret for secret in SECRETS if secret in log]
    assert not leaked, log
    assert "Bearer" not in log and "?token=" not in log


class _Failing(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_failing_alert_webhook_is_logged_by_its_host_alone(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/hooks/SECRET3?token=SECRETVALUE"
    # PostgreSQL on a port where nothing listens: the sink goes down, which is alerted
    config = write_config(
        tmp_path,
        extra=f'[postgres]\ndsn = "postgresql://u:SECRET2@127.0.0.1:{free_port()}/db"\n'
        f'[alerts]\nwebhook_url = "{url}"\n',
    )
    daemon = Daemon(config).start()
    try:
        daemon.wait_for_log("alert webhook failed", timeout=60)
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
        server.shutdown()
    log = daemon.log()
    assert f"http://127.0.0.1:{port} answered HTTP 500" in log
    assert not [secret for secret in SECRETS if secret in log], log
