"""The trusted side of the wire format, and what a student who forges frames can achieve.

Everything the parent reads from the child is hostile: these tests feed `FrameReader`,
`parse_payload`, `load_array` and `decode_value` malformed input and check that every
problem surfaces as a `ProtocolError` (never another exception), and, end to end, that a
submission writing its own frames to the result fd gains nothing and leaves the grader
healthy.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import textwrap
from typing import Any

import numpy as np
import pytest

from grader.grade import grade_bytes
from grader.runner.protocol import (
    MAX_DEPTH,
    ArgEncoder,
    FrameReader,
    ProtocolError,
    Returned,
    Unsupported,
    decode_value,
    encode_job,
    load_array,
    pack_frame,
    parse_payload,
)
from grader.runner.subprocess_runner import CHILD
from grader.spec import load_builtin


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def payload_of(header_bytes: bytes, *blobs: bytes) -> bytes:
    return struct.pack("<I", len(header_bytes)) + header_bytes + b"".join(blobs)


def framed(payload: bytes) -> bytes:
    return struct.pack("<Q", len(payload)) + payload


# --- FrameReader -----------------------------------------------------------------------


def test_frame_reader_rejects_an_oversized_frame_from_its_length_prefix_alone():
    reader = FrameReader(max_frame=1000)
    # Only the 8-byte prefix has arrived: the reader must not wait for (or buffer) the rest.
    with pytest.raises(ProtocolError, match="1001 bytes exceeds the 1000-byte limit"):
        reader.feed(struct.pack("<Q", 1001))
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameReader(max_frame=1 << 20).feed(struct.pack("<Q", (1 << 64) - 1))


def test_frame_reader_accepts_a_frame_of_exactly_the_cap():
    frame = pack_frame({"kind": "call", "pad": "x" * 100}, [b"abc"])
    reader = FrameReader(max_frame=len(frame) - 8)
    ((header, blobs),) = reader.feed(frame)
    assert header["pad"] == "x" * 100 and blobs == [b"abc"]
    with pytest.raises(ProtocolError):
        FrameReader(max_frame=len(frame) - 9).feed(frame)


def test_frame_reader_reassembles_a_frame_fed_one_byte_at_a_time():
    array = np.arange(12.0).reshape(3, 4)
    frame = pack_frame({"kind": "call", "index": 7}, [npy(array), b"", b"xyz"])
    reader = FrameReader(max_frame=1 << 20)
    got = []
    for i in range(len(frame)):
        out = reader.feed(frame[i : i + 1])
        if i < len(frame) - 1:
            assert out == []
            assert reader.pending == i + 1
        got.extend(out)
    assert reader.pending == 0
    ((header, blobs),) = got
    assert header == {"kind": "call", "index": 7, "blobs": [len(npy(array)), 0, 3]}
    np.testing.assert_array_equal(load_array(blobs[0]), array)
    assert blobs[1:] == [b"", b"xyz"]


def test_frame_reader_returns_several_frames_from_one_feed_and_keeps_the_remainder():
    frames = [pack_frame({"n": i}, [bytes([i]) * i]) for i in range(5)]
    extra = pack_frame({"n": 99}, [])
    reader = FrameReader(max_frame=1 << 20)
    data = b"".join(frames) + extra[:10]
    out = reader.feed(data)
    assert [h["n"] for h, _ in out] == [0, 1, 2, 3, 4]
    assert [b for _, b in out] == [[bytes([i]) * i] for i in range(5)]
    assert reader.pending == 10
    ((header, _),) = reader.feed(extra[10:])
    assert header["n"] == 99 and reader.pending == 0


def test_frame_reader_in_random_chunks_matches_one_feed():
    rng = np.random.default_rng(0)
    frames = [pack_frame({"n": i, "s": "é" * i}, [npy(rng.random(i + 1))]) for i in range(20)]
    data = b"".join(frames)
    reader = FrameReader(max_frame=1 << 20)
    out, pos = [], 0
    while pos < len(data):
        step = int(rng.integers(1, 40))
        out.extend(reader.feed(data[pos : pos + step]))
        pos += step
    assert [h["n"] for h, _ in out] == list(range(20))
    assert [h["s"] for h, _ in out] == ["é" * i for i in range(20)]


def test_frame_reader_propagates_a_malformed_payload_as_protocol_error():
    with pytest.raises(ProtocolError):
        FrameReader(1 << 20).feed(framed(b"\x05\x00\x00\x00[1,2]"))


# --- parse_payload ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"", "truncated"),
        (b"\x01\x00\x00", "truncated"),
        (struct.pack("<I", 50) + b'{"a": 1}', "header longer than the frame"),
        (struct.pack("<I", 0xFFFFFFFF) + b"{}", "header longer than the frame"),
    ],
    ids=["empty", "three-bytes", "header-past-end", "max-header-length"],
)
def test_parse_payload_rejects_truncated_frames(payload, match):
    with pytest.raises(ProtocolError, match=match):
        parse_payload(payload)


@pytest.mark.parametrize(
    "head",
    [b"[1, 2]", b'"kind"', b"42", b"null", b"true"],
    ids=["list", "string", "number", "null", "bool"],
)
def test_parse_payload_rejects_headers_that_are_not_objects(head):
    with pytest.raises(ProtocolError, match="not an object"):
        parse_payload(payload_of(head))


@pytest.mark.parametrize(
    "head",
    [b"{not json", b"\xff\xfe{}", b"", b'{"a": 1} trailing', b"[" * 100_000 + b"]" * 100_000],
    ids=["invalid-json", "invalid-utf8", "empty", "trailing-data", "deeply-nested"],
)
def test_parse_payload_rejects_unreadable_headers(head):
    with pytest.raises(ProtocolError, match="unreadable frame header"):
        parse_payload(payload_of(head))


@pytest.mark.parametrize(
    "blobs_json, data",
    [
        ("[3]", b"ab"),  # fewer bytes than declared
        ("[1]", b"abc"),  # more bytes than declared
        ("[]", b"x"),  # stray bytes after the header
        ("[2, 2]", b"abc"),
    ],
    ids=["short", "long", "stray-bytes", "two-blobs-short"],
)
def test_parse_payload_rejects_blob_tables_that_do_not_add_up(blobs_json, data):
    head = ('{"kind": "call", "blobs": %s}' % blobs_json).encode()
    with pytest.raises(ProtocolError, match="do not add up"):
        parse_payload(payload_of(head, data))


@pytest.mark.parametrize(
    "blobs_json",
    ['"3"', "3", "[-1, 4]", "[1.5, 1.5]", '["1"]', "[null]", "{}"],
    ids=["string", "int", "negative", "float", "string-item", "null-item", "object"],
)
def test_parse_payload_rejects_malformed_blob_tables(blobs_json):
    head = ('{"blobs": %s}' % blobs_json).encode()
    with pytest.raises(ProtocolError, match="bad blob table"):
        parse_payload(payload_of(head, b"abc"))


def test_parse_payload_splits_the_blobs():
    header, blobs = parse_payload(payload_of(b'{"k": 1, "blobs": [2, 0, 3]}', b"ab", b"cde"))
    assert header == {"k": 1, "blobs": [2, 0, 3]}
    assert blobs == [b"ab", b"", b"cde"]
    header, blobs = parse_payload(payload_of(b'{"k": 2}'))
    assert header == {"k": 2} and blobs == []


# --- load_array ------------------------------------------------------------------------


def test_load_array_rejects_a_pickled_object_array():
    buf = io.BytesIO()
    np.save(buf, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(ProtocolError):
        load_array(buf.getvalue())


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(3, dtype=[("a", "<f8"), ("b", "<i4")]),
        np.zeros(2, dtype="V8"),
        np.array(["ab", "c"]),
        np.array([b"ab", b"c"]),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.array([1, 2], dtype="timedelta64[s]"),
    ],
    ids=["structured", "void", "unicode", "bytes", "datetime", "timedelta"],
)
def test_load_array_rejects_non_numeric_dtypes(array):
    with pytest.raises(ProtocolError, match="dtype .* is not allowed"):
        load_array(npy(array))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"garbage bytes, not an array",
        b"\x93NUMPY",
        npy(np.arange(10.0))[:-8],  # the header promises more data than follows
        npy(np.arange(10.0))[:20],
        b"\x80\x04\x95" + bytes(range(64)),  # looks like a pickle
        bytes(range(256)) * 4,
    ],
    ids=["empty", "text", "magic-only", "truncated-data", "truncated-header", "pickle-like", "noise"],
)
def test_load_array_rejects_garbage(blob):
    with pytest.raises(ProtocolError):
        load_array(blob)


def npy_with_header(header: str, data: bytes) -> bytes:
    """A version 1.0 .npy blob with a hand-written header, padded like NumPy pads it."""
    head = header.encode("latin1")
    head += b" " * (63 - (10 + len(head)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + data


@pytest.mark.parametrize(
    "descr, shape, data",
    [
        ("<f8", "(3,)", b"\x00" * 16),  # fewer bytes than the shape needs
        ("<f8", "(1,)", b"\x00" * 16),  # more bytes than the shape needs
        ("<f8", "(2, 3)", b""),
        ("|b1", "(4,)", b"\x00"),
        ("<U4", "(1,)", b"\x00" * 16),
        ("|O", "(1,)", b"\x00" * 8),
        ("<f8", "(-1,)", b"\x00" * 8),
        ("<f8", "(1000000000000, 1000000000000)", b"\x00" * 8),
    ],
    ids=["short-data", "long-data", "no-data", "bool-short", "unicode", "object", "negative-dim", "huge-shape"],
)
def test_load_array_rejects_npy_headers_that_do_not_fit_their_data(descr, shape, data):
    blob = npy_with_header("{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape), data)
    with pytest.raises(ProtocolError):
        load_array(blob)


@pytest.mark.parametrize("descr", ["<f3", "<i3", "<u5", "<c4", "<b2", "<f1"])
def test_load_array_rejects_unknown_itemsizes(descr):
    blob = npy_with_header("{'descr': '%s', 'fortran_order': False, 'shape': (1,), }" % descr, b"\x00" * 6)
    with pytest.raises(ProtocolError):
        load_array(blob)


def test_load_array_rejects_an_npz_archive():
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(3.0))
    with pytest.raises(ProtocolError):
        load_array(buf.getvalue())


@pytest.mark.parametrize(
    "array",
    [
        np.array([True, False]),
        np.arange(-3, 3, dtype=np.int8),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.arange(4, dtype=np.uint8),
        np.array([2**64 - 1], dtype=np.uint64),
        np.linspace(0, 1, 5, dtype=np.float16),
        np.linspace(0, 1, 5, dtype=np.float32),
        np.linspace(0, 1, 5).reshape(5, 1, 1),
        np.array([1 + 2j, -3j], dtype=np.complex64),
        np.array([1 + 2j, -3j], dtype=np.complex128),
        np.array(3.5),
        np.zeros((0, 4)),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.arange(4.0).astype(">f8"),
        np.array([np.nan, np.inf, -np.inf]),
    ],
    ids=[
        "bool", "int8", "int64", "uint8", "uint64", "float16", "float32", "float64-3d",
        "complex64", "complex128", "0-d", "empty", "fortran", "big-endian", "non-finite",
    ],
)
def test_load_array_accepts_numeric_dtypes(array):
    got = load_array(npy(array))
    assert type(got) is np.ndarray
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


# --- decode_value ----------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    skel: dict[str, Any] = {"i": 1}
    for _ in range(depth):
        skel = {"l": [skel]}
    return skel


def test_decode_value_depth_limit():
    value = decode_value(nested(MAX_DEPTH), [])
    for _ in range(MAX_DEPTH):
        (value,) = value
    assert value == 1
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_value(nested(MAX_DEPTH + 1), [])
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_value(nested(900), [])  # far past the limit: still a ProtocolError, not RecursionError
    deep_dict: dict[str, Any] = {"n": None}
    for _ in range(MAX_DEPTH + 1):
        deep_dict = {"d": [["k", deep_dict]]}
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_value(deep_dict, [])


@pytest.mark.parametrize(
    "skel, n_blobs",
    [
        ({"a": 1}, 1),
        ({"a": -1}, 2),
        ({"a": 0}, 0),
        ({"a": "0"}, 1),
        ({"a": 0.0}, 1),
        ({"a": None}, 1),
        ({"a": [0]}, 1),
        ({"t": [{"a": 0}, {"a": 5}]}, 2),
    ],
    ids=["one-past-end", "negative", "no-blobs", "string", "float", "null", "list", "inside-a-tuple"],
)
def test_decode_value_rejects_out_of_range_blob_indices(skel, n_blobs):
    blobs = [npy(np.zeros(2))] * n_blobs
    with pytest.raises(ProtocolError, match="array index out of range"):
        decode_value(skel, blobs)


@pytest.mark.parametrize(
    "skel",
    [
        None,
        [],
        "n",
        5,
        {},
        {"n": None, "i": 1, "f": 2.0},
        {"z": 1},
        {"i": "1"},
        {"i": True},
        {"i": 1.5},
        {"b": 1},
        {"f": "1.0"},
        {"f": True},
        {"s": 5},
        {"c": [1]},
        {"c": [1, 2, 3]},
        {"c": "1+2j"},
        {"l": 5},
        {"l": {"n": None}},
        {"t": "abc"},
        {"d": {"k": {"n": None}}},
        {"d": [["k"]]},
        {"d": [["k", {"n": None}, "extra"]]},
        {"d": ["k"]},
        {"u": 5},
        {"u": None},
        {"l": [{"n": None}, {"bogus": 1}]},
    ],
)
def test_decode_value_rejects_malformed_skeletons(skel):
    with pytest.raises(ProtocolError):
        decode_value(skel, [])


@pytest.mark.parametrize(
    "skel",
    [
        {"n": None, "x": 1},
        {"s": "a", "i": 1},
        {"c": ["a", "b"]},
        {"c": [None, 1]},
        {"c": [10**400, 0]},
        {"f": 10**400},
        {"l": [{"f": 10**400}]},
    ],
    ids=["two-keys", "two-keys-valid-looking", "complex-strings", "complex-null", "complex-huge", "float-huge", "nested-float-huge"],
)
def test_decode_value_rejects_every_malformed_skeleton_with_protocol_error(skel):
    with pytest.raises(ProtocolError):
        decode_value(skel, [])


@pytest.mark.parametrize(
    "pair",
    [[1, {"n": None}], [None, {"n": None}], [["k"], {"n": None}], [True, {"n": None}]],
    ids=["int", "null", "list", "bool"],
)
def test_decode_value_rejects_non_string_dict_keys(pair):
    with pytest.raises(ProtocolError, match="malformed dict entry"):
        decode_value({"d": [["ok", {"i": 1}], pair]}, [])


def test_decode_value_returns_unsupported_for_u_markers():
    value = decode_value({"u": "submission.Gradient"}, [])
    assert value == Unsupported("submission.Gradient")
    long = decode_value({"u": "x" * 10_000}, [])
    assert isinstance(long, Unsupported) and long.description == "x" * 200
    inside = decode_value({"t": [{"u": "builtins.generator"}, {"n": None}]}, [])
    assert inside == (Unsupported("builtins.generator"), None)


def test_decode_value_decodes_every_kind():
    blobs = [npy(np.arange(6.0).reshape(2, 3)), npy(np.array(2.5)), npy(np.array(2.5))]
    skel = {
        "t": [
            {"a": 0, "k": "matrix"},
            {"a": 1},
            {"a": 2, "k": 7},
            {"d": [["dx", {"f": 1.5}], ["k" * 500, {"i": -3}]]},
            {"l": [{"b": True}, {"s": "hi"}, {"c": [1, -2]}, {"n": None}, {"f": 4}]},
        ]
    }
    matrix, scalar, odd_kind, d, items = decode_value(skel, blobs)
    assert isinstance(matrix, Returned) and matrix.kind == "matrix"
    np.testing.assert_array_equal(matrix.array, np.arange(6.0).reshape(2, 3))
    assert scalar.kind == "array" and scalar.array.shape == () and scalar.array == 2.5
    assert odd_kind.kind == "array"  # a non-string kind is not trusted
    assert d == {"dx": 1.5, "k" * 100: -3}  # keys are truncated
    assert items == [True, "hi", complex(1, -2), None, 4.0]
    assert isinstance(items[4], float)


def test_one_blob_cannot_be_referenced_twice():
    # A few bytes of header pointing many times at one large blob would make the parent
    # materialise gigabytes.
    blobs = [npy(np.zeros(1000))]
    with pytest.raises(ProtocolError, match="referenced twice"):
        decode_value({"l": [{"a": 0}] * 100}, blobs)


def test_frames_may_not_carry_unused_arrays_or_huge_headers():
    from grader.runner.protocol import MAX_HEADER_BYTES, Decoder

    decoder = Decoder([npy(np.zeros(3)), npy(np.zeros(3))])
    decoder.decode({"a": 0})
    with pytest.raises(ProtocolError, match="do not use"):
        decoder.finish()
    head = json.dumps({"kind": "call", "pad": "x" * MAX_HEADER_BYTES}).encode()
    with pytest.raises(ProtocolError, match="exceeds"):
        parse_payload(struct.pack("<I", len(head)) + head)
    big_int = b'{"kind": "call", "n": ' + b"9" * 5000 + b"}"
    with pytest.raises(ProtocolError, match="unreadable"):
        parse_payload(struct.pack("<I", len(big_int)) + big_int)


def test_decode_value_rejects_a_bad_array_blob():
    with pytest.raises(ProtocolError):
        decode_value({"a": 0}, [b"not an array"])
    buf = io.BytesIO()
    np.save(buf, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(ProtocolError):
        decode_value({"l": [{"a": 0}]}, [buf.getvalue()])


# --- the two halves agree --------------------------------------------------------------


@pytest.fixture(scope="module")
def child():
    spec = importlib.util.spec_from_file_location("grader_child_under_test", CHILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_child_encoder_output_decodes_in_the_parent(child):
    class Custom:
        pass

    value = (
        np.arange(6.0).reshape(2, 3),
        np.float32(1.5),
        np.matrix([[1.0, 2.0]]),
        [[1.0, 2.0], [3.0, 4.0]],
        {"dx": np.zeros(2), 3: "three"},
        np.array([1, "a"], dtype=object),
        Custom(),
        None,
        True,
        2**70,
        1 + 2j,
        float("nan"),
        "s" * 500,
    )
    enc = child.Encoder()
    skel = enc.encode(value)
    frame = pack_frame({"kind": "call", "value": skel}, enc.blobs)
    ((header, blobs),) = FrameReader(1 << 20).feed(frame)
    out = decode_value(header["value"], blobs)
    array, f32, matrix, lst, d, obj, custom, none, flag, big, cplx, nan, s = out
    np.testing.assert_array_equal(array.array, value[0])
    assert f32.kind == "numpy scalar" and f32.array.dtype == np.float32
    assert matrix.kind == "matrix" and type(matrix.array) is np.ndarray and matrix.array.shape == (1, 2)
    assert lst.kind == "list" and lst.array.shape == (2, 2)
    assert set(d) == {"dx", "3"} and d["3"] == "three"
    assert obj == Unsupported("NumPy array of dtype object")
    assert isinstance(custom, Unsupported) and custom.description.endswith("Custom")
    assert (none, flag, big, cplx) == (None, True, float(2**70), 1 + 2j)
    assert np.isnan(nan)
    assert s == "s" * 200


def test_job_frame_round_trip(child):
    args = [np.arange(4.0), [np.eye(2), np.ones((2, 1))], 3, 0.5, None, (np.zeros(1),)]
    frame = encode_job("x = 1\n", [(0, "f", args)], {"memory_mb": 64})
    header, blobs = child.read_frame(io.BytesIO(frame))
    assert header["source"] == "x = 1\n" and header["limits"] == {"memory_mb": 64}
    (call,) = header["calls"]
    got = [child.decode(a, blobs) for a in call["args"]]
    np.testing.assert_array_equal(got[0], args[0])
    np.testing.assert_array_equal(got[1][0], np.eye(2))
    assert got[2:5] == [3, 0.5, None] and isinstance(got[5], tuple)
    with pytest.raises(TypeError):
        ArgEncoder().encode(True)


# --- end to end: forged frames on the result fd -----------------------------------------

A = load_builtin("vjp")
SEED = 7

FORGER = '''
import io, json, os, struct, sys
import numpy as np


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _fd():
    """The result fd: the harness's own variable, else its command line argument."""
    try:
        return _local("result_fd")
    except (AttributeError, KeyError):
        return int(sys.argv[1])


def _forge(header, blobs=()):
    """Write a frame to the result fd, as the harness would."""
    fd = _fd()
    head = json.dumps(dict(header, blobs=[len(b) for b in blobs])).encode()
    payload = struct.pack("<I", len(head)) + head + b"".join(blobs)
    os.write(fd, struct.pack("<Q", len(payload)) + payload)


def _local(name):
    """A local variable of the harness frame that called the student's code."""
    f = sys._getframe(1)
    while f is not None and name not in f.f_locals:
        f = f.f_back
    return f.f_locals[name]


def _args_of(call):
    blobs = _local("blobs")
    return [np.load(io.BytesIO(blobs[a["a"]])) for a in call["args"]]


def matmul_backward(dout, x, W):
    return dout @ W.T, x.T @ dout


def affine_backward(dout, x, W, b):
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)
'''


def forged(relu_body: str, prelude: str = "") -> bytes:
    body = textwrap.indent(textwrap.dedent(relu_body).strip("\n"), "    ")
    return (FORGER + textwrap.dedent(prelude) + "\n\ndef relu_backward(dout, x):\n" + body + "\n").encode()


def grade(data: bytes) -> dict[str, Any]:
    result = grade_bytes(A, data, seed=SEED)
    json.dumps(result, allow_nan=False)
    assert result["status"] == "graded"
    assert result["score"] == pytest.approx(sum(p["score"] for p in result["parts"]))
    return result


def part(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in result["parts"] if p["function"] == name)


def assert_relu_gains_nothing(result: dict[str, Any], *words: str) -> dict[str, Any]:
    relu = part(result, "relu_backward")
    assert relu["score"] == 0, relu["feedback"]
    assert relu["status"] == "failed"
    for name in ("matmul_backward", "affine_backward"):
        p = part(result, name)
        assert p["score"] == p["max_score"] and p["status"] == "passed", p["feedback"]
    text = relu["feedback"] + "\n".join(m for t in relu["trials"] for m in t["messages"])
    for word in words:
        assert word in text, text[:2000]
    return relu


def assert_grader_healthy() -> None:
    correct = (FORGER + "\n\ndef relu_backward(dout, x):\n    return dout * (x > 0)\n").encode()
    assert grade(correct)["score"] == 8
    # No interpreter running the harness directly (the fresh-process runner's child) was left
    # behind; a sandbox zygote runs under bwrap and is meant to persist.
    stray = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and str(CHILD).encode() in argv[1:4] and b"bwrap" not in argv[0]:
            stray.append(pid)
    assert stray == []


def test_forged_ok_frame_for_a_different_index_scores_nothing():
    # Trial k returns garbage but reports trial k+1 as done, with the correct answer for
    # k+1's arguments (read from the harness's memory).
    data = forged("""
        call = _local("call")
        nxt = [c for c in _local("header")["calls"] if c["index"] == call["index"] + 1]
        if nxt and nxt[0]["function"] == "relu_backward":
            d, xx = _args_of(nxt[0])
            _forge(
                {"kind": "call", "index": nxt[0]["index"], "status": "ok", "seconds": 0.001,
                 "value": {"a": 0, "k": "array"}, "args_after": {"l": [{"a": 1}, {"a": 2}]}},
                [_npy(d * (xx > 0)), _npy(d), _npy(xx)],
            )
        return "garbage"
    """)
    relu = assert_relu_gains_nothing(grade(data), "file descriptors it does not own")
    assert relu["trials"][0]["status"] == "protocol"
    assert not any(t["status"] == "passed" for t in relu["trials"])
    assert_grader_healthy()


def test_forged_ok_frame_for_the_current_call_then_garbage_scores_nothing():
    data = forged("""
        call = _local("call")
        _forge(
            {"kind": "call", "index": call["index"], "status": "ok", "seconds": 0.001,
             "value": {"a": 0}, "args_after": {"n": None}},
            [_npy(dout * (x > 0))],
        )
        return "garbage"
    """)
    relu = assert_relu_gains_nothing(grade(data), "file descriptors it does not own")
    assert relu["outputs"][0]["passed"] is False
    assert_grader_healthy()


def test_forged_frames_claiming_every_remaining_call_scores_nothing():
    # Report "ok" with a plausible-looking (but wrong) array for every call still to come.
    data = forged("""
        for c in _local("header")["calls"]:
            if c["index"] >= _local("call")["index"]:
                _forge({"kind": "call", "index": c["index"], "status": "ok",
                        "value": {"a": 0}, "args_after": {"n": None}}, [_npy(np.ones(3))])
        _forge({"kind": "done"})
        os._exit(0)
    """)
    result = grade(data)
    assert result["score"] == 0  # every function is wrong: the forged frames answer for all of them
    for p in result["parts"]:
        assert p["status"] == "failed"
    assert_grader_healthy()


def test_forged_load_report_at_import_scores_nothing():
    data = forged(
        "return dout * (x > 0)",
        prelude='_forge({"kind": "loaded", "ok": True, "seconds": 0.0})\n',
    )
    result = grade(data)
    assert result["score"] == 0
    for p in result["parts"]:
        assert p["score"] == 0
        assert "file descriptors it does not own" in p["feedback"] + "".join(
            m for t in p["trials"] for m in t["messages"]
        )
    assert_grader_healthy()


@pytest.mark.parametrize(
    "raw, words",
    [
        ("b'\\x00' * 8", ["could not read what relu_backward returned", "truncated frame"]),
        ("struct.pack('<Q', 1 << 40)", ["returned more data than allowed", "exceeds"]),
        ("b'\\x10\\x00\\x00\\x00\\x00\\x00\\x00\\x00' + b'\\x08\\x00\\x00\\x00' + b'not json'", ["could not read", "unreadable frame header"]),
    ],
    ids=["empty-frame", "oversized-length", "garbage-header"],
)
def test_garbage_on_the_result_fd_fails_only_that_function(raw, words):
    # The pause lets the parent read the harness's load report first: a load report and
    # garbage read together are a separate case (see the FrameReader tests below).
    data = forged(f"""
        import time
        time.sleep(0.2)
        os.write(_fd(), {raw})
        return dout * (x > 0)
    """)
    relu = assert_relu_gains_nothing(grade(data), *words)
    assert relu["trials"][0]["status"] in ("protocol", "too_large")
    assert {t["status"] for t in relu["trials"][1:]} == {"skipped"}


@pytest.mark.parametrize(
    "value",
    ['{"c": ["a", "b"]}', '{"n": None, "x": 1}'],
    ids=["complex-of-strings", "two-keys"],
)
def test_forged_malformed_value_is_a_graded_outcome(value):
    data = forged(f"""
        _forge({{"kind": "call", "index": _local("call")["index"], "status": "ok",
                 "value": {value}, "args_after": {{"n": None}}}})
        return dout * (x > 0)
    """)
    assert_relu_gains_nothing(grade(data))


@pytest.mark.parametrize(
    "seconds",
    ['float("nan")', 'float("inf")', "10**400"],
    ids=["nan", "inf", "huge-int"],
)
def test_forged_seconds_never_break_the_result(seconds):
    data = forged(f"""
        _forge({{"kind": "call", "index": _local("call")["index"], "status": "error", "seconds": {seconds},
                 "error": {{"type": "ValueError", "text": "forged", "line": 1}}}})
        return dout * (x > 0)
    """)
    assert_relu_gains_nothing(grade(data))


@pytest.mark.parametrize(
    "bad",
    [struct.pack("<Q", 1 << 40), framed(b"\x00"), framed(payload_of(b"[]"))],
    ids=["oversized", "truncated", "not-an-object"],
)
def test_frame_reader_delivers_the_good_frames_before_a_bad_one(bad):
    reader = FrameReader(max_frame=1 << 20)
    good = [pack_frame({"kind": "loaded", "ok": True}, []), pack_frame({"kind": "call", "index": 0}, [b"x"])]
    frames = reader.feed(b"".join(good) + bad)  # the good frames must come out ...
    assert [h["kind"] for h, _ in frames] == ["loaded", "call"]
    with pytest.raises(ProtocolError):  # ... and the bad one be reported after them
        reader.feed(b"")


def test_load_report_and_garbage_in_one_read_blame_only_the_running_call():
    # Deterministic version of a race: the submission holds back the harness's load report
    # and writes it together with garbage, so the parent reads both in one chunk.
    prelude = """
        _FD = _fd()
        _real_write = os.write
        _held = []
        # Only the first child (the one that will run relu_backward) holds its report back.
        _HOLD = _local("header")["calls"][0]["function"] == "relu_backward"

        def _holding_write(fd, data):
            if fd == _FD and not _held and _HOLD:
                _held.append(bytes(data))
                return len(data)
            return _real_write(fd, data)

        os.write = _holding_write
    """
    data = forged("""
        if _held and _held[0] is not None:
            _real_write(_FD, _held[0] + struct.pack("<Q", 1 << 40))
            _held[0] = None
        return dout * (x > 0)
    """, prelude=prelude)
    assert_relu_gains_nothing(grade(data), "returned more data than allowed")


def test_a_failed_reload_after_a_crash_keeps_what_was_earned():
    # relu_backward crashes the child; the file refuses to load in the restarted child.
    data = forged(
        "os._exit(3)",
        prelude="""
        if _local("header")["calls"][0]["function"] != "relu_backward":
            raise RuntimeError("refusing to load twice")
        """,
    )
    result = grade(data)
    relu, matmul = part(result, "relu_backward"), part(result, "matmul_backward")
    assert relu["score"] == 0 and "exited with status 3" in relu["feedback"]
    assert result["messages"] == []  # the file did load: no file-level failure
    assert matmul["score"] == 0 and "loading it failed that time (RuntimeError)" in matmul["feedback"]
