"""The gossip wire format: length-prefixed msgpack headers, then raw little-endian tensor bytes.

    frame   := u32be header_len | header (msgpack map) | body
    header  := {"v": PROTOCOL_VERSION, "type": str, ...}
    body    := the bytes of each tensor listed in header["tensors"], in order (only for model frames)

Nothing from a peer reaches pickle. Every length is checked against a limit before anything is
allocated: the header against MAX_HEADER_BYTES, a model body against the specs of OUR model (a
peer cannot make us allocate more than our own model's size), and tensors are checked for NaN/Inf
before anyone may apply them.
"""

from __future__ import annotations

import asyncio
import math
import reprlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from p2p.errors import ProtocolViolation

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20  # specs of a few thousand tensors fit easily
READ_CHUNK_BYTES = 1 << 20
_LEN = struct.Struct(">I")
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64"})


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, little-endian on the wire
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def as_wire(self) -> list[Any]:
        return [self.name, self.dtype, list(self.shape)]


def show(value: object) -> str:
    """A peer's value for an error message, bounded in size and depth: repr() of a value nested a
    thousand deep (a few hundred bytes of msgpack) raises RecursionError, and a 1 MiB string floods the log."""
    return _SHOW.repr(value)


_SHOW = reprlib.Repr()
_SHOW.maxstring = 200  # a refusal's reason stays readable; depth and container sizes keep reprlib's limits


def specs_of(arrays: Mapping[str, np.ndarray]) -> list[TensorSpec]:
    return [TensorSpec(name, a.dtype.name, tuple(a.shape)) for name, a in arrays.items()]


def parse_specs(raw: object) -> list[TensorSpec]:
    """Validate a peer's tensor list (types only; the caller compares it with our own model)."""
    if not isinstance(raw, list):
        raise ProtocolViolation("tensors must be a list")
    specs = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3):
            raise ProtocolViolation("each tensor spec must be [name, dtype, shape]")
        name, dtype, shape = item
        # (a list or map as dtype would make `in` raise TypeError: unhashable)
        if not isinstance(name, str) or not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise ProtocolViolation(f"bad tensor spec name/dtype: {show(name)} {show(dtype)}")
        if not (isinstance(shape, list) and all(type(d) is int and 0 <= d < 2**40 for d in shape)):  # no bools
            raise ProtocolViolation(f"bad shape for {show(name)}")
        specs.append(TensorSpec(name, dtype, tuple(shape)))
    return specs


# --- headers -------------------------------------------------------------------------------------


def encode_header(kind: str, **fields: Any) -> bytes:
    blob = msgpack.packb({"v": PROTOCOL_VERSION, "type": kind, **fields}, use_bin_type=True)
    if len(blob) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(blob)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    return _LEN.pack(len(blob)) + blob


def decode_header(blob: bytes) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(blob, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for hostile bytes
        raise ProtocolViolation(f"header is not msgpack ({type(e).__name__})") from e
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolViolation("header must be a map with a 'type'")
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # True and 1.0 compare equal to 1
        raise ProtocolViolation(f"protocol version {show(version)}, this node speaks {PROTOCOL_VERSION}")
    return header


async def read_header(
    reader: asyncio.StreamReader, max_bytes: int = MAX_HEADER_BYTES, idle_timeout_s: float | None = None
) -> dict[str, Any]:
    """Read one header frame; the length is checked before the header is read."""
    async with asyncio.timeout(idle_timeout_s):
        return await _read_header(reader, max_bytes)


async def _read_header(reader: asyncio.StreamReader, max_bytes: int) -> dict[str, Any]:
    length_read = False
    try:
        (length,) = _LEN.unpack(await reader.readexactly(_LEN.size))
        length_read = True
        if length > max_bytes:
            raise ProtocolViolation(f"header length {length} exceeds the {max_bytes}-byte limit")
        return decode_header(await reader.readexactly(length))
    except asyncio.IncompleteReadError as e:
        if not e.partial and not length_read:
            raise ConnectionResetError("the peer closed the stream") from e
        raise ProtocolViolation("stream ended inside a frame (truncated)") from e


async def write_frame(writer: asyncio.StreamWriter, header: bytes) -> None:
    writer.write(header)
    await writer.drain()


# --- model bodies --------------------------------------------------------------------------------


def check_specs(theirs: Sequence[TensorSpec], ours: Sequence[TensorSpec]) -> None:
    """A peer's model must match ours tensor for tensor; this also bounds the body's size."""
    if len(theirs) != len(ours):
        raise ProtocolViolation(f"peer sends {len(theirs)} tensors, our model has {len(ours)}")
    for t, o in zip(theirs, ours, strict=True):
        if t != o:
            raise ProtocolViolation(f"tensor mismatch: peer {t}, ours {o}")


async def write_tensors(
    writer: asyncio.StreamWriter, arrays: Mapping[str, np.ndarray], idle_timeout_s: float | None = None
) -> None:
    """Send the raw bytes, draining only when the transport's buffer fills (keeps loopback fast).

    `idle_timeout_s` bounds each chunk: a peer that stops reading (a cut link) fails us in seconds,
    however long the whole body may take.
    """
    for array in arrays.values():
        if array.size == 0:  # nothing to send, and memoryview.cast() refuses a shape like (0, 3)
            continue
        data = memoryview(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))).cast("B")
        for start in range(0, len(data), READ_CHUNK_BYTES):
            writer.write(data[start : start + READ_CHUNK_BYTES])
            async with asyncio.timeout(idle_timeout_s):
                await writer.drain()


async def read_tensors(
    reader: asyncio.StreamReader, specs: Sequence[TensorSpec], idle_timeout_s: float | None = None
) -> dict[str, np.ndarray]:
    """Read a body whose specs were already checked against our model; reject NaN/Inf.

    `idle_timeout_s` bounds each chunk (a silent peer), not the whole body (a big model on a slow link).
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        for spec in specs:
            buffer = bytearray(spec.nbytes)
            view = memoryview(buffer)
            for start in range(0, spec.nbytes, READ_CHUNK_BYTES):
                async with asyncio.timeout(idle_timeout_s):
                    chunk = await reader.readexactly(min(READ_CHUNK_BYTES, spec.nbytes - start))
                view[start : start + len(chunk)] = chunk
            array = np.frombuffer(buffer, dtype=np.dtype(spec.dtype).newbyteorder("<")).reshape(spec.shape)
            if not np.isfinite(array).all():
                raise ProtocolViolation(f"tensor {spec.name!r} contains NaN or Inf")
            arrays[spec.name] = array.astype(spec.dtype, copy=False)
    except asyncio.IncompleteReadError as e:
        raise ProtocolViolation("stream ended inside the model body (truncated)") from e
    return arrays


def expect_weight(header: Mapping[str, Any]) -> float:
    """A gossip weight: a finite positive number (a peer cannot zero or blow up the mix)."""
    value = header.get("weight")
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < 1e12):
        raise ProtocolViolation(f"weight must be a positive finite number, got {show(value)}")
    return float(value)


def expect_round(header: Mapping[str, Any]) -> int:
    value = header.get("round")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolViolation(f"round must be a non-negative integer, got {show(value)}")
    return value
