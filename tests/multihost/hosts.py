"""Test hosts made of Linux network namespaces: each host is a namespace with one address on a private
bridge (10.x.y.0/24, made and removed here); processes are started in a host with `ip netns exec`.
Where namespaces cannot be made (no root, no iproute2; or QSCHED_TEST_HOSTS=loopback), the hosts are
loopback addresses 127.x.y.z instead, and `Net.kind` says so. Also: real redis-server/redis-sentinel
processes (Debian's packages, installed with apt when missing) and a primary + replica + three sentinels."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def need_redis_binaries() -> str | None:
    """Install redis-server and redis-sentinel (Debian) if missing; why they cannot be had, or None."""
    if shutil.which("redis-server") and shutil.which("redis-sentinel"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "redis-server/redis-sentinel missing and cannot apt-get them (needs root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-q", "redis-server", "redis-sentinel"],
                ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "redis-server", "redis-sentinel"]):
        subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        if shutil.which("redis-server") and shutil.which("redis-sentinel"):
            return None
    return "apt-get could not install redis-server and redis-sentinel"


@dataclass
class Host:
    name: str
    addr: str
    ns: str | None                        # None: a loopback address in this namespace

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv] if self.ns else list(argv)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Net:
    kind: str = "netns"                   # or "loopback" (with the reason in `why`)
    why: str = ""
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)
    bridge: str = ""
    gw: str = ""                          # this namespace's address on the bridge
    _prefix: str = ""
    _tag: str = ""
    _n: int = 0
    redis: Any = None                     # a test's own client of the store, where it keeps one

    @classmethod
    def make(cls) -> Net:
        net = cls()
        tag = net._tag = f"{os.getpid() % 100000}{random.randint(0, 99)}"
        net._prefix = f"10.{random.randint(100, 250)}.{random.randint(1, 250)}"
        net.bridge = f"qsb{tag}"[:15]
        forced = os.environ.get("QSCHED_TEST_HOSTS") == "loopback"
        if forced or os.geteuid() != 0 or not shutil.which("ip"):
            net.kind, net.why = "loopback", "QSCHED_TEST_HOSTS=loopback" if forced else "not root or no iproute2"
            net._prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
            return net
        r = _ip("link", "add", net.bridge, "type", "bridge", check=False)
        if r.returncode:
            net.kind, net.why = "loopback", f"ip link add type bridge: {r.stderr.strip()}"
            net._prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
            return net
        net.gw = f"{net._prefix}.254"
        _ip("addr", "add", f"{net.gw}/24", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        return net

    def host(self, name: str) -> Host:
        self._n += 1
        addr = f"{self._prefix}.{self._n}"
        if self.kind == "loopback":
            h = Host(name, addr, None)
        else:
            ns = f"qs{self._tag}{name}"[:30]
            r = _ip("netns", "add", ns, check=False)
            if r.returncode:
                raise RuntimeError(f"ip netns add {ns}: {r.stderr.strip()}")
            veth, peer = f"qv{self._tag}{self._n}"[:15], f"qp{self._tag}{self._n}"[:15]
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", peer)
            _ip("-n", ns, "link", "set", peer, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            h = Host(name, addr, ns)
        self.hosts[name] = h
        return h

    def spawn(self, host: Host, argv: list[str], log: Path, **kw) -> subprocess.Popen:
        p = subprocess.Popen(host.argv(argv), stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                             stdin=kw.pop("stdin", subprocess.DEVNULL), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            kill_group(p)
        if self.kind == "netns":
            for h in self.hosts.values():
                _ip("netns", "del", h.ns or "", check=False)     # takes its veth end along
            _ip("link", "del", self.bridge, check=False)


def private_file(path: Path, text: str) -> Path:
    """A file only its owner reads (passwords, configs that hold one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


@contextlib.contextmanager
def made_hosts(prefix: str, names: tuple[str, ...]):
    """(net, base dir, hosts by name), all removed afterwards (QSCHED_TEST_KEEP=1 keeps the files);
    skips where redis-server/redis-sentinel cannot be had."""
    if why := need_redis_binaries():
        import pytest
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"cannot run under CI=true: {why}")      # as tests/conftest.py's unavailable()
        pytest.skip(why)
    base = tmpdir(prefix)
    net = Net.make()
    try:
        yield net, base, {n: net.host(n) for n in names}
    finally:
        net.close()
        if not os.environ.get("QSCHED_TEST_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


def kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        pass


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((addr if addr.startswith("127.") else "127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:        # not up yet
            last = e
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s" + (f" (last error: {last})" if last else ""))


# ---------------------------------------------------------------- Redis with Sentinel

@dataclass
class RedisNode:
    host: Host
    port: int
    proc: subprocess.Popen


@dataclass
class SentinelStore:
    """A primary, a replica and three sentinels on the given hosts; one password (requirepass and
    masterauth on the data nodes, auth-pass in the sentinels) that is written only to 0600 files."""
    net: Net
    dir: Path
    password: str
    nodes: list[RedisNode]
    sentinels: list[RedisNode]
    service: str = "qsched"

    @property
    def sentinel_addrs(self) -> list[str]:
        return [f"{s.host.addr}:{s.port}" for s in self.sentinels]

    @property
    def password_file(self) -> Path:
        return self.dir / "redis.pass"

    def url(self) -> str:
        """The Sentinel URL with the password in (for the test's own clients)."""
        from urllib.parse import quote
        return f"redis+sentinel://:{quote(self.password, safe='')}@{','.join(self.sentinel_addrs)}/{self.service}"

    def primary(self) -> RedisNode:
        import redis
        for s in self.sentinels:
            try:
                sentinel = redis.Redis(host=s.host.addr, port=s.port, socket_timeout=2)
                host, port = sentinel.sentinel_get_master_addr_by_name(self.service)
                host = host.decode() if isinstance(host, bytes) else host
                return next(n for n in self.nodes if n.host.addr == host and n.port == int(port))
            except (redis.RedisError, StopIteration, TypeError):
                continue
        raise AssertionError("no sentinel names a primary")

    def data(self, node: RedisNode):
        import redis
        return redis.Redis(host=node.host.addr, port=node.port, password=self.password, socket_timeout=5)

    def config_block(self, **extra) -> dict:
        return {"sentinel": {"addresses": self.sentinel_addrs, "service": self.service},
                "password_file": str(self.password_file), **extra}


def start_sentinel_store(net: Net, data_hosts: list[Host], sentinel_hosts: list[Host], base: Path) -> SentinelStore:
    base.mkdir(parents=True, exist_ok=True)
    password = os.urandom(12).hex()
    private_file(base / "redis.pass", password)
    def node(h: Host, name: str, default_port: int, binary: str, lines) -> RedisNode:
        port = free_port(h.addr) if net.kind == "loopback" else default_port
        d = base / name
        d.mkdir()
        conf = private_file(d / f"{binary}.conf", "\n".join([f"bind {h.addr}", f"port {port}", f"dir {d}",
                                                             "daemonize no", "protected-mode no",
                                                             f"logfile {d / 'log'}", *lines(port)]) + "\n")
        return RedisNode(h, port, net.spawn(h, [binary, str(conf)], d / "stdout.log"))

    nodes: list[RedisNode] = []
    for i, h in enumerate(data_hosts):
        replica = [f"replicaof {nodes[0].host.addr} {nodes[0].port}"] if nodes else []
        nodes.append(node(h, f"redis{i}", 6379, "redis-server", lambda port, r=replica: [
            "save \"\"", "appendonly no", f"requirepass {password}", f"masterauth {password}",
            "repl-diskless-sync yes", "repl-diskless-sync-delay 0", *r]))
    sentinels = [node(h, f"sentinel{i}", 26379, "redis-sentinel", lambda port, h=h: [
        f"sentinel announce-ip {h.addr}", f"sentinel monitor qsched {nodes[0].host.addr} {nodes[0].port} 2",
        f"sentinel auth-pass qsched {password}", "sentinel down-after-milliseconds qsched 1000",
        "sentinel failover-timeout qsched 4000", "sentinel parallel-syncs qsched 1"])
        for i, h in enumerate(sentinel_hosts)]
    store = SentinelStore(net, base, password, nodes, sentinels)
    import redis

    def replicated():
        info = store.data(nodes[0]).info("replication")
        return info.get("connected_slaves", 0) >= len(nodes) - 1 and all(
            info.get(f"slave{i}", {}).get("state") == "online" for i in range(len(nodes) - 1))

    def sentinels_agree():
        for s in sentinels:
            m = redis.Redis(host=s.host.addr, port=s.port, socket_timeout=2).sentinel_master("qsched")
            if (int(m.get("num-other-sentinels", 0)) < len(sentinels) - 1
                    or int(m.get("num-slaves", 0)) < len(nodes) - 1):
                return False
        return True
    wait_for(replicated, 30, "replica in sync")
    wait_for(sentinels_agree, 30, "sentinels know each other and the replica")
    return store


# ---------------------------------------------------------------- qsched processes on hosts

def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_daemon(net: Net, host: Host, state_dir: Path, cfg: dict, *, wait_devices: list[str] | None = None):
    state_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"state_dir": str(state_dir), **cfg}
    config = write_config(state_dir / "qsched.yaml", cfg)
    env = {**os.environ, "QSCHED_STATE_DIR": str(state_dir)}
    for k in ("QSCHED_URL", "QSCHED_SESSION", "QSCHED_REDIS_URL"):
        env.pop(k, None)
    p = net.spawn(host, [sys.executable, "-m", "qsched", "up", "--config", str(config)], state_dir / "daemon.log",
                  env=env)
    return p


def start_worker(net: Net, host: Host, device: str, config: Path, log: Path) -> subprocess.Popen:
    return net.spawn(host, [sys.executable, "-m", "qsched", "worker", "--device", device, "--config", str(config)], log)


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def make_certs(d: Path, ips: list[str]) -> dict[str, Path]:
    """A CA, a server certificate for these IP addresses and a client certificate, all made here."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=qsched test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    san = "subjectAltName=" + ",".join(f"IP:{ip}" for ip in ips)
    for name, ext in (("server", f"{san}\nextendedKeyUsage=serverAuth"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=qsched {name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    for k in ("ca.key", "server.key", "client.key"):
        os.chmod(d / k, 0o600)
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def start_redis(net: Net, host: Host, base: Path) -> tuple[str, Path, subprocess.Popen]:
    """One redis-server with a password on the host; (URL without the password, password file, process)."""
    base.mkdir(parents=True, exist_ok=True)
    password = os.urandom(12).hex()
    pw = private_file(base / "redis.pass", password)
    port = free_port(host.addr) if net.kind == "loopback" else 6379
    conf = private_file(base / "redis.conf", f"bind {host.addr}\nport {port}\ndir {base}\nsave \"\"\n"
                        f"appendonly yes\nappendfsync everysec\nrequirepass {password}\nprotected-mode no\n"
                        f"logfile {base / 'redis.log'}\n")
    p = net.spawn(host, ["redis-server", str(conf)], base / "stdout.log")
    import redis
    wait_for(lambda: redis.Redis(host=host.addr, port=port, password=password, socket_timeout=2).ping(), 30,
             "redis up")
    return f"redis://{host.addr}:{port}/0", pw, p
