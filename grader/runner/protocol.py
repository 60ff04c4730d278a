"""The trusted side of the wire format spoken with `child.py`.

Everything arriving from the child is hostile: frames are length-checked against caps
before they are buffered, JSON is parsed from bounded bytes, arrays are read with
`allow_pickle=False` and must have a whitelisted dtype, and skeletons are walked with a
depth limit.
"""

from __future__ import annotations

import io
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from grader.runner.child import npy_bytes

ALLOWED_DTYPE_KINDS = "biufc"  # bool, int, uint, float, complex
MAX_DEPTH = 40
MAX_NODES = 100_000  # values in one decoded result, as the child caps its own encoding
MAX_HEADER_BYTES = 1 << 20  # the JSON part of a frame; arrays travel as blobs


class ProtocolError(Exception):
    """The child sent something that is not a well-formed frame or value."""


@dataclass(frozen=True)
class Unsupported:
    """The student returned something that is not data (a custom object, an object array)."""

    description: str


def pack_frame(header: dict[str, Any], blobs: list[bytes]) -> bytes:
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}).encode("utf-8")
    payload = b"".join([struct.pack("<I", len(head)), head, *blobs])
    return struct.pack("<Q", len(payload)) + payload


class ArgEncoder:
    """Encodes trial arguments (trusted values from the trial generator)."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def encode(self, value: Any) -> dict[str, Any]:
        if isinstance(value, np.ndarray):
            self.blobs.append(npy_bytes(value))
            return {"a": len(self.blobs) - 1}
        if isinstance(value, bool):
            raise TypeError("booleans are not trial arguments")
        if isinstance(value, int):
            return {"i": value}
        if isinstance(value, float):
            return {"f": value}
        if isinstance(value, list):
            return {"l": [self.encode(v) for v in value]}
        if isinstance(value, tuple):
            return {"t": [self.encode(v) for v in value]}
        if value is None:
            return {"n": None}
        raise TypeError(f"cannot send {type(value).__name__} to the sandbox")


class FrameReader:
    """Incremental frame parser over bytes read from a pipe, with a per-frame size cap.

    A bad frame does not swallow the good ones read with it in the same chunk: `feed`
    returns those, keeps the error in `error`, and raises it on the next call."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.buffer = bytearray()
        self.start = 0  # parsed bytes at the front, dropped in one go (not per frame)
        self.error: Optional[ProtocolError] = None

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], list[bytes]]]:
        if self.error is not None:
            raise self.error
        if self.start:
            del self.buffer[: self.start]
            self.start = 0
        self.buffer += data
        frames = []
        try:
            while len(self.buffer) - self.start >= 8:
                (length,) = struct.unpack_from("<Q", self.buffer, self.start)
                if length > self.max_frame:
                    raise ProtocolError(f"a result of {length} bytes exceeds the {self.max_frame}-byte limit")
                end = self.start + 8 + length
                if len(self.buffer) < end:
                    break
                payload = bytes(memoryview(self.buffer)[self.start + 8 : end])
                self.start = end
                frames.append(parse_payload(payload))
        except ProtocolError as exc:
            self.error = exc
            self.buffer.clear()
            self.start = 0
            if not frames:
                raise
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame waiting for more data."""
        return len(self.buffer) - self.start


def parse_payload(payload: bytes) -> tuple[dict[str, Any], list[bytes]]:
    if len(payload) < 4:
        raise ProtocolError("truncated frame")
    (hlen,) = struct.unpack_from("<I", payload)
    if 4 + hlen > len(payload):
        raise ProtocolError("frame header longer than the frame")
    if hlen > MAX_HEADER_BYTES:
        raise ProtocolError(f"a frame header of {hlen} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(payload[4 : 4 + hlen].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # incl. JSONDecodeError and integers too long to parse
        raise ProtocolError(f"unreadable frame header: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    sizes = header.get("blobs", [])
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise ProtocolError("bad blob table")
    if 4 + hlen + sum(sizes) != len(payload):
        raise ProtocolError("blob sizes do not add up to the frame length")
    blobs, offset = [], 4 + hlen
    view = memoryview(payload)
    for size in sizes:
        blobs.append(view[offset : offset + size])  # views: no copy per array
        offset += size
    return header, blobs


# The exact header NumPy writes for a plain numeric array. Anything else takes np.load's
# slower path (which parses the header with ast.literal_eval, ~80 us an array).
NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|](?:b1|[iu][1248]|f(?:2|4|8|16)|c(?:8|16|32)))', 'fortran_order': (True|False), "
    rb"'shape': \(((?:[0-9]{1,12}, ?){0,32}[0-9]{0,12})\), \} *\n"
)


def fast_array(blob: "bytes | memoryview") -> Optional[np.ndarray]:
    """Parse a standard .npy blob without np.load; None when it is not of the usual form."""
    if bytes(blob[:6]) != b"\x93NUMPY" or len(blob) < 10:
        return None
    if blob[6] == 1:
        (hlen,), start = struct.unpack_from("<H", blob, 8), 10
    elif blob[6] in (2, 3):
        (hlen,), start = struct.unpack_from("<I", blob, 8), 12
    else:
        return None
    match = NPY_HEADER.fullmatch(bytes(blob[start : start + hlen]))
    if match is None:
        return None
    dtype = np.dtype(match.group(1).decode())
    shape = tuple(int(n) for n in match.group(3).split(b",") if n.strip())
    count = 1
    for n in shape:
        count *= n
    data = memoryview(blob)[start + hlen :]
    if len(data) != count * dtype.itemsize:
        raise ProtocolError("array data does not match its header")
    order = "F" if match.group(2) == b"True" else "C"
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order=order)


def load_array(blob: bytes) -> np.ndarray:
    fast = fast_array(blob)
    if fast is not None:
        return fast
    try:
        array = np.load(io.BytesIO(bytes(blob)), allow_pickle=False)
    except Exception as exc:  # malformed npy bytes of any kind
        raise ProtocolError(f"unreadable array: {exc}") from None
    if not isinstance(array, np.ndarray) or type(array) is not np.ndarray:
        raise ProtocolError("not a plain array")
    if array.dtype.kind not in ALLOWED_DTYPE_KINDS or array.dtype.hasobject:
        raise ProtocolError(f"dtype {array.dtype} is not allowed")
    return array


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
    if not isinstance(skel, dict):
        raise ProtocolError("malformed value")
    blobs = state.blobs
    if "a" in skel:
        index = skel["a"]
        if set(skel) - {"a", "k"} or isinstance(index, bool) or not isinstance(index, int):
            raise ProtocolError("array index out of range (not an integer)")
        if not 0 <= index < len(blobs):
            raise ProtocolError("array index out of range")
        if index in state.used:
            raise ProtocolError("an array is referenced twice")
        state.used.add(index)
        kind = clean_text(skel.get("k", "array"), 80) or "array"
        return Returned(load_array(blobs[index]), kind)
    if len(skel) != 1:
        raise ProtocolError("malformed value")
    (key, value), = skel.items()
    if key == "=":
        return UNCHANGED
    if key == "n":
        return None
    if key == "b" and isinstance(value, bool):
        return value
    if key == "i" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if key == "f":
        return _number(value)
    if key == "c" and isinstance(value, list) and len(value) == 2:
        return complex(_number(value[0]), _number(value[1]))
    if key == "s" and isinstance(value, str):
        return clean_text(value, 200)
    if key == "u" and isinstance(value, str):
        return Unsupported(clean_text(value, 200))
    if key in ("l", "t") and isinstance(value, list):
        items = [_decode(v, state, depth + 1) for v in value]
        return items if key == "l" else tuple(items)
    if key == "d" and isinstance(value, list):
        out: dict[str, Any] = {}
        for pair in value:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
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
    }
    return pack_frame(header, encoder.blobs)


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
