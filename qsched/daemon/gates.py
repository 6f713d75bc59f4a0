"""The gates a config passes before a daemon runs it: `check` is the one validation path of start,
`qsched daemon check`, `qsched policy validate` and SIGHUP; and the pieces it builds (the Slurm
integration, the TCP listener's TLS), plus systemd's readiness notice."""
from __future__ import annotations

import logging
import socket
import ssl

from ..config import Config
from ..errors import ConfigError
from ..integration import SlurmIntegration
from ..policy import make_policy
from .redis_server import socket_gid

log = logging.getLogger("qsched.daemon")


def slurm_hooks(config: Config) -> SlurmIntegration:
    """MUNGE identity, job checks and accounting, when the Slurm side is installed and configured."""
    try:
        from ..slurm import slurm_integration
    except ImportError:
        return SlurmIntegration()
    return slurm_integration(config)


def sd_notify(path: str | None, state: str) -> None:
    """Tell systemd (Type=notify) when the daemon is ready and when it stops: `After=qsched` then means
    Redis, workers and listeners are up. No-op outside systemd."""
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path          # '@': the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)
    except OSError as e:
        log.warning("sd_notify %s: %s", state, e)


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The TCP listener's TLS (daemon.tls), or None; a certificate or key that does not load is a
    ConfigError naming the field."""
    if not config.tls_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"daemon.tls.cert_file: cannot load it with key_file ({e})",
                          field="daemon.tls.cert_file") from None
    if config.tls_client_ca_file:
        try:
            ctx.load_verify_locations(config.tls_client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"daemon.tls.client_ca_file: cannot load ({e})",
                              field="daemon.tls.client_ca_file") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if config.tls_require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def check(config: Config) -> SlurmIntegration:
    """Everything start-up would refuse, without starting anything: the one validation path of start,
    `daemon check`, `policy validate` and SIGHUP (the config was parsed already). Returns the Slurm
    integration it builds (it may run sinfo and munge: a running daemon calls it off its event loop)."""
    make_policy(config.policy)
    socket_gid(config.redis_socket_group)
    tls_context(config)
    return slurm_hooks(config)
