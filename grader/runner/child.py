"""The program that runs a student's file: standalone, standard library and NumPy only.

It is started fresh for each submission (reading its job from stdin), or forked from the
sandbox zygote (reading it from a pipe); it runs every requested call and writes one
framed message per call to the result fd. It imports nothing from the grader, so a sandbox need not expose the grader's
code, and it decides nothing: the trusted parent parses what it sends and does all the
comparing and scoring. Anything it reports could have been forged by the student's code,
which is fine, because a forged report can say no more than the student's own return
value could.

Wire format (both directions): a frame is an 8-byte little-endian length, then a 4-byte
little-endian header length, a UTF-8 JSON header, and the header's `blobs` (byte lengths)
of `.npy` arrays back to back. Values are encoded as a JSON skeleton that points at blobs.
"""

import inspect
import io
import json
import linecache
import os
import struct
import sys
import tempfile
import time
import traceback

import numpy as np

FILENAME = "submission.py"
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_TRACEBACK = 4000
_ALLOWED_KINDS = "biufc"


class _TooBig(Exception):
    pass


def _numbers_only(value):
    """True for (nested) lists/tuples whose leaves are all Python numbers. A container met
    twice (a list holding itself) is not an array-like; the structural encoder then
    reports it as nested too deeply."""
    stack, containers = [value], set()
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            if not item or id(item) in containers:
                return False
            containers.add(id(item))
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            return False
    return True


def read_frame(stream):
    """A job from the parent. The blobs are views into one writable buffer, so arguments
    become writable arrays without a copy each."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    (length,) = struct.unpack("<Q", head)
    payload = bytearray(length)
    view = memoryview(payload)
    got = 0
    while got < length:
        n = stream.readinto(view[got:])
        if not n:
            return None
        got += n
    (hlen,) = struct.unpack_from("<I", payload)
    header = json.loads(bytes(view[4 : 4 + hlen]).decode("utf-8"))
    blobs, offset = [], 4 + hlen
    for size in header.get("blobs", []):
        blobs.append(view[offset : offset + size])
        offset += size
    return header, blobs


def write_frame(fd, header, blobs):
    header = dict(header, blobs=[len(b) for b in blobs])
    head = json.dumps(header, allow_nan=True).encode("utf-8")
    payload = b"".join([struct.pack("<I", len(head)), head, *blobs])
    data = struct.pack("<Q", len(payload)) + payload
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def load_arg(blob):
    """An argument array from the parent's .npy blob (a view into the job's writable
    buffer), writable like any caller's array.

    Parses NumPy's own header format directly: np.load parses it with ast.literal_eval,
    which costs more than most student functions take to run."""
    if bytes(blob[:8]) == b"\x93NUMPY\x01\x00":
        (hlen,) = struct.unpack_from("<H", blob, 8)
        header = bytes(blob[10 : 10 + hlen]).decode("latin1")
        if header.startswith("{'descr': '") and "'fortran_order': False" in header:
            descr = header[11 : header.index("'", 11)]
            shape_text = header[header.index("'shape': (") + 10 : header.index(")")]
            shape = tuple(int(n) for n in shape_text.split(",") if n.strip())
            return np.frombuffer(blob[10 + hlen :], dtype=np.dtype(descr)).reshape(shape)
    return np.load(io.BytesIO(bytes(blob)), allow_pickle=False)


def decode(skel, blobs):
    """Arguments from the parent (trusted input)."""
    if "a" in skel:
        return load_arg(blobs[skel["a"]])
    if "f" in skel:
        return float(skel["f"])
    if "i" in skel:
        return int(skel["i"])
    if "l" in skel:
        return [decode(v, blobs) for v in skel["l"]]
    if "t" in skel:
        return tuple(decode(v, blobs) for v in skel["t"])
    if "n" in skel:
        return None
    raise ValueError("unknown argument encoding")


class Encoder:
    """Turns whatever the student returned into a skeleton plus npy blobs, or a marker
    naming a type the parent cannot accept (object arrays, custom classes, ...)."""

    def __init__(self, numeric_lists=True):
        self.blobs = []
        self.nodes = 0
        self.numeric_lists = numeric_lists

    def encode(self, value, depth=0):
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise _TooBig()
        if value is None:
            return {"n": None}
        if isinstance(value, bool):
            return {"b": value}
        if isinstance(value, int):
            return {"i": value} if abs(value) < 2**63 else {"f": float(value)}
        if isinstance(value, float):
            return {"f": value}
        if isinstance(value, complex):
            return {"c": [value.real, value.imag]}
        if isinstance(value, (np.ndarray, np.generic)):
            array = np.asarray(value)
            if array.dtype.kind not in _ALLOWED_KINDS:
                return {"u": "NumPy array of dtype " + str(array.dtype)}
            kind = "array" if isinstance(value, np.ndarray) else "numpy scalar"
            if type(value) is not np.ndarray and isinstance(value, np.ndarray):
                kind = type(value).__name__
            return self.array(array, kind)
        if isinstance(value, (list, tuple)):
            if self.numeric_lists and _numbers_only(value):
                # Nested lists of numbers are an array-like answer; sending them as one
                # array keeps a large one cheap and lets the parent check its shape.
                try:
                    return self.array(np.asarray(value, dtype=np.float64), type(value).__name__)
                except (ValueError, TypeError, OverflowError):
                    pass
            key = "l" if isinstance(value, list) else "t"
            return {key: [self.encode(v, depth + 1) for v in value]}
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                items.append([k if isinstance(k, str) else repr(k)[:80], self.encode(v, depth + 1)])
            return {"d": items}
        if isinstance(value, str):
            return {"s": value[:200]}
        type_name = type(value).__module__ + "." + type(value).__qualname__
        if hasattr(value, "__array__"):
            try:
                array = np.asarray(value)
            except Exception:
                return {"u": type_name}
            if array.dtype.kind in _ALLOWED_KINDS:
                return self.array(array, type_name)
        return {"u": type_name}

    def array(self, array, kind):
        self.blobs.append(npy_bytes(array))
        return {"a": len(self.blobs) - 1, "k": kind}

    def encode_after(self, before, after):
        """The arguments after the call, with every array that still equals its pristine
        copy sent as {"=": 1}: sending them all back doubled the cost of a call. The parent
        compares whatever did change; a student who forges "=" hides only their own bug."""
        if isinstance(before, np.ndarray) and isinstance(after, np.ndarray):
            if after.shape == before.shape and after.dtype == before.dtype and _same_values(after, before):
                return {"=": 1}
            return self.encode(after)
        if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
            return {"l": [self.encode_after(b, a) for b, a in zip(before, after)]}
        return self.encode(after)


def _same_values(a, b):
    # Small arrays: bitwise equality of the bytes is the cheapest test (NaNs compare equal).
    # Large ones: compare in place instead of copying megabytes out.
    if a.nbytes <= 65536:
        return a.tobytes() == b.tobytes()
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def npy_bytes(array):
    """The .npy (version 1.0) encoding of a numeric array, as np.save writes it, without
    np.save's per-call overhead."""
    header = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (array.dtype.str, array.shape)
    pad = 63 - (10 + len(header)) % 64
    header = (header + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + array.tobytes()


def format_error(exc):
    """The student's traceback only: frames of this harness are dropped."""
    te = traceback.TracebackException.from_exception(exc, limit=-20)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename == FILENAME])
    text = "".join(te.format())
    if len(text) > MAX_TRACEBACK:
        text = text[: MAX_TRACEBACK // 2] + "\n[...]\n" + text[-MAX_TRACEBACK // 2 :]
    return {"type": type(exc).__name__, "text": text, "line": _lineno(exc)}


def _lineno(exc):
    if isinstance(exc, SyntaxError):
        return exc.lineno
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class Output:
    """Points fd 1 and 2 at one scratch file, emptied before each call, so what a call
    printed travels in that call's own frame instead of racing it on another pipe."""

    def __init__(self, cap):
        self.cap = cap
        sys.stdout.flush()
        sys.stderr.flush()
        capture = tempfile.TemporaryFile(dir=".")
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        capture.close()  # fds 1 and 2 keep the (already unlinked) file open

        self.dirty = False

    def reset(self):
        if not self.dirty:
            return
        try:
            os.ftruncate(1, 0)
            os.lseek(1, 0, os.SEEK_SET)
        except OSError:
            pass
        self.dirty = False

    def collect(self):
        """(text, bytes dropped) printed since the last reset; best effort. Most calls
        print nothing, and then this costs one fstat."""
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        try:
            size = os.fstat(1).st_size
            if size == 0:
                return "", 0
            self.dirty = True
            data = os.pread(1, self.cap, 0)
        except OSError:
            return "", 0
        return data.decode("utf-8", errors="replace"), max(0, size - len(data))


def load_module(source):
    # Tracebacks show the student's own lines only if linecache knows the source.
    linecache.cache[FILENAME] = (len(source), None, source.splitlines(True), FILENAME)
    module = type(sys)("submission")
    module.__file__ = FILENAME
    code = compile(source, FILENAME, "exec", dont_inherit=True)
    sys.modules["submission"] = module
    exec(code, module.__dict__)
    return module


def check_signature(func, nargs):
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*range(nargs))
    except TypeError as exc:
        return str(exc)
    return None


def _send(result_fd, output, header, blobs):
    text, dropped = output.collect()
    if text or dropped:
        header = dict(header, output=text, output_dropped=dropped)
    write_frame(result_fd, header, blobs)


_signature_checked = {}


def _copy_args(args):
    return [a.copy() if isinstance(a, np.ndarray) else _copy_args(a) if isinstance(a, list) else a for a in args]


def run_call(module, call, blobs, result_fd, output):
    output.reset()
    name = call["function"]
    func = module.__dict__.get(name)
    reply = {"kind": "call", "index": call["index"]}
    if func is None:
        _send(result_fd, output, dict(reply, status="missing"), [])
        return
    if not callable(func):
        _send(result_fd, output, dict(reply, status="not_callable", detail=type(func).__name__), [])
        return
    args = [decode(a, blobs) for a in call["args"]]
    pristine = _copy_args(args)
    key = (name, id(func), len(args))
    if key not in _signature_checked:
        _signature_checked[key] = check_signature(func, len(args))
    problem = _signature_checked[key]
    if problem is not None:
        _send(result_fd, output, dict(reply, status="bad_signature", detail=problem), [])
        return
    start = time.perf_counter()
    try:
        value = func(*args)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are the student's too
        reply.update(status="error", seconds=time.perf_counter() - start, error=format_error(exc))
        _send(result_fd, output, reply, [])
        return
    seconds = time.perf_counter() - start
    encoder = Encoder()
    try:
        skeleton = encoder.encode(value)
        encoder.numeric_lists = False
        after = {"l": [encoder.encode_after(b, a) for b, a in zip(pristine, args)]}
    except _TooBig:
        _send(result_fd, output, dict(reply, status="too_complex", seconds=seconds), [])
        return
    except BaseException as exc:
        reply.update(status="error", seconds=seconds, error=format_error(exc), during="encoding")
        _send(result_fd, output, reply, [])
        return
    _send(result_fd, output, dict(reply, status="ok", seconds=seconds, value=skeleton, args_after=after), encoder.blobs)


def warm_up():
    """Run the harness's own per-call work once on throwaway data, so the pages it touches
    are copied from the zygote while this child is still a spare, not during a job."""
    sample = np.arange(12.0).reshape(3, 4)
    blob = memoryview(bytearray(npy_bytes(sample)))
    args = [load_arg(blob), 1.5, [load_arg(blob)]]
    encoder = Encoder()
    encoder.encode((sample @ sample.T, {"k": np.outer(sample[0], sample[1])}, [1.0, 2.0]))
    encoder.numeric_lists = False
    encoder.encode_after(_copy_args(args), args)
    json.dumps({"kind": "call", "index": 0, "status": "ok", "value": {"t": [{"a": 0}]}, "blobs": [1, 2]})
    np.maximum(np.exp(sample), np.where(sample > 1, sample, 0)).sum(axis=0)
    format_error(ValueError("warm"))


def serve(header, blobs, result_fd, output=None):
    """Load the student's module and run every call of the job, one frame per call."""
    limits = header.get("limits", {})
    output = output or Output(2048)
    output.cap = int(limits.get("output_bytes", 2048))
    try:
        start = time.perf_counter()
        module = load_module(header["source"])
    except BaseException as exc:
        _send(result_fd, output, {"kind": "loaded", "ok": False, "error": format_error(exc)}, [])
        return 0
    _send(result_fd, output, {"kind": "loaded", "ok": True, "seconds": time.perf_counter() - start}, [])
    for call in header["calls"]:
        run_call(module, call, blobs, result_fd, output)
    write_frame(result_fd, {"kind": "done"}, [])
    return 0


def main():
    """Unsandboxed entry point (the plain subprocess runner): rlimits only."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import confine

    result_fd = int(sys.argv[1])
    job = read_frame(sys.stdin.buffer)
    if job is None:
        return 2
    header, blobs = job
    confine.set_rlimits_for(header.get("limits", {}))
    return serve(header, blobs, result_fd)


if __name__ == "__main__":
    # os._exit: skip interpreter teardown, which would run the student's atexit hooks and
    # __del__ methods after the last frame, where no deadline attributes them to a call.
    os._exit(main())
