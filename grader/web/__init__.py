"""The web app: a thin shell around the database (pages for students, TAs and instructors,
and a JSON API). Grading happens in the workers; this only stores rows and enqueues ids."""

from __future__ import annotations

import hmac
import logging
from typing import Any, Optional

from flask import Flask, Response, abort, jsonify, render_template, request
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from grader import __version__, logs
from grader.config import Settings
from grader.store.models import User
from grader.web import database, filters
from grader.web.extensions import csrf, limiter, login_manager
from grader.web.queue import CeleryEnqueuer, Enqueuer

log = logging.getLogger("grader.web")

# Room for a spec folder zip (4 MiB inflated at most) plus multipart overhead; a student's
# file is held to its own, smaller limit by the submission forms and the API.
MAX_REQUEST_BYTES = 6 << 20

NUL_EXPLAINED = frozenset({"code"})
# Retry-After (seconds) on a 503 while the database is unreachable: about one restart.
DATABASE_RETRY_SECONDS = 30

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class IdConverter(IntegerConverter):
    """`<int:id>` limited to what an id column holds: a larger number is a 404, not an
    overflow inside the database driver."""

    def __init__(self, url_map: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min", 0)
        kwargs.setdefault("max", 2**31 - 1)
        super().__init__(url_map, **kwargs)


def create_app(settings: Optional[Settings] = None, enqueue: Optional[Enqueuer] = None) -> Flask:
    settings = settings or Settings.from_env()
    # Under gunicorn nothing else sets up logging; `grader web` has done it already.
    logs.configure_if_unset(settings.log_format, "web")
    app = Flask(__name__, instance_path=str(settings.instance_path))
    app.url_map.converters["int"] = IdConverter
    if settings.proxy_hops:
        # Behind a TLS proxy the socket address is the proxy's: rate limits and logs need the
        # client's, from X-Forwarded-For as set by exactly this many trusted proxies.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops)  # type: ignore[method-assign]
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        # Werkzeug holds a non-file form field to 500 kB by default, below the 1 MiB a
        # student may paste; the request cap still bounds every request.
        MAX_FORM_MEMORY_SIZE=MAX_REQUEST_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.production,
        REMEMBER_COOKIE_SECURE=settings.production,
        REMEMBER_COOKIE_HTTPONLY=True,
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session instead: a form left open all day still works
        RATELIMIT_STORAGE_URI=settings.ratelimit_storage_uri,
        RATELIMIT_HEADERS_ENABLED=True,
        TESTING=settings.env == "testing",
    )
    app.extensions["grader.settings"] = settings
    app.extensions["grader.enqueue"] = enqueue or CeleryEnqueuer(settings)

    database.init_app(app, settings.database_url)
    login_manager.init_app(app)
    csrf.init_app(app)
    limiter.init_app(app)
    filters.init_app(app)

    from grader.web import api, auth, gradebook, instructor, ops, student

    app.register_blueprint(auth.bp)
    app.register_blueprint(student.bp)
    app.register_blueprint(gradebook.bp)
    app.register_blueprint(instructor.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    csrf.exempt(api.bp)  # token-authenticated, never cookie-authenticated

    @app.before_request
    def _no_nul() -> None:
        # No text column can hold NUL (PostgreSQL refuses it outright): refuse it at the door
        # rather than fail deep inside a query. Uploaded files are bytes and may hold it.
        # The paste form explains this itself, next to the code.
        fields = [(k, v) for k, v in request.values.items(multi=True) if k not in NUL_EXPLAINED]
        if "\x00" in request.path or any("\x00" in k or "\x00" in v for k, v in fields):
            abort(400, "The request holds a NUL character.")

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if settings.production:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        if request.path.startswith("/api/"):
            return jsonify(error=exc.name, detail=_detail(exc)), exc.code or 500
        return render_template("error.html", error=exc, detail=_detail(exc)), exc.code or 500

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_unreachable(exc: DBAPIError) -> Any:
        # The database is restarting or unreachable: the request did not complete and the
        # client should try again, so a 503, not a 500. Only the driver error's class is
        # logged: its text holds the SQL's parameters, which can be a student's file. The page
        # is rendered without the context processors and stands alone: both would ask for
        # the current user, which needs the database.
        log.error("the database is unreachable (%s) on %s %s", type(exc.orig or exc).__name__, request.method, request.path)
        detail = "The database is not reachable right now, so your request was not completed. Try again in a minute."
        headers = {"Retry-After": str(DATABASE_RETRY_SECONDS)}
        if request.path.startswith("/api/"):
            return jsonify(error="Service Unavailable", detail=detail), 503, headers
        return app.jinja_env.get_template("unavailable.html").render(detail=detail), 503, headers

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"grader_version": __version__, "settings": settings}

    return app


def _detail(exc: HTTPException) -> str:
    if exc.code == 413:
        return f"The upload is too large (the limit is {MAX_REQUEST_BYTES >> 20} MiB per request)."
    if exc.code == 429:
        return "Too many requests; wait a minute and try again."
    if exc.code == 404:
        return "There is nothing here, or you do not have access to it."
    return exc.description or ""


@login_manager.user_loader
def _load_user(session_id: str) -> Optional[User]:
    """The session's user, unless the account was deactivated or its password changed
    since the session began (User.get_id carries a stamp of the password)."""
    user_id, _, stamp = session_id.partition(".")
    if not user_id.isdigit() or len(user_id) > 18:
        return None
    found = database.db().get(User, int(user_id))
    if found is None or not found.active or not hmac.compare_digest(stamp, found.session_stamp):
        return None
    return found
