"""The trusted side of the wire format spoken with `child.py`.

Everything arriving from the child is hostile: frames are length-checked against caps
before they are buffered, JSON is parsed from bounded bytes, and skeletons are walked
with a depth limit. Arrays travel as raw bytes described in the skeleton by a dtype string,
which must be one of a fixed set of plain numeric dtypes (nothing else is ever parsed:
no pickles, no object or structured dtypes), and a shape whose size must match the bytes.

Large arrays (over SHARED_MIN_BYTES) travel through two shared-memory files (memfds) when
the child has them, instead of through the pipes: the parent writes the job's large
arguments into one and seals it (no write, resize or further seal by anyone) before the
child sees the job; the child writes its large results into the other, of a fixed size
the parent set and sealed, and a frame's blob table names them by [offset, length]. The
parent copies each such blob out before it looks at it, and accepts ranges only inside
the file, in increasing order and without overlap, so a hostile child can neither point
outside the file nor make the parent copy the same bytes twice.
"""

from __future__ import annotations

import fcntl
import json
import marshal
import os
import struct
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


ALLOWED_DTYPE_KINDS = "biufc"  # bool, int, uint, float, complex
MAX_DEPTH = 40
MAX_NODES = 100_000  # values in one decoded result, as the child caps its own encoding
MAX_HEADER_BYTES = 1 << 20  # the JSON part of a frame; arrays travel as blobs
MAX_NDIM = 32
SHARED_MIN_BYTES = 64 << 10  # smaller arrays take the pipe: no memfd work for them
# The child's result file. At most the child's RLIMIT_FSIZE (confine.set_rlimits), which
# bounds the offsets it can write at; results beyond it take the pipe.
OUTPUT_REGION_BYTES = 16 << 20
ALIGN = 64
INPUT_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
OUTPUT_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


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


class InputRegion:
    """The job's large argument arrays, laid out for the sealed memfd the child maps."""

    def __init__(self) -> None:
        self.arrays: list[tuple[int, np.ndarray]] = []  # (offset, array)
        self.size = 0

    def add(self, array: np.ndarray) -> tuple[int, int]:
        offset = -self.size % ALIGN + self.size
        self.arrays.append((offset, array))
        self.size = offset + array.nbytes
        return offset, array.nbytes

    def install(self, input_fd: int, output_fd: int, output_bytes: int = OUTPUT_REGION_BYTES) -> None:
        """Write the arrays into `input_fd` and seal it; size and seal `output_fd`. Both must
        be fresh, empty memfds that allow sealing (the zygote makes one pair per child)."""
        for fd in (input_fd, output_fd):
            if os.fstat(fd).st_size != 0 or fcntl.fcntl(fd, fcntl.F_GET_SEALS) != 0:
                raise ValueError("a shared-memory file for a child is not fresh")
        os.ftruncate(input_fd, self.size)
        for offset, array in self.arrays:
            data = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
            done = 0
            while done < len(data):
                written = os.pwrite(input_fd, data[done:], offset + done)
                if written <= 0:
                    raise OSError(f"a shared-memory file took no more bytes at {offset + done}")
                done += written
        os.ftruncate(output_fd, output_bytes)
        fcntl.fcntl(input_fd, fcntl.F_ADD_SEALS, INPUT_SEALS)
        fcntl.fcntl(output_fd, fcntl.F_ADD_SEALS, OUTPUT_SEALS)
        for fd, seals in ((input_fd, INPUT_SEALS), (output_fd, OUTPUT_SEALS)):
            if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & seals != seals:
                raise ValueError("a shared-memory file could not be sealed")


class OutputRegion:
    """The parent's view of a child's result memfd: blobs are copied out of it, in
    increasing order and never twice, and only from inside the file."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.next = 0  # the lowest offset the next blob may start at

    def take(self, entry: Any) -> memoryview:
        if not (type(entry) is list and len(entry) == 2 and type(entry[0]) is int and type(entry[1]) is int):
            raise ProtocolError("bad blob table")
        offset, length = entry
        if offset < self.next or length < 0 or offset + length > self.size:
            raise ProtocolError("an array in shared memory lies outside its allowed range")
        # A copy, read with pread (no mapping: nothing the child does to the file can
        # fault the parent); what the child writes later cannot change it.
        buffer = np.empty(length, dtype=np.uint8)
        done = 0
        while done < length:
            n = os.preadv(self.fd, [buffer[done:]], offset + done)
            if n <= 0:
                raise ProtocolError("an array in shared memory is cut short")
            done += n
        self.next = offset + length
        return memoryview(buffer)


class ArgEncoder:
    """Encodes trial arguments (trusted values from the trial generator); blobs are padded
    to 16 bytes so the child's argument arrays are aligned. With a `region`, arrays over
    SHARED_MIN_BYTES go there instead, and their blob table entry is (offset, length)."""

    def __init__(self, region: Optional[InputRegion] = None) -> None:
        self.blobs: list[Any] = []
        self.sizes: list[int] = []  # inline blobs, in the frame
        self.table: list[Any] = []  # every blob: its inline size, or (offset, length) in the region
        self.region = region

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
        if self.region is not None and nbytes > SHARED_MIN_BYTES:
            self.table.append(self.region.add(array))
            return {"a": len(self.table) - 1, "d": array.dtype.str, "s": array.shape}
        if nbytes <= 65536 or not array.flags.c_contiguous:
            self.blobs.append(array.tobytes())
        else:
            self.blobs.append(array.reshape(-1).view(np.uint8))
        pad = -nbytes % 16
        if pad:
            self.blobs.append(bytes(pad))
        self.sizes.append(nbytes + pad)
        self.table.append(nbytes + pad)
        return {"a": len(self.table) - 1, "d": array.dtype.str, "s": array.shape}


class FrameReader:
    """Incremental frame parser over bytes read from a pipe, with a per-frame size cap.

    Frames complete in a chunk are parsed in place (their blobs are views into the chunk);
    only an incomplete frame at the end is copied aside, and grows until it is complete.
    A bad frame does not swallow the good ones read with it in the same chunk: `feed`
    returns those, keeps the error in `error`, and raises it on the next call."""

    def __init__(self, max_frame: int, region: Optional[OutputRegion] = None) -> None:
        self.max_frame = max_frame
        self.region = region  # the child's result memfd, if it has one
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
                frames.append(parse_payload(view[pos + 8 : end], self.region, self.max_frame))
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


def parse_payload(
    payload: "bytes | memoryview", region: Optional[OutputRegion] = None, max_bytes: Optional[int] = None
) -> tuple[dict[str, Any], list[memoryview]]:
    """A frame's header and blobs. Blobs in the frame are views into it; a blob table entry
    [offset, length] is a blob in `region` (copied out), counted with the frame against
    `max_bytes`."""
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
    blobs, offset, shared = [], 4 + hlen, []
    for n in sizes:
        if type(n) is list and len(n) == 2 and type(n[0]) is int and type(n[1]) is int:
            shared.append(len(blobs))
            blobs.append(n)
            continue
        if type(n) is not int or n < 0:
            raise ProtocolError("bad blob table")
        blobs.append(payload[offset : offset + n])  # views: no copy per array
        offset += n
    if offset != size:
        raise ProtocolError("blob sizes do not add up to the frame length")
    if shared:
        if region is None:
            raise ProtocolError("an array in shared memory, which this child does not have")
        total = size + sum(max(blobs[i][1], 0) for i in shared)
        if max_bytes is not None and total > max_bytes:
            raise ProtocolError(f"a result of {total} bytes exceeds the {max_bytes}-byte limit")
        for i in shared:
            blobs[i] = region.take(blobs[i])
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


def encode_job(
    source: str, calls: list[tuple[int, str, list[Any]]], limits: dict[str, Any], region: Optional[InputRegion] = None
) -> bytes:
    """One job: the source, the calls (index, function name, arguments) and the limits.
    With a `region` (a child with shared memory), large arrays are laid out in it instead,
    for `InputRegion.install` once the child's memfds are known, and the header gives the
    sizes of both memfds."""
    encoder = ArgEncoder(region)
    header = {
        "source": source,
        "limits": limits,
        "calls": [{"index": i, "function": name, "args": [encoder.encode(a) for a in args]} for i, name, args in calls],
        "blobs": encoder.table,
    }
    if region is not None:
        header["regions"] = {"in": region.size, "out": OUTPUT_REGION_BYTES}
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
