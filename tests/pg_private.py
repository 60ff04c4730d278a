"""A private PostgreSQL cluster in a temporary folder, for tests that crash and restart the
database server. The machine's own PostgreSQL is shared by every test run on it and must
never be restarted, so a fault test gets a throw-away cluster of its own: `initdb` into a
temp dir, a free localhost port, the unix socket in the same dir, trust auth, no fsync
(a crash here is a process crash, `pg_ctl stop -m immediate`, not a power cut: the WAL
written at each commit survives it in the page cache, so durability is still tested).

initdb refuses to run as root, so as root the cluster belongs to the `postgres` user and
every binary runs through `runuser -u postgres --`; as anyone else they run directly."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from grader.up import free_port

PG_BIN_DIRS = [Path(p) for p in os.environ.get("GRADER_PG_BIN", "").split(os.pathsep) if p] + sorted(
    Path("/usr/lib/postgresql").glob("*/bin"), reverse=True
)
START_SECONDS = 30.0


class PrivatePostgresUnavailable(RuntimeError):
    """This machine cannot run a private cluster; the message says what is missing."""


def pg_bin_dir() -> Path:
    """The folder with initdb and pg_ctl (GRADER_PG_BIN, else the newest under
    /usr/lib/postgresql). Raises PrivatePostgresUnavailable when there is none."""
    for folder in PG_BIN_DIRS:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    raise PrivatePostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl): install the postgresql package "
        "or set GRADER_PG_BIN to the folder that holds them"
    )


def _run_as() -> list[str]:
    """The command prefix that runs a PostgreSQL binary as a user allowed to (not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PrivatePostgresUnavailable("running as root and there is no 'postgres' user to own the cluster") from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PrivatePostgresUnavailable("running as root and there is no runuser to run initdb as 'postgres'")
    return [runuser, "-u", "postgres", "--"]


@dataclass
class PrivatePostgres:
    """One cluster: `start()`, `crash()` (immediate stop, no checkpoint), `start()` again on
    the same port, `destroy()` at the end. `url` is a database named `grader` on it."""

    root: Path
    port: int
    bin_dir: Path
    prefix: list[str]
    # The address the server listens on (and clients use): loopback unless a test puts it
    # on a network of its own (tests/test_worker_hosts.py).
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/grader"

    @classmethod
    def create(cls, parent: Optional[Path] = None, host: str = "127.0.0.1") -> "PrivatePostgres":
        """initdb a new cluster (not started) that will listen on `host`. Raises
        PrivatePostgresUnavailable."""
        bin_dir = pg_bin_dir()
        prefix = _run_as()
        # A folder of its own under /tmp: the server user must reach it, which a root-owned
        # pytest tmp_path (mode 0700) does not allow.
        root = Path(tempfile.mkdtemp(prefix="grader-pg-", dir=parent))
        if prefix:
            os.chmod(root, 0o700)
            shutil.chown(root, "postgres", "postgres")
        cluster = cls(root=root, port=free_port(host), bin_dir=bin_dir, prefix=prefix, host=host)
        try:
            cluster._run(
                "initdb", "-D", str(cluster.data_dir), "-A", "trust", "-U", "postgres",
                "--no-sync", "-E", "UTF8", "--locale=C",
            )
        except PrivatePostgresUnavailable:
            cluster.destroy()
            raise
        return cluster

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> str:
        command = [*self.prefix, str(self.bin_dir / tool), *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PrivatePostgresUnavailable(f"{tool} could not run: {exc}") from None
        if done.returncode != 0:
            raise PrivatePostgresUnavailable(f"{tool} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
        return done.stdout

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it takes connections."""
        options = (
            f"-c listen_addresses={self.host} -c port={self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=100 -c shared_buffers=16MB"
        )
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options, "-w", "-t", str(int(START_SECONDS)))
        self.wait_ready()

    def wait_ready(self, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)], capture_output=True
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PrivatePostgresUnavailable(f"the private server did not come up:\n{self.log_tail()}")
            time.sleep(0.1)

    def crash(self) -> None:
        """Stop like a crash: every backend killed at once, no shutdown checkpoint; the next
        start runs crash recovery from the WAL."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "30")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def create_database(self, name: str = "grader") -> None:
        self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", name)

    def allow_network(self, network: str, password: str) -> None:
        """Let clients from `network` (CIDR) in as user postgres with `password`, as a server
        reached over a network is (initdb's trust covers loopback only). The server must be
        running; the password is set through its unix socket, then the rules reloaded."""
        escaped = password.replace("'", "''")
        self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                  "-v", "ON_ERROR_STOP=1", "-c", f"ALTER USER postgres PASSWORD '{escaped}'")
        with open(self.data_dir / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {network} scram-sha-256\n")
        self._run("pg_ctl", "reload", "-D", str(self.data_dir))

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def destroy(self) -> None:
        """Stop the server if it runs and remove the cluster's folder."""
        if self.running():
            try:
                self.crash()
            except PrivatePostgresUnavailable:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
