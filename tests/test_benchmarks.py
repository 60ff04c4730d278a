"""The service benchmarks (benchmarks/deadline_burst.py, steady_load.py, stack.py): their
parts, and a tiny burst end to end against the machine's real PostgreSQL and Redis, with the
report's invariants (every submission graded, none lost, none scored twice, figures present)
and a clean teardown (no process, database or queue key left behind)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import deadline_burst, sandbox_overhead, steady_load  # noqa: E402
from benchmarks import cpu  # noqa: E402
from benchmarks.cpu import Snapshot, cpu_by_component  # noqa: E402
from benchmarks.common import DEFAULT_MIX, corpus, parse_mix, percentile, plan  # noqa: E402
from benchmarks.stack import PG_SERVER, REDIS_URL, Stack  # noqa: E402
from grader.config import ConfigError, Settings  # noqa: E402
from grader.sandbox import probe_host  # noqa: E402
from grader.store.db import make_engine  # noqa: E402

# --- parts ------------------------------------------------------------------------------


def test_submit_rate_is_configurable_and_checked() -> None:
    base = {"GRADER_ENV": "testing", "SECRET_KEY": "k" * 40}
    assert Settings.from_env(base).submit_rate == "20 per minute"
    assert Settings.from_env(base | {"GRADER_SUBMIT_RATE": "5000 per minute"}).submit_rate == "5000 per minute"
    with pytest.raises(ConfigError, match="GRADER_SUBMIT_RATE='lots'"):
        Settings.from_env(base | {"GRADER_SUBMIT_RATE": "lots"})


def test_the_plan_has_the_mix_and_every_file() -> None:
    items = plan(2000, DEFAULT_MIX, seed=3)
    assert Counter(i.kind for i in items) == {"right": 1100, "wrong": 600, "crashing": 200, "hostile": 100}
    assert {i.assignment for i in items} == {"gates", "vjp", "mlp", "bp4"}
    files = corpus()
    assert {(i.kind, i.assignment, i.name) for i in items} == {
        (kind, aid, f.name) for (kind, aid), fs in files.items() for f in fs
    }
    assert plan(2000, DEFAULT_MIX, seed=3) == items  # reproducible
    # Rounding never loses a submission, and the baseline's plan has no fork bomb.
    assert len(plan(13, DEFAULT_MIX)) == 13
    safe = plan(400, DEFAULT_MIX, fork_bomb=False)
    assert not [i for i in safe if "fork" in i.name] and any("fork" in i.name for i in plan(400, DEFAULT_MIX))


def test_the_generated_files_do_what_they_say() -> None:
    files = corpus()
    loop = next(f for f in files[("hostile", "gates")] if f.name == "infinite_loop_in_function")
    raising = next(f for f in files[("crashing", "vjp")] if f.name == "raises_in_function")
    assert b"def add_backward(dout, x, y):\n    while True:\n        pass\n" in loop.data
    assert b"def relu_backward(dout, x):\n    raise ValueError" in raising.data
    compile(loop.data, "loop.py", "exec")
    with pytest.raises(SyntaxError):
        compile(next(f for f in files[("crashing", "mlp")] if f.name == "syntax_error.py").data, "s.py", "exec")


def test_mix_and_percentiles() -> None:
    assert parse_mix("right=3,wrong=1") == {"right": 0.75, "wrong": 0.25, "crashing": 0.0, "hostile": 0.0}
    for bad in ("fast=1", "right=x", "right=0", "right=-1,wrong=2"):
        with pytest.raises(ValueError, match="--mix"):
            parse_mix(bad)
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0], 100) == 2.0 and math.isnan(percentile([], 95))


def test_cpu_is_counted_by_component_including_reaped_children() -> None:
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    before = Snapshot.take()
    # A live process named like the web server, and a child this process has reaped.
    web = subprocess.Popen([sys.executable, "-c", burn + "import sys; sys.stdin.read()", "gunicorn-lookalike"],
                           stdin=subprocess.PIPE)
    subprocess.run([sys.executable, "-c", burn], check=True)
    try:
        deadline = time.monotonic() + 30
        while Snapshot.take().procs[web.pid].own / cpu.TICK < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu_s = cpu_by_component(before, Snapshot.take())
    finally:
        web.communicate(b"")
    assert cpu_s["web"] >= 0.25
    assert cpu_s["load generator"] >= 0.25  # the reaped child's CPU reaches this process
    assert cpu_s["total"] >= cpu_s["web"] + cpu_s["load generator"] - 0.05


def test_the_queue_chart_is_valid_svg() -> None:
    samples = [steady_load.Sample(t=i * 0.5, queued=i % 4, running=min(i, 2), final=i, sent=i) for i in range(20)]
    svg = steady_load.chart_svg(samples, "Queue depth <test> & more", load_ends=6.0)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 2 and len(lines[0].get("points", "").split()) == 20
    assert root.find(f"{ns}title").text == "Queue depth <test> & more"  # type: ignore[union-attr]


def test_the_stack_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL"):
        Stack(env={"DATABASE_URL": "sqlite://"})
    with pytest.raises(ValueError, match="runner"):
        Stack(runner="docker")


# --- end to end -----------------------------------------------------------------------------


def _leftovers(tag: str) -> dict[str, list[str]]:
    """Databases, Redis keys and processes of stacks this test process made (tag: its pid)."""
    admin = make_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        dbs = [r[0] for r in conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": f"bench_{tag}_%"})]
    admin.dispose()
    client = redis.Redis.from_url(REDIS_URL)
    keys = [k.decode() for k in client.scan_iter(match=f"*bench-{tag}_*")]
    client.close()
    procs = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if f"GRADER_QUEUE=bench-{tag}_".encode() in (entry / "environ").read_bytes():
                    procs.append(entry.name)
            except OSError:
                pass
    return {"databases": dbs, "redis keys": keys, "processes": procs}


@pytest.mark.slow
@pytest.mark.skipif(
    bool(probe_host().missing(("bwrap", "userns", "landlock", "seccomp"))), reason="the sandbox's layers are not available on this host"
)
def test_the_sandbox_benchmark_interleaves_its_rounds(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Each round runs a share of every kind, so a machine that slows down mid-run slows
    # them all alike; the shares add up to the runs asked for.
    assert [sandbox_overhead.share(7, 3, i) for i in range(3)] == [2, 2, 3]
    assert sum(sandbox_overhead.share(150, 5, i) for i in range(5)) == 150
    order: list[int] = []
    real_timed = sandbox_overhead.timed

    def timed(fn, runs: int, gap: float = 0.0) -> list[float]:  # type: ignore[no-untyped-def]
        order.append(fn.__code__.co_firstlineno)  # which kind: each has its own lambda
        return real_timed(fn, runs, gap)

    monkeypatch.setattr(sandbox_overhead, "timed", timed)
    monkeypatch.setattr(sys, "argv", ["bench-sandbox", "--runs", "4", "--rounds", "2", "--assignment", "gates"])
    sandbox_overhead.main()
    printed = capsys.readouterr().out
    assert "median of 4 runs (fresh: 5) in 2 interleaved rounds" in printed
    (row,) = [line.split() for line in printed.splitlines() if line.startswith("gates ")]
    assert len(row) == 12 and row[8].endswith("x") and row[9].endswith("x")
    # in-process, back to back, paced, fresh; then again: never one kind all at once
    assert len(order) == 8 and order[:4] == order[4:] and len(set(order)) == 4
    monkeypatch.setattr(sys, "argv", ["bench-sandbox", "--runs", "2", "--rounds", "3"])
    with pytest.raises(SystemExit):
        sandbox_overhead.main()


@pytest.mark.slow
def test_a_tiny_burst_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "burst.json"
    code = deadline_burst.main(
        ["--n", "12", "--workers", "1", "--clients", "4", "--students", "4",
         "--mix", "right=6,wrong=3,crashing=3", "--stall-timeout", "60", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    figures = json.loads(out.read_text())
    assert figures["submitted"] == figures["accepted"] == figures["final"] == 12
    assert figures["statuses"] == {"graded": 12}
    assert figures["lost"] == 0 and figures["double_scored"] == 0 and figures["rows_not_accepted_by_client"] == 0
    assert figures["by_kind"] == {"crashing": {"graded": 3}, "right": {"graded": 6}, "wrong": {"graded": 3}}
    assert figures["workers"] == 1 and figures["graded_per_s"] > 0 and figures["accepted_per_s"] > 0
    lat = figures["latency_s"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] < 120
    assert all(v == v for v in figures["profile_median_ms"].values())  # no NaN: every phase measured
    for needle in ("machine: ", " cores | Linux", "NumPy", "accepted/s", "graded/s", "p95", "lost: 0; double-scored: 0",
                   "where the time goes", "worker process(es)", "wall time", "rate limit raised", "CPU by component"):
        assert needle in printed
    cpu = figures["cpu_seconds"]
    # Grading and accepting used CPU in their own processes, not only "the machine".
    assert cpu["worker"] > 0 and cpu["sandbox"] > 0 and cpu["web"] > 0 and cpu["total"] >= cpu["worker"]
    assert _leftovers(str(os.getpid())) == {"databases": [], "redis keys": [], "processes": []}


@pytest.mark.slow
def test_a_short_steady_load_writes_its_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = steady_load.main(
        ["--rate", "4", "--duration", "2", "--workers", "1", "--clients", "2", "--students", "2",
         "--mix", "right=1", "--out-dir", str(tmp_path)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "lost: 0; double-scored: 0" in printed and "deepest queue" in printed
    (csv_file,) = tmp_path.glob("steady-*.csv")
    rows = csv_file.read_text().splitlines()
    assert rows[0] == "t_seconds,queued,running,queued_plus_running,final,sent"
    assert len(rows) >= 5 and rows[-1].split(",")[4:] == ["8", "8"]  # the last sample: all 8 final
    ET.parse(csv_file.with_suffix(".svg"))
    assert _leftovers(str(os.getpid())) == {"databases": [], "redis keys": [], "processes": []}


@pytest.mark.slow
def test_the_stack_survives_a_worker_crash_and_leaves_nothing_behind() -> None:
    from benchmarks.load import wait_final
    from benchmarks.stack import Client, Ticket, iter_rows

    right = (ROOT / "tests" / "submissions" / "gates" / "correct_plain.py").read_bytes()
    with Stack(students=1, workers=1, web="waitress") as stack:
        client = Client(stack.url)
        first = client.submit(stack.students[0].token, "gates", "gates.py", right, Ticket(0, 0.0))
        assert first.status == 202, first.error
        assert wait_final(stack, 1, timeout=60)
        old_pool = stack.worker_pool_pids()
        stack.restart("worker", hard=True)
        assert stack.worker_pool_pids() and not set(stack.worker_pool_pids()) & set(old_pool)
        second = client.submit(stack.students[0].token, "gates", "gates.py", right, Ticket(1, 0.0))
        assert second.status == 202, second.error
        assert wait_final(stack, 2, timeout=60)
        rows = list(iter_rows(stack, [first.id, second.id]))  # type: ignore[list-item]
        assert [(r.status, r.score, r.grade_count) for r in rows] == [("graded", r.max_score, 1) for r in rows]
        client.close()
        during = _leftovers(str(os.getpid()))  # the check below sees a running stack
        assert during["databases"] == [stack.db_name] and during["redis keys"] and len(during["processes"]) >= 3
    assert stack.orphans() == []
    assert _leftovers(str(os.getpid())) == {"databases": [], "redis keys": [], "processes": []}
