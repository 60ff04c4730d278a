"""Assignment spec folders as data: read from disk or a zip upload, stored in the database as
{file name: text}, and turned back into a loaded `grader.spec.Assignment` for grading.

A stored version is materialised once per process into a cache folder named by its digest,
then loaded with the same `load_folder` the CLI uses, so the worker grades exactly what
`grader grade FOLDER` would."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
import zipfile
from pathlib import Path, PurePosixPath
from typing import Optional

import yaml

from grader.spec import Assignment, SpecError, load_folder
from grader.spec.load import SPEC_FILE

MAX_FILES = 20
MAX_FILE_BYTES = 1 << 20
MAX_TOTAL_BYTES = 4 << 20
TEXT_SUFFIXES = (".yaml", ".yml", ".md", ".py", ".txt")
SOLUTION_FILE = "solution.py"  # optional: a reference solution the self-test must give full marks

SpecFiles = dict[str, str]


def digest(files: SpecFiles) -> str:
    blob = json.dumps(sorted(files.items()), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def files_from_folder(folder: Path) -> SpecFiles:
    """The text files of a spec folder (top level only)."""
    files: SpecFiles = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            files[path.name] = _text(path.name, path.read_bytes())
    _check_set(files)
    return files


def files_from_zip(data: bytes) -> SpecFiles:
    """A zip of one spec folder: the files at its top level or inside one top-level folder.
    Rejects what a careless or hostile archive might hold: paths that climb out, links,
    archives that inflate beyond the caps, binary files."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise SpecError("the upload is not a zip archive") from None
    entries = [i for i in archive.infolist() if not i.is_dir() and not _ignorable(i.filename)]
    if not entries:
        raise SpecError("the zip archive is empty")
    if len(entries) > MAX_FILES:
        raise SpecError(f"the zip archive holds {len(entries)} files; at most {MAX_FILES} are allowed")
    paths = []
    for info in entries:
        path = PurePosixPath(info.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in info.filename:
            raise SpecError(f"the zip archive holds an unsafe path: {info.filename!r}")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise SpecError(f"the zip archive holds a symbolic link: {info.filename!r}")
        paths.append(path)
    # One folder wrapping everything (as "zip -r vjp.zip vjp/" makes) is unwrapped.
    prefix: tuple[str, ...] = ()
    if all(len(p.parts) >= 2 for p in paths) and len({p.parts[0] for p in paths}) == 1:
        prefix = paths[0].parts[:1]
    files: SpecFiles = {}
    total = 0
    for info, path in zip(entries, paths):
        rel = path.parts[len(prefix):]
        if len(rel) != 1:
            raise SpecError(f"{info.filename}: sub-folders are not supported; put every file next to {SPEC_FILE}")
        name = rel[0]
        if PurePosixPath(name).suffix not in TEXT_SUFFIXES:
            raise SpecError(f"{name}: only text files ({', '.join(TEXT_SUFFIXES)}) belong in a spec folder")
        if info.file_size > MAX_FILE_BYTES:
            raise SpecError(f"{name}: larger than {MAX_FILE_BYTES // 1024} KiB")
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise SpecError(f"the archive inflates to more than {MAX_TOTAL_BYTES >> 20} MiB")
        with archive.open(info) as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)  # the header's size may lie
        if len(raw) > MAX_FILE_BYTES:
            raise SpecError(f"{name}: larger than {MAX_FILE_BYTES // 1024} KiB")
        files[name] = _text(name, raw)
    _check_set(files)
    return files


def _ignorable(name: str) -> bool:
    parts = PurePosixPath(name).parts
    # ".." is not a hidden file: an entry that climbs out is refused below, not skipped.
    return any((p.startswith(".") and p != "..") or p == "__MACOSX" or p == "__pycache__" for p in parts)


def _text(name: str, raw: bytes) -> str:
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(f"{name}: larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{name}: not UTF-8 text") from None


def _check_set(files: SpecFiles) -> None:
    if SPEC_FILE not in files:
        raise SpecError(f"no {SPEC_FILE} in the spec folder (found: {', '.join(sorted(files)) or 'nothing'})")


def spec_id(files: SpecFiles) -> str:
    """The `id` field of spec.yaml, read without the full validation (for routing errors)."""
    try:
        data = yaml.safe_load(files.get(SPEC_FILE, ""))
    except yaml.YAMLError:
        return ""
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else ""


_cache_lock = threading.Lock()
_loaded: dict[str, Assignment] = {}


def cache_root() -> Path:
    configured = os.environ.get("GRADER_SPEC_CACHE")
    root = Path(configured) if configured else Path(tempfile.gettempdir()) / f"grader-specs-{os.getuid()}"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def cached(known_digest: str) -> Optional[Assignment]:
    """The assignment with this digest if this process has loaded it already: a caller that
    knows a version's digest (a worker's claim returns it) need not read its files."""
    with _cache_lock:
        return _loaded.get(known_digest)


def load_files(files: SpecFiles, known_digest: Optional[str] = None) -> Assignment:
    """A loaded assignment for stored spec files; cached per process by digest."""
    key = known_digest or digest(files)
    hit = cached(key)
    if hit is not None:
        return hit
    folder = cache_root() / key
    if not (folder / ".complete").is_file():
        # Written to a private temporary folder and renamed, so two workers materialising
        # the same version never read each other's half-written files.
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=cache_root()))
        for name, text in files.items():
            if "/" in name or name.startswith("."):
                raise SpecError(f"{name}: not a plain file name")
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / ".complete").write_text(key)
        try:
            os.rename(tmp, folder)
        except OSError:
            _remove(tmp)  # another process won the race; its copy is identical
    assignment = load_folder(folder)
    with _cache_lock:
        if len(_loaded) > 256:
            _loaded.clear()
        _loaded[key] = assignment
    return assignment


def _remove(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
