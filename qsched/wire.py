"""The wire format shared by daemon, workers and clients: QPY templates, raw little-endian arrays,
Pauli observables. JSON for control; nothing is ever unpickled."""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math

import numpy as np

from .errors import BadRequest

_DTYPES = {"float64": "<f8", "float32": "<f4", "uint8": "u1", "int64": "<i8", "complex128": "<c16"}
PAULI_CHARS = frozenset("IXYZ")
# A template whose metadata sets this key true asks estimate and gradient tasks for row i's value at
# observable i alone (as many observables as rows; results [rows, 1]): a batch of tapes each with its
# own Hamiltonian, without rows x observables. Offered by the workers that describe it (lightning).
ROWS_METADATA_KEY = "qsched.rows"


def encode_array(a) -> dict:
    a = np.asarray(a)
    name = a.dtype.name
    if name not in _DTYPES:
        a = a.astype(np.float64)
        name = "float64"
    a = np.ascontiguousarray(a, dtype=_DTYPES[name])
    return {"dtype": name, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def decode_array(obj, field: str, *, dtype: str | None = None, ndim: int | None = None) -> np.ndarray:
    if not isinstance(obj, dict) or not {"dtype", "shape", "data"} <= obj.keys():
        raise BadRequest(f"{field}: expected an array object {{dtype, shape, data}}", field=field)
    name = obj["dtype"]
    if not isinstance(name, str) or name not in _DTYPES or (dtype and name != dtype):
        raise BadRequest(f"{field}: dtype must be {dtype or ' or '.join(_DTYPES)}, got {name!r}", field=field)
    shape = obj["shape"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31
                                              for s in shape) or len(shape) > 8:
        raise BadRequest(f"{field}.shape: expected at most 8 integers in 0..2^31-1", field=f"{field}.shape")
    if ndim is not None and len(shape) != ndim:
        raise BadRequest(f"{field}.shape: expected {ndim} dimensions, got {len(shape)}",
                         field=f"{field}.shape", limit=ndim)
    try:
        raw = base64.b64decode(obj["data"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise BadRequest(f"{field}.data: not valid base64", field=f"{field}.data") from None
    dt = np.dtype(_DTYPES[name])
    if len(raw) != dt.itemsize * math.prod(shape):         # exact: numpy's product could wrap
        raise BadRequest(f"{field}.data: {len(raw)} bytes do not match shape {shape} of {name}",
                         field=f"{field}.data")
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_digest(qpy: bytes, circuit) -> str:
    """The template's digest without what differs when a script run again builds the same circuit
    (the replay of a requeued job matches on it): its parameters' UUIDs (random per Parameter object)
    are replaced by their index, and its name (by default from a process-wide counter) is left out
    (the first occurrence: the circuit's header; its result does not depend on it)."""
    qpy = qpy.replace(circuit.name.encode(), b"", 1)
    for i, p in enumerate(circuit.parameters):
        qpy = qpy.replace(p.uuid.bytes, i.to_bytes(16, "big"))
    return digest(qpy)


def dump_qpy(circuit) -> bytes:
    from qiskit import qpy
    buf = io.BytesIO()
    qpy.dump(circuit, buf)
    return buf.getvalue()


def load_qpy(data: bytes, field: str = "template"):
    """Decode exactly one circuit; anything else is the client's error, not ours."""
    from qiskit import qpy
    try:
        circuits = qpy.load(io.BytesIO(data))
    except Exception as e:  # QPY raises many types on garbage; all mean "undecodable"
        raise BadRequest(f"{field}: undecodable QPY ({type(e).__name__}: {e})"[:300], field=field) from None
    if len(circuits) != 1:
        raise BadRequest(f"{field}: expected exactly one circuit, got {len(circuits)}", field=field, limit=1)
    return circuits[0]


def load_qasm3(text: str, field: str = "qasm3"):
    try:
        from qiskit import qasm3
        return qasm3.loads(text)
    except Exception as e:
        raise BadRequest(f"{field}: cannot parse OpenQASM 3 ({type(e).__name__}: {e})"[:300], field=field) from None


def template_info(circuit) -> dict:
    return {"num_qubits": circuit.num_qubits, "num_clbits": circuit.num_clbits,
            "parameters": [p.name for p in circuit.parameters],
            "cregs": [[c.name, c.size] for c in circuit.cregs]}


def check_observables(obs, num_qubits: int, field: str = "observables", limit: int = 10_000) -> list:
    """[[["ZZI", 1.0], ...], ...] -> the same, validated; Pauli strings are in Qiskit order."""
    if not isinstance(obs, list) or not obs:
        raise BadRequest(f"{field}: expected a non-empty list of observables", field=field)
    if len(obs) > limit:
        raise BadRequest(f"{field}: at most {limit} observables per task", field=field, limit=limit)
    out = []
    for i, terms in enumerate(obs):
        f = f"{field}[{i}]"
        if not isinstance(terms, list) or not terms:
            raise BadRequest(f"{f}: expected a non-empty list of [pauli, coeff] terms", field=f)
        clean = []
        for j, term in enumerate(terms):
            ft = f"{f}[{j}]"
            if not (isinstance(term, list) and len(term) == 2 and isinstance(term[0], str)
                    and isinstance(term[1], (int, float)) and not isinstance(term[1], bool)):
                raise BadRequest(f"{ft}: expected [pauli string, real coefficient]", field=ft)
            p = term[0].upper()
            if len(p) != num_qubits or not set(p) <= PAULI_CHARS:
                raise BadRequest(f"{ft}: Pauli string must have {num_qubits} characters from IXYZ, got "
                                 f"{term[0][:80]!r}{'...' if len(term[0]) > 80 else ''}", field=ft, limit=num_qubits)
            try:
                coeff = float(term[1])
            except OverflowError:              # an integer of hundreds of digits
                coeff = math.inf
            if not math.isfinite(coeff):
                raise BadRequest(f"{ft}: the coefficient must be finite (no NaN, infinity or 1e400)", field=ft)
            clean.append([p, coeff])
        out.append(clean)
    return out


def is_wire(observables: object) -> bool:
    """Already the wire form, as the SDK adapters produce it: a list of observables, each a list of
    [pauli string, float] pairs."""
    return type(observables) is list and all(
        type(o) is list and all(type(t) is list and len(t) == 2 and type(t[0]) is str and type(t[1]) is float
                                for t in o) for o in observables)


def observables_to_wire(observables) -> list:
    """SparsePauliOp / Pauli / str / [[p, c], ...] (one or a list of them) -> wire form. The wire form
    itself passes through unconverted: the SDK adapters convert once, the daemon checks it."""
    if is_wire(observables):
        return observables
    from qiskit.quantum_info import SparsePauliOp, Pauli

    def one(o):
        if isinstance(o, str):
            return [[o, 1.0]]
        if isinstance(o, Pauli):
            return [[o.to_label(), 1.0]]
        if isinstance(o, SparsePauliOp):
            return [[p, float(np.real(c))] for p, c in o.to_list()]
        if isinstance(o, list) and o and isinstance(o[0], (list, tuple)) and isinstance(o[0][0], str):
            return [[str(p), float(c)] for p, c in o]
        raise TypeError(f"cannot convert observable {o!r}")

    if isinstance(observables, (str, Pauli, SparsePauliOp)):
        return [one(observables)]
    if isinstance(observables, list) and observables and isinstance(observables[0], (list, tuple)) \
            and observables[0] and isinstance(observables[0][0], str):
        return [one(observables)]
    return [one(o) for o in observables]


def encode_tree(obj):
    """Result dicts (arrays nested in dicts) -> JSON-ready, arrays as raw little-endian base64."""
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, dict):
        return {k: encode_tree(v) for k, v in obj.items()}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def decode_tree(obj):
    if isinstance(obj, dict):
        if {"dtype", "shape", "data"} <= obj.keys():
            return decode_array(obj, "result")
        return {k: decode_tree(v) for k, v in obj.items()}
    return obj
