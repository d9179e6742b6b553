"""SHA-256 whose intermediate state can be saved and restored, so a resumed upload keeps hashing.

hashlib cannot export its state. Reading committed bytes back is no way out either: S3 cannot read
the parts of an unfinished multipart upload. So this drives OpenSSL's SHA256_Init/Update/Final (the
library hashlib itself links) through ctypes on a SHA256_CTX, a plain 112-byte struct whose layout has
not changed since OpenSSL 0.9.8, and saves that struct after each committed part (as Docker's registry
saves Go's marshalled hash state). A self-test at import compares it with hashlib; when the library is
missing or disagrees, `available()` is False and resumable sessions restart from byte 0 instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging

log = logging.getLogger(__name__)

STATE_SIZE = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len as 32-bit words


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        for fn in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
            fn.restype = ctypes.c_int
        lib.SHA256_Update.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    except (OSError, AttributeError):
        return None
    return lib


_LIB = _load()


class ResumableSha256:
    """An incremental SHA-256; `state()` / `from_state()` round-trip it through bytes."""

    def __init__(self) -> None:
        self._ctx = ctypes.create_string_buffer(STATE_SIZE)
        self._fallback: hashlib._Hash | None = None
        self._size = 0
        if _LIB is not None and _LIB.SHA256_Init(self._ctx) == 1:
            return
        self._fallback = hashlib.sha256()

    @classmethod
    def from_state(cls, state: bytes, size: int) -> ResumableSha256:
        """Restores a hasher saved by `state()` after hashing `size` bytes."""
        if _LIB is None or len(state) != STATE_SIZE:
            raise ValueError("hash state cannot be restored on this server")
        hasher = cls()
        ctypes.memmove(hasher._ctx, state, STATE_SIZE)
        hasher._size = size
        return hasher

    @property
    def size(self) -> int:
        """Bytes hashed so far."""
        return self._size

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hashes more bytes (releases the GIL while hashing, like hashlib)."""
        size = memoryview(data).nbytes
        if self._fallback is not None:
            self._fallback.update(data)
        elif _LIB is None or _LIB.SHA256_Update(self._ctx, _pointer(data, size), size) != 1:
            raise RuntimeError("SHA256_Update failed")
        self._size += size

    def state(self) -> bytes | None:
        """The saved state, or None when this hasher cannot be resumed."""
        return None if self._fallback is not None else self._ctx.raw

    def hexdigest(self) -> str:
        """The digest of everything hashed; the hasher itself stays usable."""
        if self._fallback is not None:
            return self._fallback.hexdigest()
        assert _LIB is not None
        ctx = ctypes.create_string_buffer(self._ctx.raw, STATE_SIZE)
        out = ctypes.create_string_buffer(32)
        if _LIB.SHA256_Final(out, ctx) != 1:
            raise RuntimeError("SHA256_Final failed")
        return out.raw.hex()


def _pointer(data: bytes | bytearray | memoryview, size: int) -> bytes | ctypes.Array[ctypes.c_char]:
    """What SHA256_Update can read: bytes as they are, writable buffers without a copy."""
    if isinstance(data, bytes):
        return data
    view = memoryview(data)
    if view.readonly or not view.c_contiguous:
        return view.tobytes()
    return (ctypes.c_char * size).from_buffer(view)


def _self_test() -> bool:
    try:
        first = ResumableSha256()
        first.update(b"modelreg" * 1000)
        state = first.state()
        if state is None:
            return False
        second = ResumableSha256.from_state(state, first.size)
        second.update(memoryview(bytearray(b"resumed")))
    except (ValueError, RuntimeError, OSError):
        return False
    return second.hexdigest() == hashlib.sha256(b"modelreg" * 1000 + b"resumed").hexdigest()


if _LIB is not None and not _self_test():
    log.warning("OpenSSL SHA256_CTX self-test failed; resumable uploads restart from byte 0")
    _LIB = None


def available() -> bool:
    """Whether hash states can be saved and restored here."""
    return _LIB is not None
