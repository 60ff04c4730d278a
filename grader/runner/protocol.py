"""The trusted side of the wire format spoken with `child.py`.

Everything arriving from the child is hostile: frames are length-checked against caps
before they are buffered, JSON is parsed from bounded bytes, and skeletons are walked
with a depth limit. Arrays travel as raw bytes described in the skeleton by a dtype string,
which must be one of a fixed set of plain numeric dtypes (nothing else is ever parsed:
no pickles, no object or structured dtypes), and a shape whose size must match the bytes.
"""

from __future__ import annotations

import json
import marshal
import struct
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


ALLOWED_DTYPE_KINDS = "biufc"  # bool, int, uint, float, complex
MAX_DEPTH = 40
MAX_NODES = 100_000  # values in one decoded result, as the child caps its own encoding
MAX_HEADER_BYTES = 1 << 20  # the JSON part of a frame; arrays travel as blobs
MAX_NDIM = 32


def _allowed_dtypes() -> dict[str, np.dtype]:
    """The dtype strings an array may declare (as NumPy spells them, either byte order)."""
    allowed = {}
    for code in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "g", "c8", "c16", "G"):
        for order in "<>":
            dtype = np.dtype(code).newbyteorder(order)
            assert dtype.kind in ALLOWED_DTYPE_KINDS and not dtype.hasobject
            allowed[dtype.str] = dtype
    return allowed


DTYPES = _allowed_dtypes()


class ProtocolError(Exception):
    """The child sent something that is not a well-formed frame or value."""


@dataclass(frozen=True)
class Unsupported:
    """The student returned something that is not data (a custom object, an object array)."""

    description: str


def pack_frame(header: dict[str, Any], blobs: list[Any], sizes: Optional[list[int]] = None) -> bytes:
    """A frame as the child writes it (JSON header)."""
    if sizes is None:
        sizes = [len(b) for b in blobs]
    head = json.dumps({**header, "blobs": sizes}).encode("utf-8")
    return b"".join([struct.pack("<QI", 4 + len(head) + sum(sizes), len(head)), head, *blobs])


class ArgEncoder:
    """Encodes trial arguments (trusted values from the trial generator); blobs are padded
    to 16 bytes so the child's argument arrays are aligned."""

    def __init__(self) -> None:
        self.blobs: list[Any] = []
        self.sizes: list[int] = []

    def encode(self, value: Any) -> dict[str, Any]:
        if isinstance(value, np.ndarray):
            return self.array(value)
        if isinstance(value, bool):
            raise TypeError("booleans are not trial arguments")
        if isinstance(value, int):
            return {"i": int(value)}
        if isinstance(value, float):
            return {"f": float(value)}  # not a subclass: marshal would send its buffer
        if isinstance(value, list):
            return {"l": [self.encode(v) for v in value]}
        if isinstance(value, tuple):
            return {"t": [self.encode(v) for v in value]}
        if value is None:
            return {"n": None}
        raise TypeError(f"cannot send {type(value).__name__} to the sandbox")

    def array(self, array: np.ndarray) -> dict[str, Any]:
        """Its raw C-order bytes (a large contiguous array as a view, not a copy), padded."""
        if array.dtype.str not in DTYPES:
            raise TypeError(f"cannot send an array of dtype {array.dtype} to the sandbox")
        nbytes = array.nbytes
        if nbytes <= 65536 or not array.flags.c_contiguous:
            self.blobs.append(array.tobytes())
        else:
            self.blobs.append(array.reshape(-1).view(np.uint8))
        pad = -nbytes % 16
        if pad:
            self.blobs.append(bytes(pad))
        self.sizes.append(nbytes + pad)
        return {"a": len(self.sizes) - 1, "d": array.dtype.str, "s": array.shape}


class FrameReader:
    """Incremental frame parser over bytes read from a pipe, with a per-frame size cap.

    Frames complete in a chunk are parsed in place (their blobs are views into the chunk);
    only an incomplete frame at the end is copied aside, and grows until it is complete.
    A bad frame does not swallow the good ones read with it in the same chunk: `feed`
    returns those, keeps the error in `error`, and raises it on the next call."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.buffer = bytearray()  # an incomplete frame
        self.need = 8  # bytes the buffered frame needs before it can be parsed
        self.error: Optional[ProtocolError] = None

    def feed(self, data: "bytes | bytearray | memoryview") -> list[tuple[dict[str, Any], list[memoryview]]]:
        if self.error is not None:
            raise self.error
        if self.buffer:
            self.buffer += data
            if len(self.buffer) < self.need:
                return []
            data, self.buffer = bytes(self.buffer), bytearray()
        elif not isinstance(data, bytes):
            data = bytes(data)  # blobs are views into it: it must not change under them
        frames = []
        pos, size = 0, len(data)
        view = memoryview(data)
        try:
            while size - pos >= 8:
                (length,) = struct.unpack_from("<Q", data, pos)
                if length > self.max_frame:
                    raise ProtocolError(f"a result of {length} bytes exceeds the {self.max_frame}-byte limit")
                end = pos + 8 + length
                if end > size:
                    break
                frames.append(parse_payload(view[pos + 8 : end]))
                pos = end
        except ProtocolError as exc:
            self.error = exc
            self.buffer = bytearray()
            if not frames:
                raise
            return frames
        if pos < size:
            self.buffer = bytearray(view[pos:])
            self.need = 8 + length if size - pos >= 8 else 8
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame waiting for more data."""
        return len(self.buffer)


_json = json.JSONDecoder()


def parse_payload(payload: "bytes | memoryview") -> tuple[dict[str, Any], list[memoryview]]:
    payload = memoryview(payload)
    size = len(payload)
    if size < 4:
        raise ProtocolError("truncated frame")
    (hlen,) = struct.unpack_from("<I", payload)
    if 4 + hlen > size:
        raise ProtocolError("frame header longer than the frame")
    if hlen > MAX_HEADER_BYTES:
        raise ProtocolError(f"a frame header of {hlen} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        text = str(payload[4 : 4 + hlen], "utf-8")
        header, end = _json.raw_decode(text)
        if end != len(text):
            raise ValueError("data after the header")
    except (ValueError, RecursionError) as exc:  # incl. JSONDecodeError and integers too long to parse
        raise ProtocolError(f"unreadable frame header: {str(exc)[:200]}") from None
    if type(header) is not dict:
        raise ProtocolError("frame header is not an object")
    sizes = header.get("blobs", [])
    if type(sizes) is not list or len(sizes) > MAX_NODES:
        raise ProtocolError("bad blob table")
    blobs, offset = [], 4 + hlen
    for n in sizes:
        if type(n) is not int or n < 0:
            raise ProtocolError("bad blob table")
        blobs.append(payload[offset : offset + n])  # views: no copy per array
        offset += n
    if offset != size:
        raise ProtocolError("blob sizes do not add up to the frame length")
    return header, blobs


def array_from(descr: Any, shape: Any, blob: "bytes | memoryview") -> np.ndarray:
    """An array from its declared dtype string and shape and its raw bytes (a read-only
    view, no copy). Only the dtypes in DTYPES are accepted, and the bytes must be exactly
    as many as the shape needs."""
    dtype = DTYPES.get(descr) if isinstance(descr, str) else None
    if dtype is None:
        raise ProtocolError(f"dtype {clean_text(descr, 40) or type(descr).__name__} is not allowed")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise ProtocolError("malformed array shape")
    count = 1
    for n in shape:
        if type(n) is not int or not 0 <= n < 1 << 48:
            raise ProtocolError("malformed array shape")
        count *= n
    if count * dtype.itemsize != len(blob):
        raise ProtocolError("array data does not match its shape")
    try:
        return np.frombuffer(blob, dtype=dtype, count=count).reshape(shape)
    except ValueError as exc:  # a zero-size shape too large for NumPy
        raise ProtocolError(f"unusable array shape: {exc}") from None


class Unchanged:
    """An argument the child reports as equal to what it was given."""

    def __repr__(self) -> str:
        return "Unchanged"


UNCHANGED = Unchanged()


@dataclass(frozen=True)
class Returned:
    """A decoded array plus what kind of object the student actually returned."""

    array: np.ndarray
    kind: str  # "array", "numpy scalar", "matrix", or the class of an array-like


def clean_text(value: Any, limit: int) -> str:
    """Student-controlled text made safe to store and show: a str, valid UTF-8 (lone
    surrogates replaced), at most `limit` characters."""
    if not isinstance(value, str):
        return ""
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


class Decoder:
    """Decodes the skeletons of one frame against its blobs.

    Each blob may be referenced once: a thousand references to one 8 MB blob would make
    the parent materialise gigabytes from a few kilobytes of header."""

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs
        self.used: set[int] = set()
        self.nodes = 0

    def decode(self, skel: Any) -> Any:
        """Plain Python/NumPy data from a skeleton: None, bool, int, float, complex, str,
        list, tuple, dict (str keys), Returned (arrays), Unsupported, UNCHANGED. Anything
        malformed raises ProtocolError, never another exception."""
        try:
            return _decode(skel, self, 0)
        except ProtocolError:
            raise
        except (ValueError, TypeError, OverflowError, KeyError, RecursionError, MemoryError, struct.error) as exc:
            raise ProtocolError(f"malformed value ({type(exc).__name__})") from None

    def finish(self) -> None:
        if len(self.used) != len(self.blobs):
            raise ProtocolError("the frame carries arrays its values do not use")


def decode_value(skel: Any, blobs: list[bytes]) -> Any:
    return Decoder(blobs).decode(skel)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError("malformed number")
    return float(value)


def _decode(skel: Any, state: Decoder, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deeply")
    state.nodes += 1
    if state.nodes > MAX_NODES:
        raise ProtocolError("value has too many parts")
    if type(skel) is not dict:
        raise ProtocolError("malformed value")
    if "a" in skel:
        blobs = state.blobs
        index = skel["a"]
        if type(index) is not int:
            raise ProtocolError("array index out of range (not an integer)")
        if not 0 <= index < len(blobs):
            raise ProtocolError("array index out of range")
        kind = skel.get("k")
        if len(skel) != (3 if kind is None else 4) or "d" not in skel or "s" not in skel:
            raise ProtocolError("malformed array")
        if index in state.used:
            raise ProtocolError("an array is referenced twice")
        state.used.add(index)
        kind = "array" if kind is None else clean_text(kind, 80) or "array"
        return Returned(array_from(skel["d"], skel["s"], blobs[index]), kind)
    if len(skel) != 1:
        raise ProtocolError("malformed value")
    ((key, value),) = skel.items()
    if key == "=":
        return UNCHANGED
    if key in ("l", "t") and type(value) is list:
        items = [_decode(v, state, depth + 1) for v in value]
        return items if key == "l" else tuple(items)
    if key == "f":
        return _number(value)
    if key == "n":
        return None
    if key == "b" and type(value) is bool:
        return value
    if key == "i" and type(value) is int:
        return value
    if key == "c" and type(value) is list and len(value) == 2:
        return complex(_number(value[0]), _number(value[1]))
    if key == "s" and type(value) is str:
        return clean_text(value, 200)
    if key == "u" and type(value) is str:
        return Unsupported(clean_text(value, 200))
    if key == "d" and type(value) is list:
        out: dict[str, Any] = {}
        for pair in value:
            if not (type(pair) is list and len(pair) == 2 and type(pair[0]) is str):
                raise ProtocolError("malformed dict entry")
            out[clean_text(pair[0], 100)] = _decode(pair[1], state, depth + 1)
        return out
    raise ProtocolError("malformed value")


def encode_job(source: str, calls: list[tuple[int, str, list[Any]]], limits: dict[str, Any]) -> bytes:
    """One job: the source, the calls (index, function name, arguments) and the limits."""
    encoder = ArgEncoder()
    header = {
        "source": source,
        "limits": limits,
        "calls": [{"index": i, "function": name, "args": [encoder.encode(a) for a in args]} for i, name, args in calls],
        "blobs": encoder.sizes,
    }
    # The job's header is marshalled, not JSON: several times cheaper on both sides. It
    # only ever travels from the trusted parent to the child; nothing the child sends is
    # read with marshal, which is no format for untrusted data. Padded so that the blobs
    # (each a multiple of 16 bytes) start aligned; marshal ignores the trailing bytes.
    head = marshal.dumps(header)
    head += bytes(-(4 + len(head)) % 16)
    return b"".join([struct.pack("<QI", 4 + len(head) + sum(encoder.sizes), len(head)), head, *encoder.blobs])


def error_of(header: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The `error` member of a frame, sanitised to the fields the parent uses."""
    err = header.get("error")
    if not isinstance(err, dict):
        return None
    line = err.get("line")
    return {
        "type": clean_text(err.get("type"), 100) or "Exception",
        "text": clean_text(err.get("text"), 6000),
        "line": line if isinstance(line, int) and not isinstance(line, bool) and 0 < line < 10**7 else None,
    }
