"""The trusted side of the wire format, and what a student who forges frames can achieve.

Everything the parent reads from the child is hostile: these tests feed `FrameReader`,
`parse_payload`, `array_from` and `decode_value` malformed input and check that every
problem surfaces as a `ProtocolError` (never another exception), and, end to end, that a
submission writing its own frames to the result fd gains nothing and leaves the grader
healthy. The parent reads the result pipe in bulk (not per frame): the end-to-end tests at
the bottom check that a hang, a crash or garbage in call k of n is blamed on call k, that
the calls before it keep their verdicts, and that the calls after it still run.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import time
import textwrap
from typing import Any

import numpy as np
import pytest

from grader.grade import grade_bytes
from grader.runner.protocol import (
    DTYPES,
    MAX_DEPTH,
    UNCHANGED,
    ArgEncoder,
    FrameReader,
    ProtocolError,
    Returned,
    Unsupported,
    array_from,
    decode_value,
    encode_job,
    pack_frame,
    parse_payload,
)
from grader.runner.subprocess_runner import CHILD
from grader.spec import load_builtin


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def arr(array: np.ndarray, index: int = 0, **extra: Any) -> tuple[dict[str, Any], bytes]:
    """The skeleton and blob the child sends for `array`."""
    return {"a": index, "d": array.dtype.str, "s": list(array.shape), **extra}, array.tobytes()


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
    frame = pack_frame({"kind": "call", "index": 7}, [array.tobytes(), b"", b"xyz"])
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
    assert header == {"kind": "call", "index": 7, "blobs": [96, 0, 3]}
    np.testing.assert_array_equal(array_from("<f8", [3, 4], blobs[0]), array)
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


def test_frame_reader_parses_a_large_frame_arriving_in_pieces_in_linear_time():
    # A frame of many megabytes (vjp's results) arrives in pipe-sized chunks: the partial
    # frame is kept in one growing buffer, not re-joined with every chunk.
    big = np.random.default_rng(1).random(1 << 20)  # 8 MiB
    skel, blob = arr(big)
    frame = pack_frame({"kind": "call", "value": skel}, [blob]) + pack_frame({"kind": "done"}, [])
    reader = FrameReader(max_frame=16 << 20)
    out = []
    for pos in range(0, len(frame), 65536):
        out.extend(reader.feed(frame[pos : pos + 65536]))
    assert [h["kind"] for h, _ in out] == ["call", "done"]
    np.testing.assert_array_equal(decode_value(out[0][0]["value"], out[0][1]).array, big)


def test_frame_reader_blobs_do_not_change_when_the_caller_reuses_its_buffer():
    buffer = bytearray(pack_frame({"kind": "call"}, [b"abcd"]))
    ((_, blobs),) = FrameReader(1 << 20).feed(buffer)
    buffer[-4:] = b"WXYZ"
    assert bytes(blobs[0]) == b"abcd"


def test_frame_reader_reports_a_frame_cut_off_by_the_end_of_the_pipe_as_pending():
    # A child killed (or dying) while writing frame k: frames < k are complete and parsed,
    # and what is left of frame k is only `pending`, never delivered.
    frames = [pack_frame({"kind": "call", "index": i}, [bytes(100)]) for i in range(5)]
    data = b"".join(frames)
    for cut in (len(data) - 1, len(data) - 100, len(data) - len(frames[-1]) + 5):
        reader = FrameReader(1 << 20)
        out = reader.feed(data[:cut])
        assert [h["index"] for h, _ in out] == [0, 1, 2, 3]
        assert reader.pending == cut - sum(len(f) for f in frames[:4])


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


def test_parse_payload_rejects_trailing_data_bools_as_sizes_and_huge_tables():
    with pytest.raises(ProtocolError, match="unreadable frame header"):
        parse_payload(payload_of(b'{"k": 1} {"k": 2}'))
    with pytest.raises(ProtocolError, match="bad blob table"):
        parse_payload(payload_of(b'{"blobs": [true]}', b"x"))
    # More arrays than a value may have parts: refused before a view is made for each.
    with pytest.raises(ProtocolError, match="bad blob table"):
        parse_payload(payload_of(b'{"blobs": [' + b"0," * 100_000 + b"0]}"))


def test_parse_payload_splits_the_blobs():
    header, blobs = parse_payload(payload_of(b'{"k": 1, "blobs": [2, 0, 3]}', b"ab", b"cde"))
    assert header == {"k": 1, "blobs": [2, 0, 3]}
    assert blobs == [b"ab", b"", b"cde"]
    header, blobs = parse_payload(payload_of(b'{"k": 2}'))
    assert header == {"k": 2} and blobs == []


# --- array_from ------------------------------------------------------------------------


def test_array_from_never_parses_a_pickle_or_an_npy_file():
    buf = io.BytesIO()
    np.save(buf, np.array([1, "a"], dtype=object), allow_pickle=True)
    pickled = buf.getvalue()
    for descr in ("|O", "O", "object", "<O8"):
        with pytest.raises(ProtocolError, match="not allowed"):
            array_from(descr, [len(pickled) // 8], pickled[: len(pickled) // 8 * 8])
    # An .npy file is only bytes: read as uint8 it is its own bytes, never its contents.
    blob = npy(np.arange(3.0))
    got = array_from("|u1", [len(blob)], blob)
    assert got.tobytes() == blob


@pytest.mark.parametrize(
    "descr",
    [
        np.dtype([("a", "<f8"), ("b", "<i4")]).str, str(np.dtype([("a", "<f8")]).descr), "|V8", "<U4", "|S2",
        "<M8[D]", "<m8[s]", "|O", "f8", "float64", "d", "<f8 ", "<F8", "=f8", "<f3", "<i3", "<u5", "<c4", "<b2",
        "<f1", "", "<", None, 8, ["<f8"], {"descr": "<f8"}, True,
    ],
    ids=lambda d: repr(d)[:20],
)
def test_array_from_accepts_only_listed_dtype_strings(descr):
    with pytest.raises(ProtocolError, match="not allowed"):
        array_from(descr, [1], b"\x00" * 8)


@pytest.mark.parametrize(
    "descr, shape, data",
    [
        ("<f8", [3], b"\x00" * 16),  # fewer bytes than the shape needs
        ("<f8", [1], b"\x00" * 16),  # more bytes than the shape needs
        ("<f8", [2, 3], b""),
        ("|b1", [4], b"\x00"),
        ("<f8", [-1], b"\x00" * 8),
        ("<f8", [1000000000000, 1000000000000], b"\x00" * 8),
        ("<f8", [0, 1 << 47, 1 << 47], b""),  # no data, but too big for NumPy
        ("<f8", [1 << 60], b""),
        ("<f8", [1.0], b"\x00" * 8),
        ("<f8", [True], b"\x00" * 8),
        ("<f8", ["1"], b"\x00" * 8),
        ("<f8", [[1]], b"\x00" * 8),
        ("<f8", None, b"\x00" * 8),
        ("<f8", 1, b"\x00" * 8),
        ("<f8", {"0": 1}, b"\x00" * 8),
        ("<f8", [1] * 33, b"\x00" * 8),
    ],
    ids=[
        "short-data", "long-data", "no-data", "bool-short", "negative-dim", "huge-shape", "huge-empty", "huge-dim",
        "float-dim", "bool-dim", "string-dim", "nested-dim", "null-shape", "int-shape", "dict-shape", "too-many-dims",
    ],
)
def test_array_from_rejects_shapes_that_do_not_fit_their_data(descr, shape, data):
    with pytest.raises(ProtocolError):
        array_from(descr, shape, data)


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
        np.linspace(0, 1, 5, dtype=np.longdouble),
        np.array([1 + 2j, -3j], dtype=np.complex64),
        np.array([1 + 2j, -3j], dtype=np.complex128),
        np.array(3.5),
        np.zeros((0, 4)),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.arange(4.0).astype(">f8"),
        np.array([np.nan, np.inf, -np.inf]),
    ],
    ids=[
        "bool", "int8", "int64", "uint8", "uint64", "float16", "float32", "float64-3d", "longdouble",
        "complex64", "complex128", "0-d", "empty", "fortran", "big-endian", "non-finite",
    ],
)
def test_array_from_accepts_numeric_dtypes(array):
    skel, blob = arr(array)
    got = array_from(skel["d"], skel["s"], blob)
    assert type(got) is np.ndarray
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_the_dtype_whitelist_is_numeric_only():
    assert {dtype.kind for dtype in DTYPES.values()} == set("biufc")
    assert not any(dtype.hasobject or dtype.fields or dtype.subdtype for dtype in DTYPES.values())


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
        ({"t": [{"a": 0, "d": "<f8", "s": [2]}, {"a": 5, "d": "<f8", "s": [2]}]}, 2),
    ],
    ids=["one-past-end", "negative", "no-blobs", "string", "float", "null", "list", "inside-a-tuple"],
)
def test_decode_value_rejects_out_of_range_blob_indices(skel, n_blobs):
    blobs = [np.zeros(2).tobytes()] * n_blobs
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
    (m, m_blob), (sc, sc_blob), (odd, odd_blob) = arr(np.arange(6.0).reshape(2, 3), 0, k="matrix"), arr(np.array(2.5), 1), arr(np.array(2.5), 2, k=7)
    blobs = [m_blob, sc_blob, odd_blob]
    skel = {
        "t": [
            m,
            sc,
            odd,
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
    skel, blob = arr(np.zeros(1000))
    with pytest.raises(ProtocolError, match="referenced twice"):
        decode_value({"l": [skel] * 100}, [blob])


@pytest.mark.parametrize(
    "skel",
    [{"a": 0}, {"a": 0, "d": "<f8"}, {"a": 0, "s": [3]}, {"a": 0, "d": "<f8", "s": [3], "x": 1},
     {"a": 0, "d": "<f8", "s": [3], "k": "array", "x": 1}, {"a": 0, "d": "<i8", "s": [4]}, {"a": 0, "d": "<f8", "s": []}],
    ids=["bare", "no-shape", "no-dtype", "extra-key", "extra-key-with-kind", "wrong-size", "0-d-wrong-size"],
)
def test_decode_value_rejects_malformed_arrays(skel):
    with pytest.raises(ProtocolError):
        decode_value(skel, [np.zeros(3).tobytes()])


def test_frames_may_not_carry_unused_arrays_or_huge_headers():
    from grader.runner.protocol import MAX_HEADER_BYTES, Decoder

    skel, blob = arr(np.zeros(3))
    decoder = Decoder([blob, blob])
    decoder.decode(skel)
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
        decode_value({"a": 0, "d": "<f8", "s": [2]}, [b"not an array"])
    buf = io.BytesIO()
    np.save(buf, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(ProtocolError):
        decode_value({"l": [{"a": 0, "d": "|O", "s": [2]}]}, [buf.getvalue()[:16]])


# --- the two halves agree --------------------------------------------------------------


@pytest.fixture(scope="module")
def child():
    spec = importlib.util.spec_from_file_location("grader_child_under_test", CHILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_spare_warming_up_beside_a_running_job_skips_compiling(child, monkeypatch):
    # Compiling the sample module is the warm-up's costly step; a spare forked while a job
    # runs (jobs back to back) leaves it out rather than take the CPU from that job.
    monkeypatch.setattr(child, "WARM_SOURCE", "raise RuntimeError('compiled')")
    child.warm_up(full=False)
    with pytest.raises(RuntimeError, match="compiled"):
        child.warm_up()


def test_the_zygote_imports_nothing_that_costs_every_child(tmp_path) -> None:
    # Each module the zygote holds makes every fork and exit dearer, and random's at-fork
    # hook reseeds it in every child: tempfile (which brings random) and shutil are
    # imported only on the rare paths that need them.
    import subprocess
    import sys

    harness = os.path.dirname(CHILD)
    site = os.path.dirname(os.path.dirname(np.__file__))
    probe = (
        f"import sys; sys.path[:0] = [{harness!r}, {site!r}]; import zygote, child, confine; "
        "print(sorted(m for m in ('random', 'tempfile', 'shutil') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_output_capture_works_without_o_tmpfile(child) -> None:
    # A file system without O_TMPFILE: the capture file comes from tempfile instead.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe
        try:
            real_open = os.open

            def no_tmpfile(path, flags, *args):
                if flags & os.O_TMPFILE == os.O_TMPFILE:
                    raise IsADirectoryError(path)
                return real_open(path, flags, *args)

            os.chdir(os.environ.get("TMPDIR", "/tmp"))
            child.os.open = no_tmpfile
            output = child.Output(64)
            os.write(1, b"printed " * 20)  # fd 1: pytest has replaced sys.stdout
            text, dropped = output.collect()
            os.write(write_end, json.dumps([text, dropped]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    report = os.read(read_end, 4096)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert json.loads(report) == [("printed " * 20)[:64], 160 - 64]


def encoded(child, value: Any) -> tuple[str, Any]:
    """What the child's encoder writes for `value` (JSON text), and what the parent makes
    of it, through a frame as the child writes it."""
    enc = child.Encoder()
    text = enc.encode(value)
    head = ('{"kind": "call", "value": %s, "blobs": [%s]}' % (text, ",".join(map(str, enc.sizes)))).encode("ascii")
    frame = struct.pack("<QI", 4 + len(head) + sum(enc.sizes), len(head)) + head + b"".join(enc.blobs)
    ((header, blobs),) = FrameReader(1 << 20).feed(frame)
    return text, decode_value(header["value"], blobs)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_child_encoder_output_decodes_in_the_parent(child):
    class Custom:
        pass

    class Weird(str):
        pass

    value = (
        np.arange(6.0).reshape(2, 3),
        np.float32(1.5),
        np.matrix([[1.0, 2.0]]),
        [[1.0, 2.0], [3.0, 4.0]],
        {"dx": np.zeros(2), 3: "three", 'q"\\\n\u00e9\ud800': 1},
        np.array([1, "a"], dtype=object),
        Custom(),
        None,
        True,
        2**70,
        1 + 2j,
        float("nan"),
        "s" * 500,
        [float("inf"), -float("inf"), 1e-300, -0.0, 2**63 - 1, -(2**63) + 1, False],
        Weird("\u2028</script>\x00"),
        np.float64(2.5),
        np.asfortranarray(np.arange(6).reshape(2, 3)),
        np.arange(10.0)[::3],
        np.zeros((2, 0, 3), dtype=np.complex64),
        np.array(7, dtype=np.uint16),
        np.zeros(3, dtype=[("a", "<f8")]),
        np.arange(1000.0),  # a large one goes out as a view, not a copy
    )
    text, out = encoded(child, value)
    assert text.isascii()
    (array, f32, matrix, lst, d, obj, custom, none, flag, big, cplx, nan, s, specials, weird, f64, fortran, strided,
     empty, scalar, structured, large) = out
    np.testing.assert_array_equal(array.array, value[0])
    assert f32.kind == "numpy scalar" and f32.array.dtype == np.float32
    assert matrix.kind == "matrix" and type(matrix.array) is np.ndarray and matrix.array.shape == (1, 2)
    assert lst.kind == "list" and lst.array.shape == (2, 2)
    assert set(d) == {"dx", "3", 'q"\\\n\u00e9?'} and d["3"] == "three"  # a lone surrogate is replaced
    assert obj == Unsupported("NumPy array of dtype object")
    assert isinstance(custom, Unsupported) and custom.description.endswith("Custom")
    assert (none, flag, big, cplx) == (None, True, float(2**70), 1 + 2j)
    assert np.isnan(nan)
    assert s == "s" * 200
    assert specials == [float("inf"), -float("inf"), 1e-300, -0.0, 2**63 - 1, -(2**63) + 1, False]
    assert weird == "\u2028</script>\x00"
    assert f64 == 2.5 and type(f64) is float  # a float subclass is a float, as before
    for got, want in ((fortran, value[16]), (strided, value[17]), (empty, value[18]), (scalar, value[19]), (large, value[21])):
        assert got.kind == "array" and got.array.dtype == want.dtype
        np.testing.assert_array_equal(got.array, want)
    assert structured == Unsupported("NumPy array of dtype [('a', '<f8')]")


def test_child_encoder_limits_depth_and_size(child):
    deep: Any = 1.5
    for _ in range(child.MAX_DEPTH + 1):
        deep = [deep, "x"]
    with pytest.raises(child._TooBig):
        child.Encoder().encode(deep)
    with pytest.raises(child._TooBig):
        child.Encoder().encode([[1.0, "x"]] * (child.MAX_NODES // 2))
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(child._TooBig):
        child.Encoder().encode(loop)


def read_job_through_a_pipe(child, frame, buffer):
    import threading

    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, frame), os.close(w)))
    writer.start()
    try:
        return child.read_job(r, buffer)
    finally:
        writer.join()
        os.close(r)


def test_a_job_cut_short_reads_as_none(child):
    frame = encode_job("x = 1\n", [(0, "f", [np.arange(4.0)])], {})
    for cut in (0, 5, 8, 20, len(frame) - 1):
        assert read_job_through_a_pipe(child, frame[:cut], bytearray(1 << 16)) is None


def test_job_frame_round_trip(child):
    big = np.arange(20000.0).reshape(100, 200)[:, ::2]  # large and not contiguous
    args = [np.arange(4.0), [np.eye(2), np.ones((2, 1), dtype=np.float32)], 3, 0.5, None, (np.zeros(1),), big,
            np.asfortranarray(np.arange(6).reshape(2, 3)), np.float64(2.5), np.array(True)]
    frame = encode_job("x = 1\n", [(0, "f", args)], {"memory_mb": 64})
    header, blobs = read_job_through_a_pipe(child, frame, bytearray(1 << 20))
    # A job larger than the buffer it is offered is read all the same.
    assert read_job_through_a_pipe(child, frame, bytearray(1024))[0] == header
    assert header["source"] == "x = 1\n" and header["limits"] == {"memory_mb": 64}
    (call,) = header["calls"]
    got = [child.decode(a, blobs) for a in call["args"]]
    np.testing.assert_array_equal(got[0], args[0])
    np.testing.assert_array_equal(got[1][0], np.eye(2))
    assert got[1][1].dtype == np.float32
    assert got[2:5] == [3, 0.5, None] and isinstance(got[5], tuple)
    np.testing.assert_array_equal(got[6], big)
    np.testing.assert_array_equal(got[7], args[7])
    assert got[8] == 2.5 and type(got[8]) is float and got[9].shape == () and got[9]
    arrays = [got[0], *got[1], got[5][0], got[6], got[7], got[9]]
    # Writable like any caller's arrays, aligned, and not sharing memory with each other.
    assert all(a.flags.writeable and a.flags.aligned and a.ctypes.data % 16 == 0 for a in arrays)
    got[0][:] = -1
    np.testing.assert_array_equal(got[1][0], np.eye(2))
    with pytest.raises(TypeError):
        ArgEncoder().encode(True)
    with pytest.raises(TypeError):
        ArgEncoder().encode(np.array(["a"]))


# --- end to end: forged frames on the result fd -----------------------------------------

A = load_builtin("vjp")
SEED = 7

FORGER = '''
import io, json, os, struct, sys
import numpy as np


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
    return [np.frombuffer(blobs[a["a"]], dtype=a["d"], count=int(np.prod(a["s"]))).reshape(a["s"]) for a in call["args"]]


def _arr(a, index):
    """The skeleton and blob of an array, as the harness sends them."""
    a = np.ascontiguousarray(a)
    return {"a": index, "d": a.dtype.str, "s": list(a.shape)}, a.tobytes()


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
            (v, vb), (a1, b1), (a2, b2) = _arr(d * (xx > 0), 0), _arr(d, 1), _arr(xx, 2)
            _forge(
                {"kind": "call", "index": nxt[0]["index"], "status": "ok", "seconds": 0.001,
                 "value": v, "args_after": {"l": [a1, a2]}},
                [vb, b1, b2],
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
        v, vb = _arr(dout * (x > 0), 0)
        _forge(
            {"kind": "call", "index": call["index"], "status": "ok", "seconds": 0.001,
             "value": v, "args_after": "="},
            [vb],
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
                v, vb = _arr(np.ones(3), 0)
                _forge({"kind": "call", "index": c["index"], "status": "ok",
                        "value": v, "args_after": "="}, [vb])
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


# --- end to end: results are read in bulk, verdicts stay per call -----------------------

RUNNER_SOURCE = '''
import os, struct, sys, time
import numpy as np


def _result_fd():
    f = sys._getframe(1)
    while "result_fd" not in f.f_locals:
        f = f.f_back
    return f.f_locals["result_fd"]


def g(i):
    return np.full(3, float(i))
'''


@pytest.fixture(params=["sandbox", "subprocess"])
def runner(request):
    """Both runners: they share the parent's session code and the child's harness."""
    if request.param == "subprocess":
        from grader.runner import SubprocessRunner

        return SubprocessRunner()
    from grader.grade import default_runner
    from grader.sandbox import probe_host

    if probe_host().missing(("bwrap", "userns", "landlock", "seccomp")):
        pytest.skip("the sandbox's layers are not available on this host")
    return default_runner()


def run_calls(runner: Any, body: str, calls: list[tuple[str, int]], wall: float = 1.0) -> tuple[Any, float]:
    from grader.runner import Call, Job

    source = RUNNER_SOURCE + "\n\ndef f(i):\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"
    job = Job(source, [Call(name, [i], wall, wall) for name, i in calls], import_seconds=5.0, max_seconds=30.0)
    start = time.monotonic()
    report = runner.run(job)
    return report, time.monotonic() - start


def statuses(report: Any) -> list[str]:
    return [c.status for c in report.calls]


def assert_value(result: Any, i: int) -> None:
    assert result.status == "ok", result
    np.testing.assert_array_equal(result.value.array, np.full(3, float(i)))


def test_many_fast_calls_all_get_their_own_verdict(runner):
    report, _ = run_calls(runner, "return np.full(3, float(i))", [("f", i) for i in range(300)])
    assert statuses(report) == ["ok"] * 300 and report.restarts == 0
    for i, result in enumerate(report.calls):
        assert_value(result, i)
        assert result.args_after == [UNCHANGED]


def test_a_hang_in_call_k_is_blamed_on_call_k_and_earlier_calls_keep_their_verdicts(runner):
    # The parent does not wake per result: it sees which call runs from what it read last.
    body = """
    if i == 5:
        while True:
            pass
    return np.full(3, float(i))
    """
    wall = 0.5
    report, elapsed = run_calls(runner, body, [("f", i) for i in range(8)] + [("g", i) for i in range(8, 11)], wall)
    assert statuses(report) == ["ok"] * 5 + ["timeout", "skipped", "skipped"] + ["ok"] * 3
    for i in list(range(5)) + list(range(8, 11)):
        assert_value(report.calls[i], i)
    assert report.restarts == 1
    # Killed no earlier than its wall time after it started, and not much later.
    assert wall <= elapsed < wall + 2.0


def test_a_sleep_in_call_k_is_blamed_on_call_k_even_after_a_burst_of_results(runner):
    body = """
    if i == 40:
        time.sleep(30)
    return np.full(3, float(i))
    """
    report, _ = run_calls(runner, body, [("f", i) for i in range(41)] + [("g", 41)], 0.4)
    assert statuses(report) == ["ok"] * 40 + ["timeout", "ok"]


@pytest.mark.parametrize(
    "death",
    ["os._exit(3)", "import ctypes; ctypes.string_at(0)", "os.kill(os.getpid(), 9)"],
    ids=["exit", "segfault", "sigkill"],
)
def test_a_crash_in_call_k_keeps_the_verdicts_of_the_calls_before_it(runner, death):
    report, _ = run_calls(runner, f"if i == 3:\n    {death}\nreturn np.full(3, float(i))", [("f", i) for i in range(6)] + [("g", 6)])
    assert statuses(report) == ["ok"] * 3 + ["crashed", "skipped", "skipped", "ok"]
    for i in (0, 1, 2, 6):
        assert_value(report.calls[i], i)


def test_a_child_dying_in_the_middle_of_a_frame_loses_only_that_call(runner):
    # Half a (forged) frame, then death: the frames before it were complete and count.
    body = """
    if i == 4:
        head = b'{"kind": "call", "index": 4, "status": "ok", "blobs": [1000]}'
        os.write(_result_fd(), struct.pack("<QI", 4 + len(head) + 1000, len(head)) + head + b"x" * 10)
        os._exit(0)
    return np.full(3, float(i))
    """
    report, _ = run_calls(runner, body, [("f", i) for i in range(6)] + [("g", 6)])
    assert statuses(report) == ["ok"] * 4 + ["crashed", "skipped", "ok"]


@pytest.mark.parametrize(
    "garbage, status",
    [
        ("struct.pack('<Q', 1 << 40)", "too_large"),
        ("struct.pack('<QI', 12, 8) + b'not json'", "protocol"),
        ("b'\\x05' + bytes(7) + b'\\x01\\x00\\x00\\x00{'", "protocol"),
    ],
    ids=["oversized", "not-json", "truncated-header"],
)
def test_garbage_after_a_batch_of_good_frames_blames_only_the_call_that_wrote_it(runner, garbage, status):
    body = f"""
    if i == 30:
        os.write(_result_fd(), {garbage})
    return np.full(3, float(i))
    """
    report, _ = run_calls(runner, body, [("f", i) for i in range(32)] + [("g", 32)])
    assert statuses(report) == ["ok"] * 30 + [status, "skipped", "ok"]


def test_forged_frames_for_later_calls_in_one_batch_gain_nothing(runner):
    # Call 2 writes well-formed "ok" frames for calls 3..9 at once: the parent reads them
    # in one go, and the first is out of order, so call 2 fails as a protocol error, its
    # function is skipped, and the other function still runs (in a new child).
    body = """
    if i == 2:
        for k in range(3, 10):
            head = ('{"kind": "call", "index": %d, "status": "ok", "value": {"a": 0, "d": "<f8", "s": [3]},'
                    ' "args_after": "=", "blobs": [24]}' % k).encode()
            os.write(_result_fd(), struct.pack("<QI", 4 + len(head) + 24, len(head)) + head + np.full(3, float(k)).tobytes())
    return np.full(3, float(i))
    """
    report, _ = run_calls(runner, body, [("f", i) for i in range(10)] + [("g", 10)])
    assert statuses(report) == ["ok", "ok", "protocol"] + ["skipped"] * 7 + ["ok"]
    assert report.restarts == 1
    assert_value(report.calls[10], 10)


def test_closing_the_result_pipe_early_is_a_crash_of_that_call_not_a_hang(runner):
    body = """
    if i == 3:
        os.close(_result_fd())
        time.sleep(30)
    return np.full(3, float(i))
    """
    report, elapsed = run_calls(runner, body, [("f", i) for i in range(5)] + [("g", 5)], 5.0)
    assert statuses(report) == ["ok"] * 3 + ["crashed", "skipped", "ok"]
    assert elapsed < 3.0  # noticed at once (the pipe hung up), not at the deadline


def test_a_copy_of_the_result_fd_does_not_delay_the_end_of_a_job(runner):
    # The harness closes its fd after the last frame; a copy the student made keeps the
    # pipe open until the process exits, which follows at once.
    body = """
    global _copy
    _copy = os.dup(_result_fd())
    return np.full(3, float(i))
    """
    report, elapsed = run_calls(runner, body, [("f", i) for i in range(5)], 5.0)
    assert statuses(report) == ["ok"] * 5 and elapsed < 4.0  # not a 5 s deadline


def test_large_results_stream_through_the_pipe(runner):
    # Several times the pipe's capacity per call: the parent reads them as they come.
    report, _ = run_calls(runner, "return np.full((1 << 19) + i, float(i))", [("f", i) for i in range(6)], 10.0)
    assert statuses(report) == ["ok"] * 6
    for i, result in enumerate(report.calls):
        assert result.value.array.shape == ((1 << 19) + i,) and result.value.array[-1] == i


def test_a_mutated_argument_is_reported_and_unchanged_ones_are_not(runner):
    from grader.runner import Call, Job

    source = "def f(a, b, c, d):\n    a[0] = 99.0\n    d[1] = 5\n    return a + b\n"
    args = [np.zeros(3), np.ones(3), [np.ones(2), 4], [np.ones(2), 4]]
    report = runner.run(Job(source, [Call("f", args, 2.0, 2.0)]))
    (result,) = report.calls
    assert result.status == "ok"
    a, b, c, d = result.args_after
    assert isinstance(a, Returned) and a.array.tolist() == [99.0, 0.0, 0.0]
    assert b is UNCHANGED and c == [UNCHANGED, UNCHANGED] and d == [UNCHANGED, 5]
    assert args[0].tolist() == [0.0, 0.0, 0.0]  # the parent's own copy is untouched


def test_a_slow_call_costs_the_parent_no_timed_wake_ups(runner, monkeypatch):
    # Once a read finds nothing, the parent sleeps until the child writes (or the call's
    # deadline): polling the pipe every few milliseconds cost a grading process CPU for as
    # long as a slow or hanging call ran.
    import types

    from grader.runner import session

    polls = []
    real_poll = session.select.poll

    class CountingPoll:
        def __init__(self) -> None:
            self.inner = real_poll()
            self.register, self.modify, self.unregister = self.inner.register, self.inner.modify, self.inner.unregister

        def poll(self, timeout: float) -> list[tuple[int, int]]:
            polls.append(timeout)
            return self.inner.poll(timeout)

    monkeypatch.setattr(session, "select", types.SimpleNamespace(poll=CountingPoll))
    body = """
    if i == 1:
        time.sleep(0.4)
    return np.full(3, float(i))
    """
    report, elapsed = run_calls(runner, body, [("f", i) for i in range(3)], 5.0)
    assert statuses(report) == ["ok"] * 3 and elapsed >= 0.4
    assert len(polls) < 20, f"{len(polls)} wake-ups for one 0.4 s call"


# --- a sandbox child that fails before it is confined ----------------------------------


class _UnconfinedChild:
    """A ChildHandle for a spare that dies, hangs or babbles before reporting that it is
    confined (as when the zygote retires and kills its spares under a loaded machine)."""

    reports_confinement = True
    diagnostic_fds: list[int] = []

    def __init__(self, behaviour: str) -> None:
        self.result_fd, self._write_end = os.pipe()
        self.job_fd, self._job_read = os.pipe()
        self.killed = False
        if behaviour == "dies":
            os.close(self._write_end)
            self._write_end = -1
        elif behaviour == "babbles":  # a frame far over the size cap
            os.write(self._write_end, struct.pack("<Q", 1 << 40))

    def connect(self) -> None:
        pass

    def kill(self) -> None:
        self.killed = True

    def wait(self, timeout: float) -> str:
        return "killed by SIGKILL"

    def close(self) -> None:
        for fd in (self.result_fd, self._write_end, self.job_fd, self._job_read):
            if fd >= 0:
                os.close(fd)
        self.result_fd = self._write_end = self.job_fd = self._job_read = -1


@pytest.mark.parametrize("behaviour", ["dies", "hangs", "babbles"])
def test_a_child_that_fails_before_its_confinement_report_is_a_sandbox_failure(behaviour: str) -> None:
    # No student code has run yet, so the student must not be blamed: a "crashed" or
    # "timeout" at load would have been a zero for a perfectly good file. The runner
    # raises, and the caller retries on a fresh zygote or reports the sandbox as broken.
    from grader.runner.base import Call, Job
    from grader.runner.session import SandboxFailure, run_job

    children: list[_UnconfinedChild] = []

    def launch() -> _UnconfinedChild:
        children.append(_UnconfinedChild(behaviour))
        return children[-1]

    job = Job("def f():\n    return 1\n", [Call("f", [], 1.0, 1.0)], import_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(SandboxFailure, match="before|confin"):
        run_job(job, launch)
    assert time.monotonic() - started < 5
    assert len(children) == 1 and children[0].killed and children[0].result_fd == -1
