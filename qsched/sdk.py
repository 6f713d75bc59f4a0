"""What both SDKs (Qiskit primitives, the PennyLane device) share, with no framework imported: one lazily
opened session per primitive/backend/device, and reading a task result's fields.

The session comes from (in order) an explicit session, an explicit client, or a client built from the
environment that the Slurm plugin or `qsched submit --local` sets (QSCHED_URL, QSCHED_SESSION, ...),
so the same user code runs on a laptop and on a cluster.
"""
from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Any

import numpy as np

from .wire import decode_array


def result_field(result: Any, name: str, default=None):
    """Read one field of a task result: the client's TaskResult (attributes) or an API dict.

    Arrays still in their wire form ({dtype, shape, data}) are decoded here, so the converters accept
    both a decoded result and the raw JSON of docs/api.md.
    """
    if isinstance(result, dict):
        v = result.get(name, default)
    elif isinstance(getattr(result, "data", None), dict):      # qsched.client.TaskResult
        v = result.data.get(name, default)
        if v is None and name == "meta":
            v = getattr(result, "meta", None) or default
    else:
        v = getattr(result, name, default)
    if isinstance(v, dict) and {"dtype", "shape", "data"} <= v.keys():
        v = decode_array(v, name)
    return v



def _close_quietly(session, client, owns_client):
    # an attached session is the Slurm job's: the plugin closes it when the job ends
    if not getattr(session, "attached", False):
        try:
            session.close(retry_s=5)      # at exit: do not wait out a long outage
        except Exception:
            pass
    if owns_client:
        try:
            client.close()
        except Exception:
            pass


class SessionHandle:
    """Opens the session on first use (not at construction: building a device must stay cheap),
    closes what it opened at interpreter exit."""

    def __init__(self, pool: str | None = None, client=None, session=None, default_pool: str = "aer",
                 name: str | None = None):
        self._pool = pool
        self._client = client
        self._session = session
        self._default_pool = default_pool
        self._name = name
        self._owns = session is None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None
        self.features: dict[str, bool] = {}

    @property
    def pool(self) -> str | None:
        if self._session is not None:
            return getattr(self._session, "pool", None) or self._pool
        return self._pool or os.environ.get("QSCHED_POOL") or self._default_pool

    @property
    def client(self):
        return self._client if self._client is not None else getattr(self.get(), "client", None)

    def get(self):
        if self._session is not None:
            return self._session
        with self._lock:
            if self._session is None:
                import qsched.client as qc
                owns_client = self._client is None
                client = self._client if self._client is not None else qc.Client()
                self._client = client
                kwargs = {"pool": self.pool}
                if self._name:
                    kwargs["name"] = self._name
                session = client.session(**kwargs)
                if getattr(session, "attached", False) and self._pool and session.pool \
                        and session.pool != self._pool:
                    # the job's session is on another pool: this workload asked for a different
                    # device kind (e.g. lightning for adjoint next to aer sampling), open its own
                    session = client.open_session(self._pool, name=self._name or "")
                self._session = session
                self._finalizer = fin = weakref.finalize(self, _close_quietly, session, client, owns_client)
                atexit.register(fin)
        return self._session

    def offers(self, feature: str, value) -> bool:
        """Whether every worker of the pool describes `feature` as `value`: asked when a call first
        needs it; kept once every worker of the pool has described itself (a worker that is down
        does not decide it for the handle's life)."""
        known = self.features.get(feature)
        if known is not None:
            return known
        try:
            devices = [d for d in self.client.devices() if d.get("pool") == self.pool]
        except (AttributeError, TypeError, KeyError):   # an older daemon, a stand-in session
            self.features[feature] = False
            return False
        described = [d["worker"] for d in devices if d.get("worker")]
        ok = bool(described) and all(w.get(feature) == value for w in described)
        if len(described) == len(devices):
            self.features[feature] = ok
        return ok and len(described) == len(devices)

    def upload(self, circuit, key=None) -> str:
        """Template hash for a circuit, uploaded once per session. `key` (a structure key) skips
        re-serializing a circuit this handle has already sent. Without a key the client's content
        hash decides (a user's circuit may have been mutated in place since the last call)."""
        session = self.get()
        if key is None:
            return session.upload(circuit)
        cache = self.__dict__.setdefault("_uploaded", {})
        ck = key
        hit = cache.get(ck)
        if hit is not None and hit[0] is circuit:
            return hit[1]
        h = session.upload(circuit)
        if len(cache) > 1024:
            cache.clear()
        cache[ck] = (circuit, h)
        return h

    def close(self):
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self._session = None
            self._client = None if self._owns else self._client



def pauli_basis(observables: list) -> tuple[list, np.ndarray] | None:
    """Wire observables ([[pauli, coeff], ...] each) over fewer distinct Pauli strings than there are
    observables (one Hamiltonian per row over shared terms: a zipped PUB, a batch of tapes) -> (those
    strings as observables of coefficient 1, coefficients [observables, strings]). A task then computes
    bindings x strings expectation values, not bindings x observables Hamiltonians (quadratic in a
    zipped PUB's rows), and the values are the product with the coefficients, as aer computes them.
    None when there is nothing to gain. For exact values only: noise must be drawn per observable."""
    index: dict[str, int] = {}
    for o in observables:
        for p, _ in o:
            index.setdefault(p, len(index))
    if len(index) >= len(observables):
        return None
    coef = np.zeros((len(observables), len(index)))
    for i, o in enumerate(observables):
        for p, c in o:
            coef[i, index[p]] += c
    return [[[p, 1.0]] for p in index], coef
