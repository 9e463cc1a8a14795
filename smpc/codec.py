"""A schema-checked codec for every byte that crosses a process boundary (bottom layer).

Nothing that one process reads from another is unpickled: control messages,
dealer requests, federated-learning messages and tensors are encoded here as
an explicit, self-describing byte format with an allow-list of value types,
and decoded by a parser that checks every length against the bytes present
and against a limit *before* allocating, never imports or calls anything it
reads, and raises :class:`~smpc.errors.ProtocolError` (naming the peer and
what was wrong) on anything malformed, oversized, truncated, replayed or not
allowed.

It lives at the bottom of ``smpc`` (beside :mod:`smpc.errors`), not in
``smpc.comm``, so that every transport and ``fl`` can use it.

API (for transports and applications):

* ``codec = Codec(types=(MyDataclass, MyEnum), max_bytes=...)``: the allowed
  dataclasses and enums (no others decode); ``max_bytes`` bounds one message.
* ``codec.encode(obj) -> bytes`` / ``codec.decode(data, peer="...") -> object``:
  one value (see *Values* below).
* ``codec.encode_message(seq, kind, obj)`` / ``codec.decode_message(data, seq=...,
  kinds=..., peer=...) -> (kind, obj)``: a value in an envelope with a magic,
  a message kind (a short str from an allow-list) and a per-link sequence
  number, so that a replayed, reordered or unexpected message is refused.
* ``encode_tensor(t) -> bytes`` / ``decode_tensor(data, peer=..., max_bytes=...)``:
  one tensor as a typed frame, without a codec instance.
* ``check_length(nbytes, limit, peer=..., what=...)``: the check a transport
  makes on a length field before allocating a receive buffer.

Values: ``None``, ``bool``, ``int`` (64-bit, or up to :data:`MAX_INT_BYTES`
bytes), ``float``, ``str`` (UTF-8), ``bytes``, ``tuple``, ``list``, ``dict``
(keys of the hashable kinds), torch tensors and numpy arrays (CPU, a dtype of
:data:`TENSOR_DTYPES`, shape, raw little-endian bytes), members of allowed
enums, and instances of allowed dataclasses (by name; fields checked against
the class's field names and, where they are plain types, its annotations;
built with the class's own ``__init__``).

Typed tensor frame (also the encoding of a tensor inside a value)::

    dtype code (u8) | ndim (u8) | shape (ndim x u64) | nbytes (u64) | raw bytes

``nbytes`` must equal ``prod(shape) * itemsize``, fit in the bytes received
and in ``max_bytes``.

Message envelope::

    b"SMPC" | version (u8) | seq (u64) | kind (str value) | value

Cost: a few µs per small message (pure Python); tensor bytes are copied once
on each side.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import math
import struct
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .errors import ProtocolError

__all__ = [
    "Codec",
    "ProtocolError",
    "encode_tensor",
    "decode_tensor",
    "check_length",
    "TENSOR_DTYPES",
    "DEFAULT_MAX_BYTES",
    "MAX_INT_BYTES",
    "MAX_DEPTH",
]

DEFAULT_MAX_BYTES = 1 << 31
"""Default limit on one encoded message (2 GiB)."""
MAX_INT_BYTES = 1024
"""Longest big integer accepted (bytes of its two's complement form)."""
MAX_DEPTH = 32
"""Deepest nesting of containers and dataclasses accepted."""
_MAX_NDIM = 32
_MAGIC = b"SMPC"
_VERSION = 1

# dtype codes on the wire (stable: never renumber).
TENSOR_DTYPES: dict[int, torch.dtype] = {
    1: torch.uint8,
    2: torch.int8,
    3: torch.int16,
    4: torch.int32,
    5: torch.int64,
    6: torch.float16,
    7: torch.bfloat16,
    8: torch.float32,
    9: torch.float64,
    10: torch.bool,
    11: torch.complex64,
    12: torch.complex128,
}
"""The tensor dtypes that may travel, by their wire code."""
_DTYPE_CODES = {dt: code for code, dt in TENSOR_DTYPES.items()}
_NUMPY_DTYPES: dict[int, np.dtype[Any]] = {
    code: np.dtype(torch.empty(0, dtype=dt).numpy().dtype)
    for code, dt in TENSOR_DTYPES.items()
    if dt is not torch.bfloat16
} | {13: np.dtype(np.uint16), 14: np.dtype(np.uint32), 15: np.dtype(np.uint64)}
_NUMPY_CODES = {dt: code for code, dt in _NUMPY_DTYPES.items()}

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_ENVELOPE = struct.Struct("<4sBQ")

# value tags
_NONE, _TRUE, _FALSE = b"N", b"T", b"F"
_INT, _BIGINT, _FLOAT, _STR, _BYTES = b"i", b"I", b"f", b"s", b"b"
_TUPLE, _LIST, _DICT = b"t", b"l", b"d"
_TENSOR, _ARRAY, _ENUM, _DATACLASS = b"X", b"A", b"E", b"D"


def check_length(nbytes: int, limit: int, *, peer: str, what: str) -> int:
    """Check a length a peer announced against ``limit`` before anything is allocated.

    Returns ``nbytes``. Raises :class:`ProtocolError` naming ``peer`` when it is
    negative or above ``limit``.
    """
    if nbytes < 0 or nbytes > limit:
        raise ProtocolError(
            f"{peer} announced {nbytes} bytes for {what}; the limit is {limit} bytes "
            "(a malformed or hostile frame)"
        )
    return nbytes


def _tensor_header(code: int, shape: Sequence[int], nbytes: int) -> bytes:
    return b"".join(
        [_U8.pack(code), _U8.pack(len(shape)), *(_U64.pack(d) for d in shape), _U64.pack(nbytes)]
    )


def encode_tensor(t: torch.Tensor) -> bytes:
    """A CPU tensor as a typed frame: dtype code, shape, byte count, raw bytes.

    Raises:
        TypeError: ``t``'s dtype is not in :data:`TENSOR_DTYPES` or it is not on the CPU.
    """
    out: list[bytes] = []
    _put_tensor(out, t)
    return b"".join(out)


def _put_tensor(out: list[bytes], t: torch.Tensor) -> None:
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise TypeError(f"a tensor of dtype {t.dtype} cannot travel; allowed: {_DTYPE_CODES}")
    if t.device.type != "cpu":
        raise TypeError(f"only CPU tensors travel; got a tensor on {t.device}")
    if t.dim() > _MAX_NDIM:
        raise TypeError(f"a tensor of {t.dim()} dims cannot travel (at most {_MAX_NDIM})")
    t = t.detach().contiguous()
    if t.is_conj():
        t = t.resolve_conj()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    out.append(_tensor_header(code, tuple(t.shape), len(raw)))
    out.append(raw)


def decode_tensor(
    data: bytes | bytearray | memoryview,
    *,
    peer: str = "the peer",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Parse a typed frame written by :func:`encode_tensor` (a fresh, writable tensor).

    Raises:
        ProtocolError: malformed, truncated or trailing bytes, a dtype outside the
            allow-list, or more than ``max_bytes``.
    """
    reader = _Reader(memoryview(data).cast("B"), peer, max_bytes)
    t = reader.tensor(numpy=False)
    reader.end()
    assert isinstance(t, torch.Tensor)
    return t


class _Reader:
    """Bounds-checked reads from a received buffer."""

    __slots__ = ("buf", "pos", "peer", "max_bytes")

    def __init__(self, buf: memoryview, peer: str, max_bytes: int) -> None:
        self.buf = buf
        self.pos = 0
        self.peer = peer
        self.max_bytes = max_bytes

    def fail(self, what: str) -> ProtocolError:
        return ProtocolError(f"malformed message from {self.peer}: {what} (at byte {self.pos})")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(
                f"{what} needs {n} bytes, only {len(self.buf) - self.pos} left (truncated)"
            )
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, s: struct.Struct, what: str) -> Any:
        return s.unpack(self.take(s.size, what))[0]

    def count(self, what: str) -> int:
        n = int(self.unpack(_U32, what))
        # every item takes at least one byte: a count beyond the bytes left is a lie
        if n > len(self.buf) - self.pos:
            raise self.fail(f"{what} claims {n} items, more than the bytes left")
        return n

    def text(self, what: str) -> str:
        n = self.count(f"length of {what}")
        try:
            return str(self.take(n, what).tobytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not UTF-8 ({e})") from None

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} unexpected bytes after the value")

    def tensor(self, *, numpy: bool) -> torch.Tensor | np.ndarray[Any, Any]:
        code = int(self.unpack(_U8, "dtype code"))
        table: dict[int, Any] = _NUMPY_DTYPES if numpy else TENSOR_DTYPES
        dtype = table.get(code)
        if dtype is None:
            raise self.fail(f"dtype code {code} is not allowed")
        ndim = int(self.unpack(_U8, "ndim"))
        if ndim > _MAX_NDIM:
            raise self.fail(f"{ndim} dims (at most {_MAX_NDIM})")
        shape = tuple(int(self.unpack(_U64, "shape")) for _ in range(ndim))
        nbytes = int(self.unpack(_U64, "byte count"))
        itemsize = dtype.itemsize
        want = math.prod(shape) * itemsize
        if nbytes != want:
            raise self.fail(f"byte count {nbytes} does not match shape {shape} ({want} bytes)")
        if nbytes > self.max_bytes:
            raise self.fail(f"a tensor of {nbytes} bytes (limit {self.max_bytes})")
        raw = self.take(nbytes, "tensor bytes")
        if numpy:
            return np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if dtype is torch.bool:  # only 0 and 1 are valid bools
            return (flat != 0).view(shape)
        return flat.view(dtype).view(shape)


class Codec:
    """Encodes and decodes values with an explicit allow-list of classes (see the module doc).

    Args:
        types: the dataclasses and enums that may travel (matched by
            ``module.qualname``; nothing else is ever constructed).
        max_bytes: the largest message accepted, in bytes.
        encode_any: let :meth:`encode` write any dataclass or enum (a sender that
            does not know the receiver's allow-list: the receiver still decodes
            only ``types``).

    Raises:
        TypeError: an entry of ``types`` is neither a dataclass nor an enum.
    """

    def __init__(
        self,
        types: Iterable[type] = (),
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        encode_any: bool = False,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"`max_bytes` must be a positive int; got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.encode_any = encode_any
        self._sendable: dict[type, tuple[tuple[str, Any], ...]] = {}
        self._types: dict[str, type] = {}
        self._fields: dict[type, tuple[tuple[str, Any], ...]] = {}
        for cls in types:
            if not isinstance(cls, type) or not (
                dataclasses.is_dataclass(cls) or issubclass(cls, enum.Enum)
            ):
                raise TypeError(f"`types` must hold dataclasses and enums; got {cls!r}")
            self._types[_name(cls)] = cls
        for cls in self._types.values():
            if dataclasses.is_dataclass(cls):
                self._fields[cls] = _field_hints(cls)

    @property
    def types(self) -> tuple[type, ...]:
        """The allowed classes."""
        return tuple(self._types.values())

    # ----------------------------------------------------------------- encode
    def encode(self, obj: object) -> bytes:
        """``obj`` as bytes.

        Raises:
            TypeError: ``obj`` holds a value outside the allow-list.
            ValueError: the encoding exceeds ``max_bytes`` or nests too deep.
        """
        out: list[bytes] = []
        self._put(out, obj, 0)
        data = b"".join(out)
        if len(data) > self.max_bytes:
            raise ValueError(f"the message is {len(data)} bytes; the limit is {self.max_bytes}")
        return data

    def encode_message(self, seq: int, kind: str, obj: object) -> bytes:
        """``obj`` in an envelope with ``kind`` and the link's sequence number ``seq``."""
        head = _ENVELOPE.pack(_MAGIC, _VERSION, seq)
        out: list[bytes] = [head]
        self._put(out, kind, 0)
        self._put(out, obj, 0)
        data = b"".join(out)
        if len(data) > self.max_bytes:
            raise ValueError(f"the message is {len(data)} bytes; the limit is {self.max_bytes}")
        return data

    def _put(self, out: list[bytes], obj: object, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ValueError(f"values nest deeper than {MAX_DEPTH} levels")
        if obj is None:
            out.append(_NONE)
        elif obj is True:
            out.append(_TRUE)
        elif obj is False:
            out.append(_FALSE)
        elif isinstance(obj, enum.Enum):
            cls = type(obj)
            if self._types.get(_name(cls)) is not cls and not self.encode_any:
                raise TypeError(f"enum {_name(cls)} is not an allowed type of this codec")
            out.append(_ENUM)
            self._put_text(out, _name(cls))
            self._put(out, obj.value, depth + 1)
        elif type(obj) is int or (isinstance(obj, int) and not isinstance(obj, bool)):
            v = int(obj)
            if -(1 << 63) <= v < (1 << 63):
                out += [_INT, _I64.pack(v)]
            else:
                raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
                if len(raw) > MAX_INT_BYTES:
                    raise ValueError(f"an int of {len(raw)} bytes (limit {MAX_INT_BYTES})")
                out += [_BIGINT, _U32.pack(len(raw)), raw]
        elif isinstance(obj, float):
            out += [_FLOAT, _F64.pack(obj)]
        elif isinstance(obj, str):
            out.append(_STR)
            self._put_text(out, obj)
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            raw = bytes(obj)
            out += [_BYTES, _U32.pack(len(raw)), raw]
        elif isinstance(obj, torch.Tensor):
            out.append(_TENSOR)
            _put_tensor(out, obj)
        elif isinstance(obj, np.ndarray):
            code = _NUMPY_CODES.get(obj.dtype)
            if code is None:
                raise TypeError(f"a numpy array of dtype {obj.dtype} cannot travel")
            arr = np.ascontiguousarray(obj, dtype=_NUMPY_DTYPES[code])
            raw = arr.tobytes()
            out += [_ARRAY, _tensor_header(code, arr.shape, len(raw)), raw]
        elif isinstance(obj, (tuple, list)):
            out += [_TUPLE if isinstance(obj, tuple) else _LIST, _U32.pack(len(obj))]
            for item in obj:
                self._put(out, item, depth + 1)
        elif isinstance(obj, collections.abc.Mapping):
            out += [_DICT, _U32.pack(len(obj))]
            for k, v in obj.items():
                self._put(out, k, depth + 1)
                self._put(out, v, depth + 1)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            dcls: type = type(obj)
            fields = self._fields.get(dcls) if self._types.get(_name(dcls)) is dcls else None
            if fields is None:
                if not self.encode_any:
                    raise TypeError(f"{_name(dcls)} is not an allowed type of this codec")
                fields = self._sendable.get(dcls)
                if fields is None:
                    fields = self._sendable[dcls] = _field_hints(dcls)
            out.append(_DATACLASS)
            self._put_text(out, _name(dcls))
            out.append(_U32.pack(len(fields)))
            for fname, _ in fields:
                self._put_text(out, fname)
                self._put(out, getattr(obj, fname), depth + 1)
        else:
            raise TypeError(f"a value of type {type(obj).__name__} cannot travel (not allowed)")

    @staticmethod
    def _put_text(out: list[bytes], s: str) -> None:
        raw = s.encode("utf-8")
        out += [_U32.pack(len(raw)), raw]

    # ----------------------------------------------------------------- decode
    def decode(self, data: bytes | bytearray | memoryview, *, peer: str = "the peer") -> object:
        """The value encoded in ``data`` (all of it).

        Raises:
            ProtocolError: malformed, truncated, oversized, or not allowed; names ``peer``.
        """
        view = memoryview(data).cast("B")
        check_length(len(view), self.max_bytes, peer=peer, what="a message")
        reader = _Reader(view, peer, self.max_bytes)
        obj = self._get(reader, 0)
        reader.end()
        return obj

    def decode_message(
        self,
        data: bytes | bytearray | memoryview,
        *,
        seq: int | None,
        kinds: Iterable[str],
        peer: str = "the peer",
    ) -> tuple[str, object]:
        """Parse an envelope of :meth:`encode_message`: ``(kind, value)``.

        Args:
            data: the received bytes.
            seq: the sequence number expected on this link (``None``: any).
            kinds: the message kinds acceptable now.
            peer: who sent it (for errors).

        Raises:
            ProtocolError: a bad envelope, a replayed or reordered message (wrong
                ``seq``), an unexpected kind, or a malformed value.
        """
        view = memoryview(data).cast("B")
        check_length(len(view), self.max_bytes, peer=peer, what="a message")
        reader = _Reader(view, peer, self.max_bytes)
        magic, version, got_seq = _ENVELOPE.unpack(reader.take(_ENVELOPE.size, "envelope"))
        if magic != _MAGIC or version != _VERSION:
            raise ProtocolError(
                f"{peer} sent a message without this protocol's envelope "
                f"(magic {bytes(magic)!r}, version {version}): not an smpc peer, or a "
                "crafted frame"
            )
        if seq is not None and got_seq != seq:
            why = "replayed or repeated" if got_seq < seq else "out of order (messages lost)"
            raise ProtocolError(f"{peer} sent message #{got_seq} where #{seq} was expected: {why}")
        kind = self._get(reader, 0)
        allowed = tuple(kinds)
        if not isinstance(kind, str) or kind not in allowed:
            raise ProtocolError(
                f"{peer} sent an unexpected message {kind!r} (#{got_seq}); expected one of "
                f"{allowed}"
            )
        obj = self._get(reader, 0)
        reader.end()
        return kind, obj

    def _get(self, r: _Reader, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise r.fail(f"values nest deeper than {MAX_DEPTH} levels")
        tag = bytes(r.take(1, "a value tag"))
        if tag == _NONE:
            return None
        if tag == _TRUE:
            return True
        if tag == _FALSE:
            return False
        if tag == _INT:
            return int(r.unpack(_I64, "an int"))
        if tag == _BIGINT:
            n = int(r.unpack(_U32, "an int's length"))
            if n > MAX_INT_BYTES:
                raise r.fail(f"an int of {n} bytes (limit {MAX_INT_BYTES})")
            return int.from_bytes(r.take(n, "an int"), "little", signed=True)
        if tag == _FLOAT:
            return float(r.unpack(_F64, "a float"))
        if tag == _STR:
            return r.text("a str")
        if tag == _BYTES:
            n = r.count("a bytes length")
            return r.take(n, "bytes").tobytes()
        if tag == _TENSOR:
            return r.tensor(numpy=False)
        if tag == _ARRAY:
            return r.tensor(numpy=True)
        if tag in (_TUPLE, _LIST):
            n = r.count("a sequence length")
            items = [self._get(r, depth + 1) for _ in range(n)]
            return tuple(items) if tag == _TUPLE else items
        if tag == _DICT:
            n = r.count("a dict length")
            out: dict[Any, Any] = {}
            for _ in range(n):
                k = self._get(r, depth + 1)
                try:
                    hash(k)
                except TypeError:
                    raise r.fail(f"a dict key of type {type(k).__name__} (unhashable)") from None
                out[k] = self._get(r, depth + 1)
            return out
        if tag == _ENUM:
            name = r.text("an enum name")
            cls = self._types.get(name)
            if cls is None or not issubclass(cls, enum.Enum):
                raise r.fail(f"enum {name!r} is not an allowed type")
            value = self._get(r, depth + 1)
            try:
                return cls(value)
            except (ValueError, TypeError):
                raise r.fail(f"{value!r} is not a member of {name}") from None
        if tag == _DATACLASS:
            return self._dataclass(r, depth)
        raise r.fail(f"unknown value tag {tag!r}")

    def _dataclass(self, r: _Reader, depth: int) -> object:
        name = r.text("a type name")
        cls = self._types.get(name)
        if cls is None or cls not in self._fields:
            raise r.fail(f"type {name!r} is not allowed")
        hints = self._fields[cls]
        n = r.count("a field count")
        if n != len(hints):
            raise r.fail(f"{name} has {len(hints)} fields; got {n}")
        kwargs: dict[str, Any] = {}
        for fname, hint in hints:
            got = r.text("a field name")
            if got != fname:
                raise r.fail(f"{name} expects field {fname!r}; got {got!r}")
            value = self._get(r, depth + 1)
            if not _conforms(value, hint, self._fields):
                raise r.fail(
                    f"field {name}.{fname} must be {_hint_text(hint)}; got {type(value).__name__}"
                )
            kwargs[fname] = value
        try:
            return cls(**kwargs)
        except Exception as e:  # the class's own validation refused the values
            raise r.fail(f"invalid {name}: {e}") from None


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _field_hints(cls: type) -> tuple[tuple[str, Any], ...]:
    """``(name, annotation)`` of the ``__init__`` fields, in order (``Any`` if unresolvable)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: no type check for that class
        hints = {}
    return tuple((f.name, hints.get(f.name, Any)) for f in dataclasses.fields(cls) if f.init)


def _hint_text(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _conforms(value: object, hint: Any, dataclass_types: typing.Mapping[type, Any]) -> bool:
    """Whether a decoded ``value`` fits the annotation ``hint`` (unknown forms: yes)."""
    if hint is Any or hint is object:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_conforms(value, a, dataclass_types) for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0], dataclass_types) for v in value)
        if not args:
            return True
        return len(args) == len(value) and all(
            _conforms(v, a, dataclass_types) for v, a in zip(value, args, strict=True)
        )
    if origin is list:
        return isinstance(value, list) and all(
            _conforms(v, args[0], dataclass_types) for v in value if args
        )
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return False
        if len(args) != 2:
            return True
        return all(
            _conforms(k, args[0], dataclass_types) and _conforms(v, args[1], dataclass_types)
            for k, v in value.items()
        )
    if origin is typing.ClassVar:
        return True
    if isinstance(hint, type):
        if getattr(hint, "_is_protocol", False):  # e.g. a Request: any allowed dataclass
            return type(value) in dataclass_types
        return isinstance(value, hint)
    return True
