"""Workers on separate hosts, for real: a tiny network built from Linux network namespaces.

The test process's own namespace is the main host: a private PostgreSQL cluster and a
private redis-server listen only on a bridge address of their own (10.77.N.1, never
loopback, never the machine's own servers), with passwords, as the README's "Adding worker
hosts" says to publish them. Each worker host is a network namespace (10.77.N.2, .3, ...)
behind a veth on that bridge, with a hostname of its own (a UTS namespace), running a real
`grader worker` whose DATABASE_URL and BROKER_URL point at the main host. The rows'
`claimed_by` (`hostname:pid`) says which host graded what.

Then one host vanishes mid-burst: its link goes down, its worker is SIGKILLed, its
namespace deleted. The other host, which runs the sweeper, finishes everything: the
submission the dead host was grading comes back when its lease expires, the ones it had
taken from the queue come back as queued too long, and each is graded exactly once. (The
compose deployment keeps its one sweeper on the main host; here the surviving worker host
runs it, so that after the vanishing only that host grades, which the test checks.)

Needs root, iproute2 (`ip netns`), unshare, redis-server and the PostgreSQL server
binaries; skipped, saying which is missing, otherwise. Everything it creates (namespaces,
the bridge, veths, processes, the cluster) is removed at the end, whatever happened."""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pytest
import redis
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from grader.config import Settings
from grader.store import migrate
from grader.store.db import make_engine, make_sessionmaker, utcnow
from grader.store.demo import seed_demo
from grader.store.models import Submission
from grader.up import free_port
from grader.web.queue import CeleryEnqueuer
from service_fixtures import PASSWORDS
from service_fixtures import test_settings as settings_for  # (not collected as a test)
from service_procs import Proc, worker_env
from test_integration import VJP_RIGHT, VJP_SLOW, VJP_WRONG, submit, wait_done

pytestmark = pytest.mark.slow

FIRST_BURST = 60
SECOND_BURST = 30
TIMEOUT = 180.0
# Short recovery times: a lease of 10 s (Celery's limits sit below it), sweeps every second.
# A queued row is re-sent after 10 s rather than FAST_RECOVERY's 2 s: two hosts work
# through a burst of 60 for longer than that, and each re-send would only add a duplicate
# message for the claim to refuse.
RECOVERY = {"GRADER_LEASE_SECONDS": "10", "GRADER_SWEEP_SECONDS": "1", "GRADER_STUCK_SECONDS": "10"}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def missing_requirement() -> Optional[str]:
    """Why this machine cannot build the network, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux"), ("redis-server", "redis-server")):
        if shutil.which(tool) is None:
            return f"no {tool} (install {package})"
    from pg_private import PrivatePostgresUnavailable, pg_bin_dir

    try:
        pg_bin_dir()
    except PrivatePostgresUnavailable as exc:
        return str(exc)
    probe = f"grader-probe-{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def free_subnet() -> ipaddress.IPv4Network:
    """A 10.77.N.0/24 that no address or route on this machine overlaps."""
    taken = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines() + _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        for word in line.replace("/", " /").split():
            try:
                taken.append(ipaddress.IPv4Address(word))
            except ValueError:
                pass
    # From a random start: two test runs on one machine at once rarely try the same one.
    for n in random.sample(range(256), 256):
        net = ipaddress.IPv4Network(f"10.77.{n}.0/24")
        if not any(addr in net for addr in taken):
            return net
    pytest.skip("every 10.77.N.0/24 is in use on this machine")


# --- the network --------------------------------------------------------------------------


@dataclass
class Host:
    name: str  # its hostname, which claimed_by shows
    netns: str
    address: str
    veth: str  # the main host's end of its link

    def wrapper(self) -> list[str]:
        """Run a command on this host: its network namespace, its own hostname (UTS
        namespace). Every step execs, so the command keeps the pid Popen gave it."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.name]


@dataclass
class Network:
    subnet: ipaddress.IPv4Network
    tag: str
    bridge: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def main_address(self) -> str:
        return str(self.subnet.network_address + 1)

    def add_host(self, name: str) -> Host:
        index = len(self.hosts)
        host = Host(
            name=name,
            netns=f"grader-{self.tag}-{name}",
            address=str(self.subnet.network_address + 2 + index),
            veth=f"gw{self.tag}h{index}",
        )
        self.hosts.append(host)  # before creating anything, so the teardown finds it
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def vanish(self, host: Host, worker: Proc) -> None:
        """The host drops off the network, then dies: no goodbye reaches the main host."""
        _ip("link", "set", host.veth, "down")
        worker.kill()
        _ip("netns", "del", host.netns)  # the veth pair goes with it

    def teardown(self) -> None:
        for host in self.hosts:
            if _ip("netns", "pids", host.netns, check=False).returncode == 0:
                _ip("netns", "del", host.netns, check=False)
            _ip("link", "del", host.veth, check=False)
        _ip("link", "del", self.bridge, check=False)


@pytest.fixture
def network() -> Iterator[Network]:
    why = missing_requirement()
    if why:
        pytest.skip(why)
    tag = secrets.token_hex(2)
    net = Network(subnet=free_subnet(), tag=tag, bridge=f"gw{tag}br")
    try:
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("addr", "add", f"{net.main_address}/{net.subnet.prefixlen}", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        yield net
    finally:
        net.teardown()


# --- the main host's servers --------------------------------------------------------------


@dataclass
class MainHost:
    database_url: str
    broker_url: str
    sessions: sessionmaker[Session]


@pytest.fixture
def main_host(network: Network, tmp_path: Path) -> Iterator[MainHost]:
    """PostgreSQL and Redis on the bridge address only, each with a password."""
    from pg_private import PrivatePostgres

    address = network.main_address
    password = secrets.token_hex(16)
    cluster = PrivatePostgres.create(host=address)
    redis_proc: Optional[subprocess.Popen[bytes]] = None
    engine = None
    try:
        cluster.start()
        cluster.create_database("grader")
        cluster.allow_network(str(network.subnet), password)
        database_url = f"postgresql://postgres:{password}@{address}:{cluster.port}/grader"
        admin = make_engine(database_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            # A vanished host's connection is never closed (its FIN is never sent): a
            # transaction it left open would hold its row locks until TCP gave up.
            conn.execute(text("ALTER DATABASE grader SET idle_in_transaction_session_timeout = '5s'"))
        admin.dispose()
        migrate.upgrade(database_url)
        engine = make_engine(database_url)
        sessions = make_sessionmaker(engine)
        with sessions() as s:
            seed_demo(s, passwords=PASSWORDS)
            s.commit()

        redis_dir = tmp_path / "redis"
        redis_dir.mkdir(mode=0o700)
        redis_port = free_port(address)
        (redis_dir / "redis.conf").write_text(
            "\n".join([
                f"bind {address}", f"port {redis_port}", f'requirepass "{password}"', 'save ""',
                "appendonly no", f'dir "{redis_dir}"', f'logfile "{redis_dir / "redis.log"}"', "daemonize no", "",
            ])
        )
        redis_proc = subprocess.Popen(
            ["redis-server", str(redis_dir / "redis.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        broker_url = f"redis://:{password}@{address}:{redis_port}/0"
        client = redis.Redis.from_url(broker_url, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or redis_proc.poll() is not None:
                    pytest.fail(f"the private redis-server did not start on {address}:{redis_port}")
                time.sleep(0.05)
        client.close()
        yield MainHost(database_url, broker_url, sessions)
    finally:
        if engine is not None:
            engine.dispose()
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait(timeout=10)
        cluster.destroy()


def reaches(host: Host, address: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=3).close()"
    return subprocess.run(["ip", "netns", "exec", host.netns, sys.executable, "-c", probe], capture_output=True, timeout=30).returncode == 0


def start_host_worker(host: Host, settings: Settings, tmp_path: Path, beat: bool = False) -> Proc:
    env = worker_env(settings, **RECOVERY)
    env["GRADER_INSTANCE"] = str(tmp_path / f"instance-{host.name}")  # each host its own folder
    args = ["worker", "--concurrency=1"] + (["--beat"] if beat else [])
    return Proc(args, env, tmp_path / f"worker-{host.name}.log", wrapper=host.wrapper())


def by_host(rows: dict[int, Submission]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows.values():
        name = (row.claimed_by or "?").rsplit(":", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def assert_graded_once(rows: dict[int, Submission], right: set[int]) -> None:
    for sid, row in rows.items():
        assert (row.status, row.grade_count, row.lease_token) == ("graded", 1, None), (sid, row.status, row.error)
        if sid in right:
            assert row.score == row.max_score == 8.0, (sid, row.score)
        else:
            assert row.score is not None and row.score < 8.0, (sid, row.score)


def test_workers_on_two_hosts_share_the_queue_and_survive_one_host_vanishing(network, main_host, tmp_path):
    settings = settings_for(main_host.database_url, tmp_path, broker_url=main_host.broker_url)
    sessions = main_host.sessions
    a, b = network.add_host("host-a"), network.add_host("host-b")
    ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in (main_host.database_url, main_host.broker_url)]
    for port in ports:
        for host in (a, b):
            assert reaches(host, network.main_address, port), (host.name, port)
        # Only on the private network: not on the main host's loopback either.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=3).close()

    workers: list[Proc] = []
    try:
        worker_a = start_host_worker(a, settings, tmp_path)
        workers.append(worker_a)
        worker_b = start_host_worker(b, settings, tmp_path, beat=True)  # the deployment's one sweeper
        workers.append(worker_b)
        for worker in workers:
            worker.wait_for(r"ready\.")
        assert "with the sweeper" in worker_b.text() and "with the sweeper" not in worker_a.text()
        enqueue = CeleryEnqueuer(settings)

        # A burst, shared by both hosts.
        right: set[int] = set()
        first = []
        for i in range(FIRST_BURST):
            sid = submit(sessions, VJP_WRONG if i % 3 == 2 else VJP_RIGHT)
            first.append(sid)
            if i % 3 != 2:
                right.add(sid)
        enqueue(first)
        rows = wait_done(sessions, first, *workers, timeout=TIMEOUT)
        assert len(rows) == FIRST_BURST  # none lost
        assert_graded_once(rows, right)
        counts = by_host(rows)
        assert set(counts) == {"host-a", "host-b"}, counts  # both hosts graded some, and only they
        assert all(n > 0 for n in counts.values()), counts

        # A second burst, with slow submissions among the fast (first, so that each idle
        # host starts on one); host-a vanishes while it grades one of them.
        second, slow = [], []
        for i in range(SECOND_BURST):
            is_slow = i < 4 or i % 4 == 0
            sid = submit(sessions, VJP_SLOW if is_slow else VJP_RIGHT)
            second.append(sid)
            right.add(sid)
            if is_slow:
                slow.append(sid)
        enqueue(second)
        held = wait_held_by(sessions, slow, "host-a", workers)
        network.vanish(a, worker_a)
        vanished_at = utcnow()
        with sessions() as s:
            still = s.get(Submission, held)
            assert still is not None and (still.status, still.grade_count) == ("running", 0), "graded before the host vanished"

        rows = wait_done(sessions, second, *workers, timeout=TIMEOUT)
        assert len(rows) == SECOND_BURST
        assert_graded_once(rows, right)
        # What host-a had not finished, host-b did, the held one on a second attempt.
        assert rows[held].claimed_by.startswith("host-b:") and rows[held].attempts >= 2, rows[held].claimed_by  # type: ignore[union-attr]
        for sid, row in rows.items():
            if row.claimed_by.startswith("host-a:"):  # type: ignore[union-attr]
                assert row.graded_at is not None and row.graded_at <= vanished_at, sid
        assert "lease-expired" in worker_b.text()
        assert worker_b.proc.poll() is None
    finally:
        for worker in workers:
            worker.stop(timeout=5)


def wait_held_by(sessions: sessionmaker[Session], ids: list[int], host: str, workers: list[Proc]) -> int:
    """A slow submission in `ids` that `host` is grading now (with time left to grade)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with sessions() as s:
            found = s.scalars(
                select(Submission.id).where(
                    Submission.id.in_(ids), Submission.status == "running", Submission.claimed_by.startswith(f"{host}:")
                )
            ).first()
        if found is not None:
            time.sleep(0.5)  # into its ~4 s of grading
            return found
        time.sleep(0.05)
    logs = "\n".join(f"--- {p.log_path.name}:\n{p.text()[-2500:]}" for p in workers)
    pytest.fail(f"{host} never started a slow submission\n{logs}")
