"""CPU seconds by component of the stack, from /proc, over one benchmark run.

The service is CPU-bound on two cores, so "where the time goes" must be counted in CPU
seconds per process, not in wall-clock phases: a grading phase that waits for a core is
not the phase that used it. A snapshot records, for every process on the machine, its own
CPU time and that of the children it has reaped (a sandbox child's CPU reaches its zygote
that way, a finished PostgreSQL backend's its postmaster). The difference of two snapshots,
process by process (a pid is matched with its start time, so a reused pid is a new
process), is attributed to a component by the nearest ancestor that names one. The machine
total comes from /proc/stat, so CPU that no component claims shows up as "other".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

TICK = os.sysconf("SC_CLK_TCK")

# The order matters: a process is named by the first rule its command line matches.
COMPONENTS = (
    ("sandbox", ("bwrap", "zygote")),
    ("worker", ("grader.cli worker", "grader worker", "celery")),
    ("web", ("gunicorn", "waitress")),
    ("postgres", ("postgres",)),
    ("redis", ("redis-server",)),
)


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int
    own: int  # utime + stime, in ticks
    reaped: int  # cutime + cstime: children already waited for
    cmd: str


def _read(pid: int) -> Optional[Proc]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    start = int(fields[19])
    return Proc(pid, ppid, start, utime + stime, cutime + cstime, cmd or f"[{name}]")


def _busy_ticks() -> int:
    line = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in line[1:9])
    return user + nice + system + irq + softirq + steal


@dataclass
class Snapshot:
    procs: dict[int, Proc]
    busy: int

    @classmethod
    def take(cls) -> "Snapshot":
        procs = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                p = _read(int(entry))
                if p is not None:
                    procs[p.pid] = p
        return cls(procs, _busy_ticks())


def component_of(pid: int, procs: dict[int, Proc], me: int) -> str:
    seen = 0
    while pid in procs and seen < 64:
        p = procs[pid]
        if pid == me:
            return "load generator"
        for name, needles in COMPONENTS:
            if any(n in p.cmd for n in needles):
                return name
        pid, seen = p.ppid, seen + 1
    return "other"


def cpu_by_component(before: Snapshot, after: Snapshot, me: Optional[int] = None) -> dict[str, float]:
    """CPU seconds per component between two snapshots, plus "other" (the rest of the
    machine, including processes that exited unreaped) and "total" (from /proc/stat)."""
    me = os.getpid() if me is None else me
    out: dict[str, float] = {}
    for pid, p in after.procs.items():
        old = before.procs.get(pid)
        if old is not None and old.start == p.start:
            ticks = (p.own - old.own) + (p.reaped - old.reaped)
        else:
            ticks = p.own + p.reaped
        if ticks <= 0:
            continue
        name = component_of(pid, after.procs, me)
        out[name] = out.get(name, 0.0) + ticks / TICK
    total = (after.busy - before.busy) / TICK
    out["other"] = out.get("other", 0.0) + max(0.0, total - sum(out.values()))
    out["total"] = total
    return out


def report_lines(cpu: dict[str, float], graded: int) -> list[str]:
    """A table of CPU seconds and milliseconds per graded submission, largest first."""
    if graded <= 0:
        return []
    lines = ["CPU by component (seconds; ms per graded submission):"]
    parts = sorted(((k, v) for k, v in cpu.items() if k != "total"), key=lambda kv: -kv[1])
    for name, secs in parts + [("total", cpu["total"])]:
        lines.append(f"  {name:<15} {secs:8.1f} s  {secs * 1000 / graded:7.1f} ms")
    return lines
