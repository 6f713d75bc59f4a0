"""MUNGE credentials: a job's client proves its Unix identity to the daemon over TCP.

Client side: `encode(payload)` -> credential string, sent in the `X-Qsched-Munge` header.
Daemon side: `decode(cred)` -> MungeIdentity(uid, gid, payload). munged refuses a replayed or expired
credential (TTL 300 s by default), so one credential authenticates one request.

The payload binds the credential to its purpose (`purpose_payload("attach", job_id=..)`), so a credential
captured for one request cannot open something else. libmunge is used through ctypes when it loads,
else the munge/unmunge commands.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import Unauthorized, Unavailable

HEADER = "X-Qsched-Munge"
PAYLOAD_PREFIX = b"qsched/1 "

# munge.h
_OPT_TTL = 4
_OPT_SOCKET = 8
_OPT_UID_RESTRICTION = 9
_EMUNGE_SOCKET = 6
_CRED_ERRORS = {8: "invalid credential format", 9: "invalid credential version", 13: "unknown realm",
                14: "invalid credential", 15: "expired credential", 16: "credential from the future",
                17: "replayed credential", 18: "not authorized to decode this credential"}


class MungeError(Unauthorized):
    """The credential is bad: invalid, expired, replayed, or for another purpose."""
    code = "munge"


class MungeUnavailable(Unavailable):
    """munged cannot be reached, or neither libmunge nor the munge commands exist."""
    code = "munge_unavailable"


@dataclass(frozen=True)
class MungeIdentity:
    uid: int
    gid: int
    payload: bytes


# --- libmunge through ctypes ---------------------------------------------------------------------------

class _Lib:
    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        self.libc.free.argtypes = [ctypes.c_void_p]
        lib.munge_encode.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_int]
        lib.munge_encode.restype = ctypes.c_int
        lib.munge_decode.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint32),
                                     ctypes.POINTER(ctypes.c_uint32)]
        lib.munge_decode.restype = ctypes.c_int
        lib.munge_strerror.argtypes = [ctypes.c_int]
        lib.munge_strerror.restype = ctypes.c_char_p
        lib.munge_ctx_create.restype = ctypes.c_void_p
        lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
        # munge_ctx_set is variadic: argtypes stay unset, each call passes typed ctypes values

    def ctx(self, socket: str | None, ttl: int | None, uid_restriction: int | None):
        if socket is None and ttl is None and uid_restriction is None:
            return None
        ctx = self.lib.munge_ctx_create()
        if not ctx:
            raise MungeUnavailable("munge_ctx_create failed")
        ctx = ctypes.c_void_p(ctx)
        for opt, val in ((_OPT_SOCKET, socket and ctypes.c_char_p(os.fsencode(socket))),
                         (_OPT_TTL, ttl is not None and ctypes.c_int(ttl)),
                         (_OPT_UID_RESTRICTION, uid_restriction is not None and ctypes.c_uint32(uid_restriction))):
            if val:
                rc = self.lib.munge_ctx_set(ctx, ctypes.c_int(opt), val)
                if rc != 0:
                    self.lib.munge_ctx_destroy(ctx)
                    raise MungeUnavailable(f"munge_ctx_set({opt}): {self.strerror(rc)}")
        return ctx

    def strerror(self, rc: int) -> str:
        s = self.lib.munge_strerror(rc)
        return s.decode(errors="replace") if s else f"munge error {rc}"

    def encode(self, payload: bytes, socket, ttl, uid_restriction) -> str:
        ctx = self.ctx(socket, ttl, uid_restriction)
        cred = ctypes.c_void_p()
        buf = ctypes.create_string_buffer(payload, len(payload)) if payload else None
        try:
            rc = self.lib.munge_encode(ctypes.byref(cred), ctx, buf, len(payload))
            if rc != 0:
                raise MungeUnavailable(f"munge_encode: {self.strerror(rc)}")
            if not cred.value:
                raise MungeUnavailable("munge_encode returned no credential")
            return ctypes.string_at(cred.value).decode("ascii")
        finally:
            if cred.value:
                self.libc.free(cred)
            if ctx:
                self.lib.munge_ctx_destroy(ctx)

    def decode(self, cred: str, socket) -> MungeIdentity:
        ctx = self.ctx(socket, None, None)
        buf, length = ctypes.c_void_p(), ctypes.c_int(0)
        uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
        try:
            rc = self.lib.munge_decode(cred.encode("ascii"), ctx, ctypes.byref(buf), ctypes.byref(length),
                                       ctypes.byref(uid), ctypes.byref(gid))
            payload = ctypes.string_at(buf.value, length.value) if buf.value and length.value > 0 else b""
        finally:
            if buf.value:
                self.libc.free(buf)
            if ctx:
                self.lib.munge_ctx_destroy(ctx)
        if rc in _CRED_ERRORS:
            raise MungeError(f"MUNGE: {_CRED_ERRORS[rc]}", field=HEADER)
        if rc != 0:
            raise MungeUnavailable(f"munge_decode: {self.strerror(rc)}")
        return MungeIdentity(uid.value, gid.value, payload)


_lib_cache: list = []


def _lib() -> _Lib | None:
    if not _lib_cache:
        lib = None
        for name in (ctypes.util.find_library("munge"), "libmunge.so.2"):
            if not name:
                continue
            try:
                lib = _Lib(ctypes.CDLL(name))
                break
            except OSError:
                continue
        _lib_cache.append(lib)
    return _lib_cache[0]


# --- the munge/unmunge commands ------------------------------------------------------------------------

def _cli_encode(payload: bytes, socket, ttl, uid_restriction) -> str:
    exe = shutil.which("munge")
    if not exe:
        raise MungeUnavailable("neither libmunge nor the munge command is available")
    argv = [exe]
    if socket:
        argv += ["--socket", socket]
    if ttl is not None:
        argv += ["--ttl", str(ttl)]
    if uid_restriction is not None:
        argv += ["--restrict-uid", str(uid_restriction)]
    cp = subprocess.run(argv, input=payload, capture_output=True, timeout=10)
    if cp.returncode != 0:
        raise MungeUnavailable(f"munge: {cp.stderr.decode(errors='replace').strip()}")
    return cp.stdout.decode("ascii").strip()


def _cli_decode(cred: str, socket) -> MungeIdentity:
    exe = shutil.which("unmunge")
    if not exe:
        raise MungeUnavailable("neither libmunge nor the unmunge command is available")
    argv = [exe, "--numeric"]
    if socket:
        argv += ["--socket", socket]
    cp = subprocess.run(argv, input=cred.encode("ascii"), capture_output=True, timeout=10)
    head, _, payload = cp.stdout.partition(b"\n\n")
    meta = {}
    for line in head.decode(errors="replace").splitlines():
        k, _, v = line.partition(":")
        meta[k.strip()] = v.strip()
    status = int(meta.get("STATUS", "1").split()[0]) if meta.get("STATUS", "").split() else cp.returncode
    if status in _CRED_ERRORS:
        raise MungeError(f"MUNGE: {_CRED_ERRORS[status]}", field=HEADER)
    if cp.returncode != 0 or status != 0 or "UID" not in meta:
        raise MungeUnavailable(f"unmunge: {cp.stderr.decode(errors='replace').strip() or meta}")
    return MungeIdentity(int(meta["UID"].split()[0]), int(meta["GID"].split()[0]), payload)


# --- public -------------------------------------------------------------------------------------------

def encode(payload: bytes = b"", *, socket: str | None = None, ttl: int | None = None,
           uid_restriction: int | None = None) -> str:
    """A credential for the calling process's uid/gid. uid_restriction: only that uid (the daemon's)
    may decode it."""
    lib = _lib()
    if lib is not None:
        return lib.encode(payload, socket, ttl, uid_restriction)
    return _cli_encode(payload, socket, ttl, uid_restriction)


def decode(cred: str, *, socket: str | None = None) -> MungeIdentity:
    """Verify a credential with munged. Raises MungeError for a bad one, MungeUnavailable when munged
    cannot be asked."""
    cred = (cred or "").strip()
    if not cred.startswith("MUNGE:") or len(cred) > 8192 or not cred.isascii():
        raise MungeError("not a MUNGE credential", field=HEADER)
    lib = _lib()
    if lib is not None:
        return lib.decode(cred, socket)
    return _cli_decode(cred, socket)


def purpose_payload(purpose: str, **claims) -> bytes:
    """What a credential is for: b'qsched/1 {"purpose": "attach", "job_id": 12}' (sorted keys)."""
    return PAYLOAD_PREFIX + json.dumps({"purpose": purpose, **claims}, sort_keys=True,
                                       separators=(",", ":")).encode()


def parse_payload(payload: bytes) -> dict:
    if not payload.startswith(PAYLOAD_PREFIX):
        raise MungeError("MUNGE credential was not made for qsched", field=HEADER)
    try:
        claims = json.loads(payload[len(PAYLOAD_PREFIX):])
    except ValueError as e:
        raise MungeError("MUNGE credential payload is not JSON", field=HEADER) from e
    if not isinstance(claims, dict) or not isinstance(claims.get("purpose"), str):
        raise MungeError("MUNGE credential payload has no purpose", field=HEADER)
    return claims


def credential_for(purpose: str, *, socket: str | None = None, uid_restriction: int | None = None,
                   **claims) -> str:
    """Client side: encode(purpose_payload(purpose, **claims))."""
    return encode(purpose_payload(purpose, **claims), socket=socket, uid_restriction=uid_restriction)


def verify_credential(cred: str, purpose: str, *, socket: str | None = None, **expected) -> MungeIdentity:
    """Daemon side: decode, then check the payload's purpose and every expected claim (e.g. job_id=12,
    session="abc"). Returns the identity whose uid the caller then checks against the job's owner."""
    ident = decode(cred, socket=socket)
    claims = parse_payload(ident.payload)
    if claims.get("purpose") != purpose:
        raise MungeError(f"MUNGE credential is for {claims.get('purpose')!r}, not {purpose!r}", field=HEADER)
    for k, v in expected.items():
        if claims.get(k) != v:
            raise MungeError(f"MUNGE credential's {k} is {claims.get(k)!r}, not {v!r}", field=HEADER)
    return ident


def available(socket: str | None = None) -> bool:
    """munged answers (a round trip of an empty credential)."""
    try:
        decode(encode(b"", socket=socket), socket=socket)
        return True
    except (MungeError, MungeUnavailable, OSError, subprocess.SubprocessError):
        return False
