"""One exception root for everything qsched raises.

Server-side errors carry an HTTP status and the field/limit that was violated, so the API can answer
with a JSON error naming them, and the client can re-raise the same class with the server's words.
"""
from __future__ import annotations


class QschedError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None, limit=None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit

    def to_json(self) -> dict:
        err = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        if self.limit is not None:
            err["limit"] = self.limit
        return {"error": err}


class BadRequest(QschedError):
    status = 400
    code = "bad_request"


class Unauthorized(QschedError):
    status = 401
    code = "unauthorized"


class Forbidden(QschedError):
    status = 403
    code = "forbidden"


class NotFound(QschedError):
    status = 404
    code = "not_found"


class RequestTimeout(QschedError):
    status = 408
    code = "request_timeout"


class Conflict(QschedError):
    status = 409
    code = "conflict"


class QuotaExceeded(QschedError):
    """An account's or user's device-second quota for the period is used up (policy.quotas)."""
    status = 429
    code = "quota_exceeded"


class PayloadTooLarge(QschedError):
    status = 413
    code = "payload_too_large"


class Unavailable(QschedError):
    status = 503
    code = "unavailable"


class ReplicationTimeout(Unavailable):
    """A write reached the primary but not `redis.wait_replicas` replicas in time: not acknowledged (a
    retry under the same idempotency key gets the same tasks if they survived, new ones if not)."""
    code = "replication_timeout"


class Fenced(Unavailable):
    """This daemon lost the leader lease (another daemon took over): it writes nothing and stops."""
    code = "not_leader"


class Draining(Unavailable):
    """The daemon is stopping (SIGTERM): the request was not taken; retry on the next daemon."""
    code = "draining"


class ConfigError(QschedError):
    """Invalid YAML config or policy; `field` is the dotted path of the bad value."""
    code = "config"


class TaskFailed(QschedError):
    code = "task_failed"


class TaskCancelled(QschedError):
    code = "task_cancelled"


class Timeout(QschedError):
    status = 504
    code = "timeout"


_BY_CODE: dict[str, type[QschedError]] = {
    cls.code: cls for cls in (BadRequest, Unauthorized, Forbidden, NotFound, RequestTimeout, Conflict, PayloadTooLarge,
                              QuotaExceeded, Unavailable, Draining, ReplicationTimeout, Fenced, ConfigError, TaskFailed,
                              TaskCancelled, Timeout)}

CLIENT_ERROR_CODES = sorted(code for code, cls in _BY_CODE.items() if cls.status < 500)


def from_json(status: int, body: dict) -> QschedError:
    """Rebuild the server's error on the client side."""
    err = (body or {}).get("error") or {}
    cls = _BY_CODE.get(str(err.get("code")), QschedError)
    e = cls(err.get("message") or f"HTTP {status}", field=err.get("field"), limit=err.get("limit"))
    e.status = status
    return e


class DeviceError(QschedError):
    """A remote device's service refused or failed a call. `retriable`: the same call may succeed later
    (429, 5xx, a timeout: the service did not take it), else it is fatal for the tasks it carried.
    `retry_after`: seconds the service asked us to wait, when it said."""
    code = "device_error"
    retriable = False

    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RetriableDeviceError(DeviceError):
    retriable = True


class DeviceTimeout(RetriableDeviceError):
    """The call did not answer in time: whether the service acted on it is unknown."""
    code = "device_timeout"
