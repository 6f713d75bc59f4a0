"""Errors that PennyLane users catch by PennyLane's classes.

Everything the daemon or the client raises while a ``qsched.qubit`` device runs a batch (a refused
request, a failed or cancelled task, a timeout, an unreachable daemon) reaches the user as a
:class:`QschedDeviceError`: a ``pennylane.exceptions.DeviceError`` *and* the qsched error it was, so
``except qml.DeviceError``, ``except qsched.errors.QschedError`` and ``except qsched.errors.TaskFailed``
all work. Never a Qiskit ``JobError``.
"""
from __future__ import annotations

from pennylane.exceptions import DeviceError

from ..errors import BadRequest, QschedError, TaskCancelled, TaskFailed, Timeout


class QschedDeviceError(QschedError, DeviceError):
    """A qsched error raised through the PennyLane device; also a PennyLane DeviceError."""

    def __init__(self, message: str, *, field: str | None = None, limit=None):
        QschedError.__init__(self, message, field=field, limit=limit)


class DeviceTaskFailed(QschedDeviceError, TaskFailed):
    """A task failed on the device (the worker's message names the cause)."""


class DeviceTaskCancelled(QschedDeviceError, TaskCancelled):
    """A task was cancelled (by the user, an admin, or the job's end)."""


class DeviceTimeout(QschedDeviceError, Timeout):
    """Results did not arrive within the device's ``timeout``."""


class DeviceRequestRefused(QschedDeviceError, BadRequest):
    """The daemon refused the request (too many qubits for the pool, shots over the limit, ...)."""


_BY_CLASS: dict[type, type[QschedDeviceError]] = {
    TaskFailed: DeviceTaskFailed, TaskCancelled: DeviceTaskCancelled, Timeout: DeviceTimeout,
    BadRequest: DeviceRequestRefused,
}


def _device_class(cls: type[QschedError]) -> type[QschedDeviceError]:
    """The PennyLane-side class for a qsched error class: one of those above, or one made (and
    kept) for it, so that ``except <that qsched class>`` still catches it."""
    made = _BY_CLASS.get(cls)
    if made is None:
        made = _BY_CLASS[cls] = type(f"Device{cls.__name__}", (QschedDeviceError, cls),
                                     {"__module__": __name__, "__doc__": cls.__doc__})
    return made


def _qsched_class(err: QschedError) -> type[QschedError]:
    """The error's own class in qsched.errors (an SDK subclass such as the Qiskit layer's
    QschedJobError, which is also a Qiskit JobError, is mapped back by its code)."""
    base = next(c for c in type(err).__mro__ if c.__module__ == "qsched.errors")
    if base is QschedError:
        by_code = {c.code: c for c in (TaskFailed, TaskCancelled, Timeout, BadRequest)}
        base = by_code.get(getattr(err, "code", ""), QschedError)
    return base


def as_device_error(err: QschedError) -> QschedDeviceError:
    """A qsched error (client, daemon or task) -> the same error as a PennyLane DeviceError."""
    if isinstance(err, QschedDeviceError):
        return err
    new = _device_class(_qsched_class(err))(err.message, field=err.field, limit=err.limit)
    new.status = err.status
    return new
