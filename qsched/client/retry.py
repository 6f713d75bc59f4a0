"""When the client retries a request and how long it waits: pure (no clock, no sleep, no I/O), so the
policy is tested on its own. A daemon restart (SIGTERM: drain, exit, start again on the same Redis)
looks to a client like 503 "draining", then a missing socket or a refused connection, then service
again; clients ride through it for up to QSCHED_RETRY_S seconds (default 300, 0 disables). A client
that no daemon has answered yet waits QSCHED_CONNECT_S at most (default 10): a wrong or missing
QSCHED_URL, or no daemon started, is a mistake to report, not an outage to ride through."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .. import errors

DEFAULT_RETRY_S = 300.0
ENV = "QSCHED_RETRY_S"
DEFAULT_CONNECT_S = 10.0
CONNECT_ENV = "QSCHED_CONNECT_S"


class Unreachable(errors.Unavailable):
    """The daemon could not be reached or the connection broke. `sent`: the request may have reached
    the daemon (the connection broke after it was written), so only a request that is safe to repeat
    is sent again."""

    def __init__(self, message: str, *, cause: str, sent: bool):
        super().__init__(message)
        self.cause = cause
        self.sent = sent


def os_cause(e: BaseException) -> str:
    """A short, stable reason for a socket error (what the once-per-outage log line says)."""
    if isinstance(e, FileNotFoundError):
        return "socket missing"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "connection reset"
    if isinstance(e, TimeoutError):
        return "timed out"
    return type(e).__name__


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter: attempt n sleeps uniform(0, min(cap, base * 2**n)),
    and retrying stops once `total_s` has passed since the request first failed."""
    total_s: float = DEFAULT_RETRY_S
    base_s: float = 0.05
    cap_s: float = 5.0
    connect_s: float = DEFAULT_CONNECT_S     # the budget while no daemon has answered this client yet

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RetryPolicy:
        return cls(total_s=_seconds(env, ENV, DEFAULT_RETRY_S), connect_s=_seconds(env, CONNECT_ENV, DEFAULT_CONNECT_S))

    def first_contact(self) -> RetryPolicy:
        """This policy for a client that has never reached a daemon: the shorter budget."""
        return replace(self, total_s=min(self.total_s, self.connect_s))

    @property
    def enabled(self) -> bool:
        return self.total_s > 0

    def ceiling(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, 60))     # 2**1024 overflows a float

    def delay(self, attempt: int, u: float) -> float:
        """`u` uniform in [0, 1): full jitter spreads the clients that one restart cut off at once."""
        return u * self.ceiling(attempt)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:          # also NaN
        raise errors.ConfigError(f"{name}: expected seconds >= 0, got {raw!r}", field=name)
    return value


class Backoff:
    """One request's retries: started at its first failure (`start`, monotonic seconds)."""

    def __init__(self, policy: RetryPolicy, start: float):
        self.policy, self.start, self.attempt = policy, start, 0

    def next_delay(self, now: float, u: float) -> float | None:
        """Seconds to sleep before the next attempt, or None: give up (the time limit is spent)."""
        left = self.policy.total_s - (now - self.start)
        if left <= 0:
            return None
        d = min(self.policy.delay(self.attempt, u), left)
        self.attempt += 1
        return d


def retry_reason(err: BaseException, *, idempotent: bool = True) -> str | None:
    """Why `err` is worth retrying ("draining", "socket missing", ...), or None when it is final.
    Bad requests, refused credentials, unknown ids and oversized bodies (400/401/403/404/413) are
    final: sending them again gives the same answer."""
    if isinstance(err, Unreachable):
        return err.cause if idempotent or not err.sent else None
    if not isinstance(err, errors.QschedError):
        return None
    if err.code == errors.Draining.code:
        return "draining"
    if err.status == 409 and "draining" in err.message.lower():     # daemons before errors.Draining
        return "draining"
    if err.status == 503:
        return f"unavailable ({err.field})" if err.field else "unavailable"
    return None
