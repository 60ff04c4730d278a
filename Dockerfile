# The grader's production image: one image for every role (web, worker, migrations),
# chosen by the command. Build: docker compose build (see README "Deploying with Docker Compose").
FROM python:3.11-slim-bookworm

# bubblewrap: the sandbox for student code; grading refuses to run without it (fail closed).
# Debian's bwrap is not setuid: it needs user namespaces, which the worker's container
# must allow (docker-compose.yml, service "worker").
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The dependencies, exactly as pinned in pyproject.toml, in their own layer: a code change
# does not reinstall them. NumPy lives in this venv; the sandbox binds that one folder
# (and numpy.libs) read-only into its mount namespace, next to /usr and the interpreter
# (/usr/local here), and hides the interpreter's own site-packages.
RUN python -m venv /opt/venv
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/pyproject.toml /tmp/requirements.txt

# The app itself. Installed in place (editable, no further dependencies) because it finds
# its Alembic migrations/ and built-in assignments/ next to the package, in /app.
WORKDIR /app
COPY . /app
RUN pip install --no-deps -e /app \
    && python -c "import grader.store.migrate as m; assert m.MIGRATIONS.is_dir(), m.MIGRATIONS"

# An unprivileged user: the sandbox runs student code as uid 65534 inside its own user
# namespace, and the services never need root. Its home holds nothing secret.
RUN groupadd --system --gid 10001 grader \
    && useradd --system --uid 10001 --gid grader --home-dir /var/lib/grader --create-home --shell /usr/sbin/nologin grader \
    && mkdir -p /var/lib/grader/instance \
    && chown -R grader:grader /var/lib/grader
ENV GRADER_INSTANCE=/var/lib/grader/instance \
    GRADER_ASSIGNMENTS_DIR=/app/assignments
USER 10001:10001

EXPOSE 8000
# No image-wide HEALTHCHECK: the same image runs the web app, the workers and one-shot
# migrations, so each service declares its own in docker-compose.yml (web: GET /login).
ENTRYPOINT ["grader"]
CMD ["--help"]
