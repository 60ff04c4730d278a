"""The program that runs a student's file: standalone, standard library and NumPy only.

It is started fresh for each submission (reading its job from stdin), or forked from the
sandbox zygote (reading it from a pipe); it runs every requested call and writes one
framed message per call to the result fd. It imports nothing from the grader, so a sandbox
need not expose the grader's code, and it decides nothing: the trusted parent parses what
it sends and does all the comparing and scoring. Anything it reports could have been
forged by the student's code, which is fine, because a forged report can say no more than
the student's own return value could.

Wire format (both directions): a frame is an 8-byte little-endian length, then a 4-byte
little-endian header length, a header, and the header's `blobs` (byte lengths) back to
back. Result headers are UTF-8 JSON; the job's header is marshalled (it comes from the
trusted parent, and marshal is much cheaper). Values are encoded as a skeleton; an array is
{"a": blob index, "d": dtype string (e.g. "<f8"), "s": shape} and its blob holds its raw
C-order bytes. In a job, every blob is padded to a multiple of 16 bytes and so is the
header, so that argument arrays are aligned like any caller's arrays.

Large arrays can instead travel through two memfds the zygote gives the child (see
`attach_regions`): the job's blob table then holds (offset, length) for an argument in the
sealed input file, which the child maps privately (writable, copy on write: the sealed
file itself is the pristine copy of the arguments), and a result's blob table entry
[offset, length] names bytes it wrote into its result file.

The result frames of a job are written as each call ends, so what completed before a hang
or a crash is already in the pipe when the parent kills the child. The parent does not
wake up per frame: it reads the pipe every millisecond or so, and when the child closes
the pipe (it does so right after its last frame, or by dying).
"""

import ctypes
import inspect
import json
import json.encoder
import linecache
import marshal
import mmap
import os
import struct
import sys
import time
import traceback
import types

import numpy as np

FILENAME = "submission.py"
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_TRACEBACK = 4000
SHARED_MIN_BYTES = 64 << 10  # as protocol.SHARED_MIN_BYTES
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


def read_job(fd, buffer=None):
    """The job from the parent on `fd`: (header, blobs), or None if the pipe closed early.
    The header is marshalled (see protocol.encode_job); the blobs are views into one
    writable buffer, so arguments become writable arrays without a copy each. `buffer` (a
    bytearray a spare zero-filled while it waited, so its pages are already there) is used
    when the job fits. The payload starts 16 bytes into the buffer, which keeps the job's
    16-byte alignment of its arrays."""
    if buffer is None or len(buffer) < 64:
        buffer = bytearray(65536)
    view = memoryview(buffer)
    got, need = 8, 16  # the length prefix goes to bytes 8..16
    while got < need:
        n = os.readv(fd, [view[got:]])
        if not n:
            return None
        got += n
        if need == 16 and got >= 16:
            (length,) = struct.unpack_from("<Q", view, 8)
            need = 16 + length
            if need > len(view):
                bigger = bytearray(need)
                bigger[:got] = view[:got]
                view = memoryview(bigger)
    payload = view[16:need]
    (hlen,) = struct.unpack_from("<I", payload)
    header = marshal.loads(payload[4 : 4 + hlen])
    blobs, offset = [], 4 + hlen
    for size in header.get("blobs", []):
        if type(size) is tuple:
            blobs.append(None)  # in the input memfd: see attach_regions
            continue
        blobs.append(payload[offset : offset + size])
        offset += size
    return header, blobs


class _ResultRegion:
    """The result memfd: large result arrays are written into it, one after the other;
    whatever does not fit (or fails to write) takes the pipe."""

    def __init__(self, fd, size):
        self.fd = fd
        self.size = size
        self.pos = 0

    def put(self, array):
        """The blob table entry ("[offset,length]") for `array`, or None if it must be
        sent in the frame."""
        nbytes = array.nbytes
        offset = -self.pos % 64 + self.pos
        if offset + nbytes > self.size:
            return None
        self.pos = offset + nbytes  # even after a failed write: offsets only grow
        data = memoryview(array.reshape(-1).view(np.uint8) if array.flags.c_contiguous else array.tobytes())
        done = 0
        try:
            while done < nbytes:
                written = os.pwritev(self.fd, [data[done:]], offset + done)
                if written <= 0:
                    raise OSError("no progress")
                done += written
        except OSError:
            self.size = 0  # the student's code closed or replaced the fd: use the pipe
            return None
        return "[%d,%d]" % (offset, nbytes)


_results_region = None


def attach_regions(header, blobs, input_fd, output_fd):
    """Map the job's arguments from the sealed input memfd into `blobs`, and send large
    results through the output memfd from now on. Returns the blobs' pristine copies:
    views of a second, read-only mapping of the same sealed file for the mapped blobs (the
    student's writes to an argument go to private copies of its pages, never to the
    file), None for the others. Without regions in the header, nothing changes."""
    global _results_region
    regions = header.get("regions")
    originals = [None] * len(blobs)
    if not regions:
        return originals
    size = regions["in"]
    if size:
        args = memoryview(mmap.mmap(input_fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE))
        pristine = memoryview(mmap.mmap(input_fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ))
        for i, entry in enumerate(header["blobs"]):
            if type(entry) is tuple:
                offset, length = entry
                blobs[i] = args[offset : offset + length]
                originals[i] = pristine[offset : offset + length]
    os.close(input_fd)  # each mapping holds its own (sealed) fd
    _results_region = _ResultRegion(output_fd, regions["out"])
    return originals


def write_frame(fd, header, blobs=(), sizes=None):
    """One frame with a JSON header (`header` gets its `blobs` entry)."""
    if sizes is None:
        sizes = [len(b) for b in blobs]
    header["blobs"] = sizes
    write_raw_frame(fd, json.dumps(header).encode("utf-8"), blobs, sizes)


def write_raw_frame(fd, head, blobs, sizes):
    """One frame with its header already encoded, written at once: a partial write only
    where a signal interrupts it."""
    total = 4 + len(head) + sum(sizes)
    parts = [_FRAME_START.pack(total, len(head)), head, *blobs]
    if total < 65536:
        _write_all(fd, b"".join(parts))
        return
    written = os.writev(fd, parts)  # large arrays go out without being joined into a copy
    if written < 12 + total:
        _write_all(fd, memoryview(b"".join(parts))[written:])


_FRAME_START = struct.Struct("<QI")


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_dtypes = {}


def load_arg(skel, blobs):
    """An argument array: a view into the job's writable buffer, so writable like any
    caller's array, without a copy."""
    descr = skel["d"]
    dtype = _dtypes.get(descr)
    if dtype is None:
        dtype = _dtypes[descr] = np.dtype(descr)
    shape = skel["s"]
    count = 1
    for n in shape:
        count *= n
    return np.frombuffer(blobs[skel["a"]], dtype=dtype, count=count).reshape(shape)


def decode(skel, blobs):
    """Arguments from the parent (trusted input)."""
    if "a" in skel:
        return load_arg(skel, blobs)
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


_quote = json.encoder.encode_basestring_ascii  # a str as a JSON string, ASCII only
_SPECIAL_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # as json.dumps


def _float(value):
    text = float.__repr__(value)
    return _SPECIAL_FLOATS.get(text, text)


SAME = '{"=":1}'
_IMMUTABLE = (int, float, type(None))


class Encoder:
    """Turns whatever the student returned into a skeleton plus raw array blobs, or a
    marker naming a type the parent cannot accept (object arrays, custom classes, ...).

    The skeleton is written as JSON text directly (what json.dumps would write for the
    dicts described in the module docstring): a frame's header is mostly skeleton, and
    building dicts and dumping them cost more than most student functions take to run."""

    def __init__(self, numeric_lists=True):
        self.blobs = []
        self.sizes = []  # the blob table: inline sizes, or "[offset,length]" in the result memfd
        self.inline = []  # sizes of the blobs in the frame
        self.nodes = 0
        self.numeric_lists = numeric_lists

    def encode(self, value, depth=0):
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise _TooBig()
        if type(value) is np.ndarray and value.dtype.kind in _ALLOWED_KINDS:
            return self.array(value, "array")  # the usual answer, without the tests below
        if value is None:
            return '{"n":null}'
        if isinstance(value, bool):
            return '{"b":true}' if value else '{"b":false}'
        if isinstance(value, int):
            return '{"i":%s}' % int.__repr__(value) if abs(value) < 2**63 else '{"f":%s}' % _float(float(value))
        if isinstance(value, float):
            return '{"f":%s}' % _float(value)
        if isinstance(value, complex):
            return '{"c":[%s,%s]}' % (_float(float(value.real)), _float(float(value.imag)))
        if isinstance(value, (np.ndarray, np.generic)):
            array = np.asarray(value)
            if array.dtype.kind not in _ALLOWED_KINDS:
                return '{"u":%s}' % _quote("NumPy array of dtype " + str(array.dtype))
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
            items = ",".join([self.encode(v, depth + 1) for v in value])
            return ('{"l":[%s]}' if isinstance(value, list) else '{"t":[%s]}') % items
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                items.append("[%s,%s]" % (_quote(k if isinstance(k, str) else repr(k)[:80]), self.encode(v, depth + 1)))
            return '{"d":[%s]}' % ",".join(items)
        if isinstance(value, str):
            return '{"s":%s}' % _quote(value[:200])
        type_name = type(value).__module__ + "." + type(value).__qualname__
        if hasattr(value, "__array__"):
            try:
                array = np.asarray(value)
            except Exception:
                return '{"u":%s}' % _quote(type_name)
            if array.dtype.kind in _ALLOWED_KINDS:
                return self.array(array, type_name)
        return '{"u":%s}' % _quote(type_name)

    def array(self, array, kind):
        nbytes = array.nbytes
        entry = None
        if nbytes > SHARED_MIN_BYTES and _results_region is not None:
            entry = _results_region.put(array)
        if entry is not None:
            self.sizes.append(entry)
        else:
            if nbytes <= 4096 or not array.flags.c_contiguous:
                self.blobs.append(array.tobytes())
            else:
                self.blobs.append(array.reshape(-1).view(np.uint8))  # no copy of a large array
            self.sizes.append(nbytes)
            self.inline.append(nbytes)
        shape = ",".join(map(str, array.shape))
        if kind == "array":
            return '{"a":%d,"d":"%s","s":[%s]}' % (len(self.sizes) - 1, array.dtype.str, shape)
        return '{"a":%d,"d":"%s","s":[%s],"k":%s}' % (len(self.sizes) - 1, array.dtype.str, shape, _quote(kind))

    def encode_after(self, before, after):
        """The arguments after the call, with every array that still equals its pristine
        copy sent as {"=": 1}: sending them all back doubled the cost of a call. The parent
        compares whatever did change; a student who forges "=" hides only their own bug."""
        if isinstance(before, np.ndarray) and isinstance(after, np.ndarray):
            if after.shape == before.shape and after.dtype == before.dtype and _same_values(after, before):
                return SAME
            return self.encode(after)
        if after is before and type(before) in _IMMUTABLE:
            return SAME  # a number (or None) the caller passed cannot have changed
        if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
            return '{"l":[%s]}' % ",".join([self.encode_after(b, a) for b, a in zip(before, after)])
        return self.encode(after)


_memcmp = ctypes.CDLL(None).memcmp
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_memcmp.restype = ctypes.c_int


def _same_values(a, b):
    """Bitwise equality (NaNs compare equal; anything else that differs is sent back, and
    the parent judges it). Small arrays: comparing their bytes is cheapest. Large ones are
    compared in place: no copies, no temporaries (np.array_equal made several)."""
    if a.nbytes <= 65536:
        return a.tobytes() == b.tobytes()
    if a.flags.c_contiguous and b.flags.c_contiguous:
        return _memcmp(a.__array_interface__["data"][0], b.__array_interface__["data"][0], a.nbytes) == 0
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


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
        try:
            # An unnamed file, as tempfile.TemporaryFile makes it, without the module's
            # Python layers: in a freshly forked spare, they cost ~0.3 ms of page faults.
            fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:  # a file system without O_TMPFILE
            # Imported only here: tempfile brings random, whose hook reseeds it in every
            # forked child, and a dozen modules that made every fork and exit dearer.
            import tempfile

            capture = tempfile.TemporaryFile(dir=".")
            fd = os.dup(capture.fileno())
            capture.close()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)  # fds 1 and 2 keep the (never named) file open
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
    """None if `func` takes `nargs` positional arguments, else why not. A plain function
    is checked from its code object (inspect.signature costs a first call ~0.1 ms)."""
    if type(func) is types.FunctionType and not {"__wrapped__", "__signature__"} & func.__dict__.keys():
        code = func.__code__
        required = code.co_argcount - len(func.__defaults__ or ())
        kwonly_required = code.co_kwonlyargcount - len(func.__kwdefaults__ or ())
        if kwonly_required == 0 and required <= nargs and (nargs <= code.co_argcount or code.co_flags & inspect.CO_VARARGS):
            return None
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*range(nargs))
    except TypeError as exc:
        return str(exc)
    return None


def _send(result_fd, output, header):
    text, dropped = output.collect()
    if text or dropped:
        header["output"] = text
        header["output_dropped"] = dropped
    write_frame(result_fd, header)


_signature_checked = {}


def _copy_args(args, skels=None, originals=None):
    """What the arguments were before the call: a copy of each array, or, for one mapped
    from the sealed input memfd, a view of its read-only mapping (no copy to make)."""
    out = []
    for i, arg in enumerate(args):
        skel = skels[i] if skels is not None else None
        if isinstance(arg, np.ndarray):
            if skel is not None and "a" in skel and originals[skel["a"]] is not None:
                out.append(load_arg(skel, originals))
            else:
                out.append(arg.copy())
        elif isinstance(arg, list):
            out.append(_copy_args(arg, skel["l"] if skel is not None and "l" in skel else None, originals))
        else:
            out.append(arg)
    return out


def run_call(module, call, blobs, result_fd, output, originals=None):
    output.reset()
    name = call["function"]
    func = module.__dict__.get(name)
    reply = {"kind": "call", "index": call["index"]}
    if func is None:
        reply["status"] = "missing"
        _send(result_fd, output, reply)
        return
    if not callable(func):
        reply.update(status="not_callable", detail=type(func).__name__)
        _send(result_fd, output, reply)
        return
    args = [decode(a, blobs) for a in call["args"]]
    pristine = _copy_args(args, call["args"], originals) if originals else _copy_args(args)
    key = (name, id(func), len(args))
    if key not in _signature_checked:
        _signature_checked[key] = check_signature(func, len(args))
    problem = _signature_checked[key]
    if problem is not None:
        reply.update(status="bad_signature", detail=problem)
        _send(result_fd, output, reply)
        return
    start = time.perf_counter()
    try:
        value = func(*args)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are the student's too
        reply.update(status="error", seconds=time.perf_counter() - start, error=format_error(exc))
        _send(result_fd, output, reply)
        return
    seconds = time.perf_counter() - start
    encoder = Encoder()
    try:
        skeleton = encoder.encode(value)
        encoder.numeric_lists = False
        after = [encoder.encode_after(b, a) for b, a in zip(pristine, args)]
        # "=": every argument is as it was given (the usual case), in one short string.
        after = '"="' if all(a is SAME for a in after) else '{"l":[%s]}' % ",".join(after)
    except _TooBig:
        reply.update(status="too_complex", seconds=seconds)
        _send(result_fd, output, reply)
        return
    except BaseException as exc:
        reply.update(status="error", seconds=seconds, error=format_error(exc), during="encoding")
        _send(result_fd, output, reply)
        return
    text, dropped = output.collect()
    printed = ',"output":%s,"output_dropped":%d' % (_quote(text), dropped) if text or dropped else ""
    head = '{"kind":"call","index":%d,"status":"ok","seconds":%s,"value":%s,"args_after":%s%s,"blobs":[%s]}' % (
        call["index"], _float(seconds), skeleton, after, printed, ",".join(map(str, encoder.sizes)))
    write_raw_frame(result_fd, head.encode("ascii"), encoder.blobs, encoder.inline)


WARM_SOURCE = """
import numpy as np


def sigmoid(t, axis=0):
    return 1.0 / (1.0 + np.exp(-t))


class Layer:
    def __init__(self, W, b=None):
        self.W, self.b = W, b

    def backward(self, dout, x):
        dx = dout @ self.W.T
        dW = x.T @ dout
        db = dout.sum(axis=0) if self.b is not None else None
        return dx, dW, db


def backward(dout, x, W, *rest, eps=1e-8, **options):
    out = [g for g in (dout, x) if g is not None]
    grads = {"x": None, "W": None}
    total = 0.0
    for i, (a, c) in enumerate(zip(out, out[1:])):
        if i % 2 == 0 and a.shape != c.shape:
            total += float(np.sum(a)) * eps
        elif not isinstance(a, (list, tuple)):
            continue
    while total > 1:
        total /= 2
    try:
        dx = np.maximum(dout, 0) * (x > 0) + np.where(x > 0, 1.0, 0.0) - np.tanh(x) ** 2
        dx = dx + np.log1p(np.abs(x)) * np.sqrt(np.abs(dout)) / (1 + np.clip(x, -1, 1))
    except (ValueError, TypeError) as exc:
        raise RuntimeError(f"bad input {exc!r}: {x.shape}") from exc
    finally:
        pass
    assert dx is not None, "missing"
    dx = dx.mean(axis=-1, keepdims=True) + dx.reshape(-1)[:1].sum() + np.ones_like(dx) * np.zeros_like(dx).max()
    dx = dx + (dout[:, None, :] * x[None]).sum(axis=1) + np.outer(dout[0], x[0])[: len(dx), : dx.shape[1]].T.T
    return dx, Layer(W, W[0]).backward(dout, x), grads, [k ** 2 for k in range(3)], {k: v for k, v in grads.items()}
"""


def warm_up(stop=lambda: False, full=True):
    """Run the harness's own per-call work once on throwaway data, and compile a small
    module like a submission, so the pages this touches are copied from the zygote while
    this child is still a spare, not during a job (compiling the file costs ~0.15 ms less).
    Running more NumPy code here saved less in a job than it cost the spare. Gives up
    between steps once `stop()` says a job is waiting: it must not delay one. Without
    `full`, only the first three steps: they save a job about what they cost, the rest
    (compiling above all) costs several times what it saves."""
    sample = np.arange(12.0).reshape(3, 4)
    skel = {"a": 0, "d": "<f8", "s": [3, 4]}
    view = memoryview(bytearray(sample.tobytes()))
    args = [decode(skel, [view]), 1.5, [decode(skel, [view])]]
    pristine = _copy_args(args)
    namespace = {"__name__": "warm_up"}
    steps = (
        lambda: Encoder().encode((sample @ sample.T, {"k": np.outer(sample[0], sample[1])}, [1.0, 2.0, 3], 2.5, None, "s")),
        lambda: Encoder(numeric_lists=False).encode_after(pristine, args),
        lambda: json.dumps({"kind": "loaded", "ok": True, "seconds": 0.5, "blobs": []}),
        lambda: exec(compile(WARM_SOURCE, "warm_up.py", "exec", dont_inherit=True), namespace),
        lambda: check_signature(namespace["backward"], 3),
        lambda: np.maximum(np.exp(sample), np.where(sample > 1, sample, 0)).sum(axis=0),
        lambda: format_error(ValueError("warm")),
        lambda: check_signature(namespace["sigmoid"], 3),  # too many arguments: the slow path
    )
    for step in steps if full else steps[:3]:
        if stop():
            return
        step()


def serve(header, blobs, result_fd, output=None, originals=None):
    """Load the student's module and run every call of the job, one frame per call; then
    close the result fd, which tells the parent (waiting for that) that all is written."""
    limits = header.get("limits", {})
    output = output or Output(2048)
    output.cap = int(limits.get("output_bytes", 2048))
    try:
        start = time.perf_counter()
        module = load_module(header["source"])
    except BaseException as exc:
        _send(result_fd, output, {"kind": "loaded", "ok": False, "error": format_error(exc)})
    else:
        _send(result_fd, output, {"kind": "loaded", "ok": True, "seconds": time.perf_counter() - start})
        for call in header["calls"]:
            run_call(module, call, blobs, result_fd, output, originals)
        write_frame(result_fd, {"kind": "done"})
    try:
        os.close(result_fd)
    except OSError:  # the student's code closed it (the parent then waits for the exit)
        pass
    return 0


def main():
    """Unsandboxed entry point (the plain subprocess runner): rlimits only."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import confine

    result_fd = int(sys.argv[1])
    job = read_job(0)
    if job is None:
        return 2
    header, blobs = job
    confine.set_rlimits_for(header.get("limits", {}))
    return serve(header, blobs, result_fd)


if __name__ == "__main__":
    # os._exit: skip interpreter teardown, which would run the student's atexit hooks and
    # __del__ methods after the last frame, where no deadline attributes them to a call.
    os._exit(main())
