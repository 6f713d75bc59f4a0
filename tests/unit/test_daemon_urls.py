"""QSCHED_URL may list several daemons: a client tries them in turn and keeps to the one that answers."""
from __future__ import annotations

import http.server
import json
import socket
import threading

import pytest

from qsched.client.transport import SyncTransport, daemon_urls


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok", "port": self.server.server_address[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def live():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]          # closed again: connections are refused


def test_the_list_is_split_and_trimmed():
    assert daemon_urls(" https://a:1, https://b:2 ,") == ["https://a:1", "https://b:2"]
    assert daemon_urls("unix:///x.sock") == ["unix:///x.sock"]


def test_a_refused_daemon_is_skipped_and_the_answering_one_kept(live):
    dead = _dead_port()
    t = SyncTransport(f"http://127.0.0.1:{dead},http://127.0.0.1:{live}", timeout=5)
    assert t.request("GET", "/v1/health")["port"] == live
    assert t.request("GET", "/v1/health")["port"] == live
    assert not t.unix and t._cur == 1
    t.close()


def test_every_daemon_refusing_is_unreachable_without_having_sent():
    from qsched.client.retry import Unreachable
    t = SyncTransport(f"http://127.0.0.1:{_dead_port()},http://127.0.0.1:{_dead_port()}", timeout=2)
    with pytest.raises(Unreachable) as e:
        t.request("GET", "/v1/health")
    assert e.value.sent is False
