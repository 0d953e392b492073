"""Property-based tests of the gossip wire decoder (p2p/wire.py): hostile bytes in, ProtocolViolation out.

No network: each case feeds bytes to an asyncio.StreamReader inside its own asyncio.run(). The
properties are the module's promises: nothing but ProtocolViolation escapes the decoder (and
ConnectionResetError for a peer that closed before sending a byte), every length is checked before
anything is read or allocated, a body is bounded by OUR model's size, and NaN/Inf never get through.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable
from typing import Any
from unittest import mock

import msgpack
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2p import wire
from p2p.errors import ProtocolViolation
from p2p.wire import (
    ALLOWED_DTYPES,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    TensorSpec,
    check_specs,
    decode_header,
    encode_header,
    expect_round,
    expect_weight,
    parse_specs,
    read_header,
    read_tensors,
    specs_of,
    write_tensors,
)

pytestmark = pytest.mark.timeout(90)

# No example database: nothing is written into the checkout (a failure prints its example to reproduce).
FAST = settings(max_examples=250, deadline=None, database=None)
QUICK = settings(max_examples=150, deadline=None, database=None)
NO_WAIT_S = 1.0  # a read that should fail at once must not sit waiting for bytes that never come

# --- strategies ----------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
# Anything msgpack can carry (maps keyed by str, as strict_map_key lets through).
msgpack_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=16,
)

_dims = st.integers(min_value=0, max_value=5)
_dtype_like = st.sampled_from([*sorted(ALLOWED_DTYPES), "int8", "float", "Float32", "<f4", "object", ""])
_shape_like = st.lists(
    st.integers(min_value=-3, max_value=2**41) | st.booleans() | st.floats(0, 4) | st.just("2"), max_size=3
)
# Near-valid tensor specs: most draws are lists of [str, dtype-ish, shape-ish] with a junk field now and then.
spec_like = st.lists(
    st.lists(st.one_of(st.text(max_size=6), msgpack_values), min_size=3, max_size=3)
    | st.tuples(st.text(max_size=6), _dtype_like | msgpack_values, _shape_like | msgpack_values).map(list)
    | st.tuples(st.text(max_size=6), _dtype_like, st.lists(_dims, max_size=3)).map(list),
    max_size=4,
)


@st.composite
def valid_header_blobs(draw) -> bytes:
    """The msgpack part of a header encode_header would send (no length prefix)."""
    kind = draw(st.sampled_from(["offer", "accept", "busy", "reject", "model", "pull", "ready", "commit"]))
    fields = draw(
        st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("v", "type")), msgpack_values, max_size=3)
    )
    if draw(st.booleans()):
        spec = st.tuples(st.text(max_size=6), _dtype_like, st.lists(_dims, max_size=3)).map(list)
        fields["tensors"] = draw(st.lists(spec, max_size=3))
        fields["weight"] = draw(st.floats(0.1, 10))
        fields["round"] = draw(st.integers(0, 1000))
    return encode_header(kind, **fields)[wire._LEN.size :]


@st.composite
def mutated(draw, blobs: st.SearchStrategy[bytes]) -> bytes:
    """A valid blob after 1-4 bit flips, byte overwrites, truncations, insertions or deletions."""
    data = bytearray(draw(blobs))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


def _nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# --- helpers -------------------------------------------------------------------------------------


class SpyReader(asyncio.StreamReader):
    """A StreamReader that records how many bytes each readexactly() asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    async def readexactly(self, n: int) -> bytes:
        self.asked.append(n)
        return await super().readexactly(n)


class CollectingWriter:
    """Just enough of a StreamWriter for write_tensors."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk) -> None:
        self.data += bytes(chunk)

    async def drain(self) -> None:
        await asyncio.sleep(0)


def _feed(data: bytes, *, eof: bool = True) -> SpyReader:
    reader = SpyReader()  # inside the running loop
    if data:
        reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def _rest(reader: asyncio.StreamReader) -> bytes:
    """What is left in the reader (its EOF must already have been fed)."""
    return await reader.read()


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except ProtocolViolation as e:
        return "violation", e


def _assert_valid_header(header: object) -> None:
    assert type(header) is dict
    assert type(header["type"]) is str
    assert type(header["v"]) is int  # not True, not 1.0
    assert header["v"] == PROTOCOL_VERSION


# --- decode_header -------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=64))
@example(b"")
@example(b"\xc1")  # the one byte msgpack never uses
@example(b"\x82\xa1v\x01\xa4type\xa1x\x00")  # a valid header with trailing bytes
@example(b"\xdd\xff\xff\xff\xff")  # an array claiming 4 G elements
def test_decode_header_on_arbitrary_bytes(blob):
    kind, header = _outcome(lambda: decode_header(blob))
    if kind == "ok":
        _assert_valid_header(header)


@FAST
@given(mutated(valid_header_blobs()))
def test_decode_header_on_mutated_headers(blob):
    kind, header = _outcome(lambda: decode_header(blob))
    if kind == "ok":
        _assert_valid_header(header)


@FAST
@given(
    version=msgpack_values | st.sampled_from([1, True, 1.0, 0, 2, -1, "1", b"\x01"]),
    kind=msgpack_values | st.text(max_size=8),
)
@example(version=True, kind="offer")
@example(version=1.0, kind="offer")
@example(version=1, kind=b"offer")
def test_decode_header_checks_version_and_type(version, kind):
    blob = msgpack.packb({"v": version, "type": kind}, use_bin_type=True)
    outcome, header = _outcome(lambda: decode_header(blob))
    valid = type(version) is int and version == PROTOCOL_VERSION and type(kind) is str
    assert outcome == ("ok" if valid else "violation")
    if valid:
        _assert_valid_header(header)


@pytest.mark.parametrize("field", ["v", "type"])
@pytest.mark.parametrize("depth", [100, 990, 1000, 1020])
def test_decode_header_rejects_deeply_nested_fields(field, depth):
    # ~1 KB of bytes; a plain repr() of it in the error message raised RecursionError
    header = {"v": PROTOCOL_VERSION, "type": "offer", field: _nested(depth)}
    with pytest.raises(ProtocolViolation):
        decode_header(msgpack.packb(header, use_bin_type=True))


# --- read_header ---------------------------------------------------------------------------------


@st.composite
def header_streams(draw) -> tuple[bytes, int]:
    """(stream bytes, max_bytes): raw junk, or a length prefix (true, false or huge) before a maybe-mangled header."""
    max_bytes = draw(st.sampled_from([MAX_HEADER_BYTES, 0, 1, 16, 64]))
    if draw(st.booleans()):
        return draw(st.binary(max_size=48)), max_bytes
    blob = draw(valid_header_blobs() | mutated(valid_header_blobs()))
    length = draw(
        st.just(len(blob))
        | st.integers(0, len(blob) + 8)
        | st.integers(max_bytes + 1, 2**32 - 1)
        | st.sampled_from([2**32 - 1, 2**31, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1])
    )
    tail = draw(st.binary(max_size=8))
    return struct.pack(">I", length) + blob + tail, max_bytes


@FAST
@given(header_streams())
@example((b"", MAX_HEADER_BYTES))
@example((b"\x00\x00", MAX_HEADER_BYTES))
@example((b"\x00\x00\x00\x00", MAX_HEADER_BYTES))
@example((b"\xff\xff\xff\xff\x80", MAX_HEADER_BYTES))
def test_read_header_on_arbitrary_streams(case):
    data, max_bytes = case

    async def scenario():
        reader = _feed(data)
        try:
            header = await asyncio.wait_for(read_header(reader, max_bytes=max_bytes), NO_WAIT_S)
        except ConnectionResetError:
            assert data == b""  # only a peer that sent nothing at all "closed the stream"
        except ProtocolViolation:
            assert data != b""
        else:
            _assert_valid_header(header)
            (length,) = struct.unpack(">I", data[:4])
            assert length <= max_bytes
            assert await _rest(reader) == data[4 + length :]  # exactly one frame consumed
        # never asked for (so never allocated) more than the prefix or the limit
        assert all(n <= max(4, max_bytes) for n in reader.asked), reader.asked

    asyncio.run(scenario())


@FAST
@given(
    max_bytes=st.sampled_from([0, 1, 100, MAX_HEADER_BYTES]) | st.integers(0, 2**20),
    excess=st.integers(1, 2**32 - 1),
    extra=st.binary(max_size=16),
)
@example(max_bytes=MAX_HEADER_BYTES, excess=1, extra=b"\x80")
@example(max_bytes=MAX_HEADER_BYTES, excess=2**32 - 1 - MAX_HEADER_BYTES, extra=b"")
def test_read_header_rejects_an_oversized_length_before_reading_the_body(max_bytes, excess, extra):
    length = min(max_bytes + excess, 2**32 - 1)  # > max_bytes, which stays below 2**32 - 1

    async def scenario():
        reader = _feed(struct.pack(">I", length) + extra, eof=False)  # the peer is still "sending"
        with pytest.raises(ProtocolViolation, match="exceeds"):
            # raises at once: a TimeoutError here would mean it waited for the body
            await asyncio.wait_for(read_header(reader, max_bytes=max_bytes), NO_WAIT_S)
        assert reader.asked == [4]  # only the prefix was ever requested
        reader.feed_eof()
        assert await _rest(reader) == extra  # the body was left untouched

    asyncio.run(scenario())


# --- parse_specs / check_specs -------------------------------------------------------------------

OURS = [TensorSpec("w", "float32", (3, 4)), TensorSpec("b", "float32", (4,))]
OURS_NBYTES = sum(s.nbytes for s in OURS)


def _over_the_wire(value: object) -> object:
    """What decode_header would hand over for `value` (tuples become lists, and so on)."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=True)


@settings(max_examples=500, deadline=None, database=None)
@given(st.one_of(msgpack_values, spec_like, st.just([s.as_wire() for s in OURS])))
@example([["w", [], []]])  # an unhashable dtype raised TypeError
@example([["w", {}, [1]]])
@example([["w", "float32", [True, 2]]])  # a bool is not a dimension
def test_parse_and_check_specs_on_arbitrary_structures(raw):
    raw = _over_the_wire(raw)
    outcome, specs = _outcome(lambda: parse_specs(raw))
    if outcome == "violation":
        return
    assert isinstance(specs, list)
    for spec in specs:
        assert type(spec.name) is str
        assert spec.dtype in ALLOWED_DTYPES
        assert isinstance(spec.shape, tuple)
        assert all(type(d) is int and d >= 0 for d in spec.shape)
    check_specs(specs, specs)
    if _outcome(lambda: check_specs(specs, OURS))[0] == "ok":
        assert specs == OURS
        assert sum(s.nbytes for s in specs) == OURS_NBYTES


@FAST
@given(msgpack_values | st.sampled_from([0, 1, 1e12, -0.0, 5e-324, 2**63]))
@example(True)
@example(float("nan"))
@example(float("inf"))
def test_expect_weight_and_round(value):
    header = _over_the_wire({"weight": value, "round": value})
    outcome, weight = _outcome(lambda: expect_weight(header))
    if outcome == "ok":
        assert type(weight) is float and math.isfinite(weight) and 0 < weight < 1e12
    outcome, round_ = _outcome(lambda: expect_round(header))
    if outcome == "ok":
        assert type(round_) is int and round_ >= 0


@pytest.mark.parametrize("depth", [990, 1000, 1020])
def test_deeply_nested_values_are_violations_not_recursion_errors(depth):
    # (not hypothesis examples: its own pretty-printer recurses too deep on these when reporting)
    deep = _nested(depth)
    for raw in ([[deep, "float32", []]], [["w", deep, []]], [["w", "bogus", deep]]):
        with pytest.raises(ProtocolViolation):
            parse_specs(_over_the_wire(raw))
    with pytest.raises(ProtocolViolation):
        expect_weight({"weight": deep})
    with pytest.raises(ProtocolViolation):
        expect_round({"round": deep})


# --- read_tensors --------------------------------------------------------------------------------

_NONFINITE_F32 = [
    struct.pack("<f", v) for v in (math.nan, math.inf, -math.inf)
] + [  # quiet/signalling/negative NaNs and their payloads
    struct.pack("<I", bits) for bits in (0x7F800001, 0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFF800001)
]
_trailer = st.binary(min_size=1, max_size=16)


def _valid_body(values: list[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


_finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
valid_bodies = st.lists(_finite_f32, min_size=OURS_NBYTES // 4, max_size=OURS_NBYTES // 4).map(_valid_body)


@st.composite
def poisoned_bodies(draw) -> bytes:
    """A full-length body with a NaN or an Inf somewhere (maybe more than one)."""
    body = bytearray(draw(valid_bodies))
    for _ in range(draw(st.integers(1, 3))):
        at = 4 * draw(st.integers(0, OURS_NBYTES // 4 - 1))
        body[at : at + 4] = draw(st.sampled_from(_NONFINITE_F32))
    return bytes(body)


def _read_body(data: bytes, specs=OURS):
    async def scenario():
        reader = _feed(data)
        try:
            arrays = await asyncio.wait_for(read_tensors(reader, specs), NO_WAIT_S)
        except ProtocolViolation as e:
            arrays = e
        consumed = len(data) - len(await _rest(reader))
        return arrays, consumed, reader.asked

    return asyncio.run(scenario())


def _expected(body: bytes) -> dict[str, np.ndarray] | None:
    """The arrays a stream starting with `body` should decode to, or None when it must be refused."""
    if len(body) < OURS_NBYTES:
        return None
    arrays, at = {}, 0
    for spec in OURS:
        arrays[spec.name] = np.frombuffer(body[at : at + spec.nbytes], dtype="<f4").reshape(spec.shape)
        at += spec.nbytes
    return arrays if all(np.isfinite(a).all() for a in arrays.values()) else None


@settings(max_examples=500, deadline=None, database=None)
@given(
    body=st.binary(max_size=OURS_NBYTES + 8) | valid_bodies | mutated(valid_bodies) | poisoned_bodies(),
    trailer=_trailer,
)
def test_read_tensors_on_random_bodies(body, trailer):
    data = body + trailer  # the trailer stands for the next frame (or for a short body's missing bytes)
    result, consumed, asked = _read_body(data)
    expected = _expected(data)
    assert consumed <= OURS_NBYTES  # never reads past our model's size
    assert sum(asked) <= OURS_NBYTES
    if expected is None:
        assert isinstance(result, ProtocolViolation)
        return
    assert not isinstance(result, ProtocolViolation), result
    assert list(result) == [s.name for s in OURS]
    for spec in OURS:
        array = result[spec.name]
        assert array.dtype == np.dtype(spec.dtype) and array.shape == spec.shape
        assert np.isfinite(array).all()
        assert array.tobytes() == expected[spec.name].tobytes()
    assert consumed == OURS_NBYTES  # the trailer (the next frame) is left for the next reader


@QUICK
@given(body=poisoned_bodies(), trailer=_trailer)
def test_read_tensors_never_returns_nan_or_inf(body, trailer):
    result, consumed, _ = _read_body(body + trailer)
    assert isinstance(result, ProtocolViolation)
    assert consumed <= OURS_NBYTES


@QUICK
@given(body=valid_bodies, cut=st.integers(0, OURS_NBYTES - 1))
def test_read_tensors_truncated_body(body, cut):
    result, consumed, _ = _read_body(body[:cut])
    assert isinstance(result, ProtocolViolation)
    assert "truncated" in str(result)
    assert consumed == cut


# --- round trip ----------------------------------------------------------------------------------


@st.composite
def models(draw) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4, unique=True))
    model = {}
    for name in names:
        dtype = np.dtype(draw(st.sampled_from(["<f4", ">f4", "<f8", ">f8"])))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        elements = st.floats(width=8 * dtype.itemsize, allow_nan=False, allow_infinity=False)
        model[name] = draw(hnp.arrays(dtype, shape, elements=elements))
    return model


@settings(max_examples=150, deadline=None, database=None)
@given(
    model=models(),
    weight=st.floats(1e-6, 1e6),
    round_=st.integers(0, 2**32),
    chunk=st.sampled_from([wire.READ_CHUNK_BYTES, 1, 3, 7, 64]),
)
def test_round_trip(model, weight, round_, chunk):
    specs = specs_of(model)
    assert all(s.dtype in ("float32", "float64") for s in specs)
    frame = encode_header(
        "model", fingerprint="f" * 16, weight=weight, round=round_, tensors=[s.as_wire() for s in specs]
    )
    # what write_tensors sends is the little-endian bytes of each tensor, in order
    layout = b"".join(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() for a in model.values())

    async def scenario():
        writer = CollectingWriter()
        with mock.patch.object(wire, "READ_CHUNK_BYTES", chunk):  # small chunks exercise the loops
            await write_tensors(writer, model)
            assert bytes(writer.data) == layout
            reader = _feed(frame + bytes(writer.data) + b"NEXT")
            header = await read_header(reader)
            theirs = parse_specs(header["tensors"])
            check_specs(theirs, specs)
            decoded = await read_tensors(reader, theirs)
        assert expect_weight(header) == weight
        assert expect_round(header) == round_
        assert await _rest(reader) == b"NEXT"
        return decoded

    decoded = asyncio.run(scenario())
    assert list(decoded) == list(model)
    for name, original in model.items():
        got = decoded[name]
        assert got.dtype == original.dtype.newbyteorder("=") and got.shape == original.shape
        assert got.tobytes() == original.astype(got.dtype).tobytes()  # bit for bit, -0.0 included
