"""`grader submit`: send a file to a grader service's JSON API and, with --wait, print its
grade when it is ready.

Standard library only (urllib), so a student's machine needs nothing beyond this package.
The token comes from --token or GRADER_TOKEN and is only ever sent in the Authorization
header: it is never printed, never put in a URL, and never follows a redirect to another
address (urllib would forward it, so redirects are refused)."""

from __future__ import annotations

import json
import re
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional
from urllib.parse import urlsplit

import click

from grader import __version__

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 30.0
DEFAULT_WAIT = 600.0
# Polling starts fast (a submission typically grades in a second or two) and backs off.
POLL_FIRST, POLL_MAX = 0.5, 5.0
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
# What `--download` fetches: a function's zip of failing visible trials, nothing else.
FUNCTION_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,99}"
DOWNLOAD_PATH = re.compile(r"/api/v1/submissions/[0-9]{1,18}/trials/" + FUNCTION_NAME + r"/repro\.zip")
MAX_DOWNLOAD_BYTES = 256 << 20

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class ClientFailure(Exception):
    """The command cannot go on; `message` is for the person at the terminal, `code` is
    the exit status (1: the API refused, 2: usage or connection trouble)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx answer, reported below


@dataclass(frozen=True)
class ApiClient:
    """A grader service at `base` (scheme, host and any path prefix; no trailing slash)."""

    base: str
    token: str
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def for_url(cls, url: str, token: str, timeout: float = DEFAULT_TIMEOUT) -> "ApiClient":
        url = (url or "").strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientFailure(
                f"{url!r} is not a web address: give the service's URL, e.g. https://grader.example.edu", EXIT_USAGE
            )
        if parts.query or parts.fragment:
            raise ClientFailure(f"{url!r}: give the service's address without '?' or '#' parts", EXIT_USAGE)
        base = url.rstrip("/")
        if base.endswith(API_PREFIX):  # people paste the API address too
            base = base[: -len(API_PREFIX)]
        token = (token or "").strip()
        if not token:
            raise ClientFailure(
                "no API token: set GRADER_TOKEN (or pass --token); create a token on your account page", EXIT_USAGE
            )
        if any(ch.isspace() or not ch.isprintable() for ch in token):
            raise ClientFailure("the API token contains spaces or control characters; copy it again", EXIT_USAGE)
        return cls(base, token, timeout)

    @property
    def insecure(self) -> bool:
        """Plain HTTP to another machine: the token would cross the network readable."""
        parts = urlsplit(self.base)
        return parts.scheme == "http" and (parts.hostname or "") not in LOCAL_HOSTS

    def submission_url(self, submission_id: int) -> str:
        # Built here rather than taken from the server's answer: behind a proxy the server
        # may name an address the client cannot (or must not) send its token to.
        return f"{self.base}{API_PREFIX}/submissions/{int(submission_id)}"

    def submit(self, assignment: str, filename: str, data: bytes, course: Optional[str] = None) -> dict[str, Any]:
        fields = {"assignment": assignment}
        if course:
            fields["course"] = course
        body, content_type = encode_multipart(fields, "file", filename, data)
        return self.request("POST", f"{self.base}{API_PREFIX}/submissions", body, {"Content-Type": content_type})

    def submission(self, submission_id: int) -> dict[str, Any]:
        return self.request("GET", self.submission_url(submission_id))

    def download(self, link: str) -> bytes:
        """The bytes of a download the API named. Only the API part of its path is used,
        under --url: behind a proxy the server may name another address, and the token
        goes to --url alone."""
        path = urlsplit(link).path
        path = path[path.find(API_PREFIX + "/submissions/") :] if API_PREFIX + "/submissions/" in path else path
        if not DOWNLOAD_PATH.fullmatch(path):
            raise ClientFailure(f"the service named an unexpected download {link[:80]!r}", EXIT_API)
        return self.request("GET", self.base + path, raw=True)  # type: ignore[no-any-return]

    def request(
        self, method: str, url: str, body: Optional[bytes] = None, headers: Optional[dict[str, str]] = None, raw: bool = False
    ) -> Any:
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", f"backprop-grader/{__version__} (grader submit)")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        opener = urllib.request.build_opener(_NoRedirects)
        try:
            with opener.open(req, timeout=self.timeout) as response:
                data = response.read(MAX_DOWNLOAD_BYTES + 1) if raw else response.read()
                if raw and len(data) > MAX_DOWNLOAD_BYTES:
                    raise ClientFailure(f"{url} is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB; not saved", EXIT_API)
                return data if raw else _json_body(response.status, data, url)
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read()
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location", "another address")
                raise ClientFailure(
                    f"{url} redirects to {where}; pass the service's final address with --url (or GRADER_URL)",
                    EXIT_USAGE,
                ) from None
            payload = _json_body(exc.code, raw, url)
            detail = payload.get("detail") or payload.get("error") or "no detail given"
            reason = payload.get("error") or exc.reason
            extra = ""
            if payload.get("choices"):
                extra = "\n  choose one with --course: " + ", ".join(str(c) for c in payload["choices"])
            raise ClientFailure(f"the service refused ({exc.code} {reason}): {detail}{extra}", EXIT_API) from None
        except urllib.error.URLError as exc:
            raise ClientFailure(f"cannot reach {self.base}: {_reason(exc.reason)}", EXIT_USAGE) from None
        except (TimeoutError, socket.timeout):
            raise ClientFailure(f"{self.base} did not answer within {self.timeout:g} s", EXIT_USAGE) from None
        except (ConnectionError, OSError) as exc:
            raise ClientFailure(f"the connection to {self.base} failed: {_reason(exc)}", EXIT_USAGE) from None


def _reason(reason: Any) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "it did not answer in time"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or reason.__class__.__name__


def _json_body(status: int, raw: bytes, url: str) -> dict[str, Any]:
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        payload = None
    if not isinstance(payload, dict):
        # A proxy's error page, or not a grader at all: show a little of it, printable only.
        snippet = "".join(ch for ch in raw[:120].decode("utf-8", "replace") if ch.isprintable()).strip()
        what = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        raise ClientFailure(f"{url} did not answer like a grader API ({what})", EXIT_USAGE)
    return payload


def encode_multipart(fields: dict[str, str], file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578) and its Content-Type."""
    boundary = "grader-" + secrets.token_hex(16)
    # Quotes and line breaks cannot appear inside a quoted header parameter.
    safe_name = "".join(ch for ch in filename if ch.isprintable()).replace('"', "%22").replace("\\", "%5C")
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode("utf-8")
        )
    chunks.append(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{safe_name}"\r\n'
            "Content-Type: text/x-python\r\n\r\n"
        ).encode("utf-8")
    )
    chunks.append(data)
    chunks.append(f"\r\n--{boundary}--\r\n".encode("utf-8"))
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def wait_for_grade(
    api: ApiClient, submission_id: int, limit: float, progress: Any = None, sleep: Any = time.sleep
) -> dict[str, Any]:
    """Poll until the submission is graded (or could not be graded); ClientFailure when
    `limit` seconds pass first."""
    deadline = time.monotonic() + limit
    delay = POLL_FIRST
    last = None
    while True:
        info = api.submission(submission_id)
        status = info.get("status")
        if status != last and progress is not None:
            progress(f"submission {submission_id}: {status}")
        last = status
        if status in ("graded", "error"):
            return info
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            page = f"; follow it at {info['html_url']}" if info.get("html_url") else ""
            raise ClientFailure(
                f"submission {submission_id} is still {status} after {limit:g} s (it will still be graded){page}",
                EXIT_USAGE,
            )
        sleep(min(delay, remaining))
        delay = min(delay * 1.5, POLL_MAX)


def describe_outcome(info: dict[str, Any]) -> str:
    """The readable grade: the core's own report, then what the late policy made of it."""
    from grader.cli import format_result

    text = format_result(info["result"]) if info.get("result") else ""
    score, final, max_score = info.get("score"), info.get("final_score"), info.get("max_score")
    days = info.get("days_late") or 0
    if days and final is not None and score is not None:
        text += (
            f"\nSubmitted {days} day{'s' if days != 1 else ''} late: "
            f"{score:g} / {max_score:g} counts as {final:g} / {max_score:g} after the late policy.\n"
        )
    if info.get("html_url"):
        text += f"\nOn the web: {info['html_url']}\n"
    return text


@click.command("submit")
@click.argument("assignment")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--course", help="The course code, when you take several courses with this assignment.")
@click.option("--url", envvar="GRADER_URL", show_envvar=True, help="The grader service's address.")
@click.option(
    "--token",
    envvar="GRADER_TOKEN",
    show_envvar=True,
    help="Your API token (prefer the environment variable: a command line is visible to other users).",
)
@click.option("--wait", is_flag=True, help="Wait for the grade and print it.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer instead of text.")
@click.option(
    "--download", "download_to", type=click.Path(file_okay=False, path_type=Path),
    help="With --wait: save each function's failing visible trials (inputs and a script to rerun them) in this folder.",
)
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
    help="Seconds to wait for each answer from the service.",
)
@click.option(
    "--wait-timeout", type=click.FloatRange(min=1), default=DEFAULT_WAIT, show_default=True,
    help="With --wait: seconds to wait for the grade before giving up.",
)
def submit(
    assignment: str,
    file: Path,
    course: Optional[str],
    url: Optional[str],
    token: Optional[str],
    wait: bool,
    as_json: bool,
    download_to: Optional[Path],
    timeout: float,
    wait_timeout: float,
) -> None:
    """Submit FILE for ASSIGNMENT to a grader service; --wait prints the grade.

    ASSIGNMENT is the assignment's id as the course lists it (vjp, gates, ...). The service
    address and your API token come from GRADER_URL and GRADER_TOKEN (or --url, --token).

    \b
    Exit status: 0 submitted (and, with --wait, graded), 1 the service refused the
    submission or could not grade it, 2 a usage or connection problem (also when --wait
    gives up before the grade is ready), 130 interrupted."""
    try:
        if download_to is not None and not wait:
            raise ClientFailure("--download needs --wait: the trials exist only once the submission is graded", EXIT_USAGE)
        _submit(assignment, file, course, url, token, wait, as_json, timeout, wait_timeout, download_to)
    except ClientFailure as exc:
        _die(exc.message, exc.code)


def _submit(
    assignment: str,
    file: Path,
    course: Optional[str],
    url: Optional[str],
    token: Optional[str],
    wait: bool,
    as_json: bool,
    timeout: float,
    wait_timeout: float,
    download_to: Optional[Path] = None,
) -> None:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ClientFailure(f"cannot read {file}: {exc.strerror or exc}", EXIT_USAGE) from None
    if not url:
        raise ClientFailure("no service address: set GRADER_URL (or pass --url), e.g. https://grader.example.edu", EXIT_USAGE)
    api = ApiClient.for_url(url, token or "", timeout)
    if api.insecure:
        click.echo(f"warning: {api.base} is plain HTTP; your token crosses the network unencrypted. Use https.", err=True)

    created = api.submit(assignment.strip(), file.name, data, course.strip() if course else None)
    if not isinstance(created.get("id"), int):
        raise ClientFailure(f"{api.base} accepted the file but gave no submission id: is it a grader?", EXIT_USAGE)
    submission_id = created["id"]
    if not wait:
        if as_json:
            click.echo(json.dumps(created, indent=2))
        else:
            click.echo(f"Submitted {file.name} for {assignment}: submission {submission_id}, {created.get('status', 'queued')}.")
            if created.get("html_url"):
                click.echo(f"Follow it at {created['html_url']}")
        return

    if not as_json:
        click.echo(f"Submitted {file.name} for {assignment}: submission {submission_id}. Waiting for the grade...", err=True)
    try:
        info = wait_for_grade(api, submission_id, wait_timeout, progress=None if as_json else lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:
        _die(f"stopped waiting; submission {submission_id} will still be graded", EXIT_INTERRUPTED)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        if info.get("status") == "graded":
            click.echo(describe_outcome(info), nl=False)
    if download_to is not None and info.get("status") == "graded":
        save_downloads(api, info, download_to)
    if info.get("status") != "graded":
        raise ClientFailure(f"submission {submission_id} could not be graded: {info.get('error') or 'no reason given'}", EXIT_API)


def save_downloads(api: ApiClient, info: dict[str, Any], folder: Path) -> list[Path]:
    """Save each function's zip of failing visible trials in `folder`; says what it saved."""
    downloads = info.get("downloads")
    if not isinstance(downloads, dict) or not downloads:
        click.echo("No failing visible trials to download.", err=True)
        return []
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClientFailure(f"cannot create {folder}: {exc.strerror or exc}", EXIT_USAGE) from None
    saved = []
    for function, links in sorted(downloads.items()):
        link = links.get("all") if isinstance(links, dict) else None
        if not isinstance(link, str) or not re.fullmatch(FUNCTION_NAME, str(function)):
            raise ClientFailure(f"the service's downloads for {str(function)[:40]!r} are malformed", EXIT_API)
        target = folder / f"{info.get('id')}-{function}-failing-trials.zip"
        try:
            target.write_bytes(api.download(link))
        except OSError as exc:
            raise ClientFailure(f"cannot write {target}: {exc.strerror or exc}", EXIT_USAGE) from None
        click.echo(f"Saved {target}: unzip it and run the script inside next to your file.", err=True)
        saved.append(target)
    return saved


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"grader: {message}", err=True)
    sys.exit(code)
