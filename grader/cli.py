"""The `grader` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import click

from grader.spec import Assignment, SpecError, builtin_ids, load_builtin, load_folder


def _load_assignment(name: str) -> Assignment:
    """A built-in id, or a path to a folder holding spec.yaml."""
    path = Path(name)
    if name not in builtin_ids() and (path.is_dir() or "/" in name):
        return load_folder(path)
    return load_builtin(name)


@click.group()
@click.version_option(package_name="backprop-grader")
def main() -> None:
    """backprop-grader: grade backpropagation assignments."""


@main.command()
@click.argument("assignment")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Trial seed (default: random, recorded in the result).")
def grade(assignment: str, file: str, as_json: bool, seed: Optional[int]) -> None:
    """Grade FILE against ASSIGNMENT (a built-in id or a spec folder)."""
    from grader.grade import grade_bytes

    try:
        spec = _load_assignment(assignment)
    except SpecError as exc:
        _fail(str(exc))
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror or exc}")
    from grader.grade import GradingError
    from grader.runner.session import SandboxFailure
    from grader.sandbox import SandboxUnavailable

    try:
        result = grade_bytes(spec, data, seed=seed)
    except GradingError as exc:
        _fail(f"cannot grade: {exc}", code=2)
    except (SandboxUnavailable, SandboxFailure) as exc:
        _fail(str(exc), code=3)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_result(result))


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"{result['title']} ({result['assignment']} v{result['assignment_version']}"
        + (f", seed {result['seed']})" if "seed" in result else ")"),
        f"Score: {result['score']:g} / {result['max_score']:g}",
        "",
    ]
    for message in result["messages"]:
        lines += [message, ""]
    marks = {"passed": "PASS", "partial": "PART", "failed": "FAIL", "not_run": "----"}
    for part in result["parts"]:
        lines.append(f"[{marks.get(part['status'], part['status'])}] {part['function']}: {part['score']:g}/{part['max_score']:g}")
        if part["status"] == "not_run" and part["feedback"] in result["messages"]:
            lines.append("    not run (see above)")
            continue
        for line in part["feedback"].splitlines():
            lines.append("    " + line)
        if part.get("printed"):
            lines.append("    printed:")
            lines += ["      " + line for line in part["printed"].splitlines()[:20]]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


@main.command()
@click.option("--json", "as_json", is_flag=True)
def sandbox(as_json: bool) -> None:
    """Probe what the host offers the sandbox; exit 1 if a required layer is missing."""
    from grader.sandbox import SandboxUnavailable, probe_host, required_layers

    try:
        required = required_layers()
    except SandboxUnavailable as exc:
        _fail(str(exc), code=1)
    probe = probe_host()
    missing = probe.missing(required)
    if as_json:
        click.echo(json.dumps({
            "layers": {k: {"ok": ok, "detail": d} for k, (ok, d) in probe.layers.items()},
            "required": list(required), "missing": missing, "landlock_abi": probe.landlock_abi,
        }, indent=2))
    else:
        click.echo(probe.describe())
        click.echo(f"required: {', '.join(required)}")
        click.echo("missing: " + (", ".join(missing) if missing else "nothing; grading is allowed"))
    sys.exit(1 if missing else 0)


@main.group()
def assignments() -> None:
    """List and check assignment specs."""


@assignments.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_assignments(as_json: bool) -> None:
    """The built-in assignments."""
    rows = []
    for assignment_id in builtin_ids():
        try:
            a = load_builtin(assignment_id)
        except SpecError as exc:
            rows.append({"id": assignment_id, "error": str(exc)})
            continue
        rows.append(
            {
                "id": a.id,
                "version": a.spec.version,
                "title": a.spec.title,
                "functions": [fn.name for fn in a.functions],
                "max_score": a.max_score,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        if "error" in row:
            click.echo(f"{row['id']:<8} INVALID: {row['error']}")
        else:
            click.echo(f"{row['id']:<8} v{row['version']:<4} {row['max_score']:>5g} pts  {row['title']}")
            click.echo(f"{'':<8} functions: {', '.join(row['functions'])}")


@assignments.command("check")
@click.argument("path")
@click.option("--solution", type=click.Path(exists=True, dir_okay=False), help="A reference solution that must earn full marks (default: solution.py in the folder, if any).")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Time budget of the self-test (default: $GRADER_SELFTEST_SECONDS, else 20, as on upload).")
def check_assignment(path: str, solution: Optional[str], budget: Optional[float]) -> None:
    """Validate a spec folder (or built-in id) and run its self-test."""
    from grader.selftest import default_budget, self_test

    if budget is None:
        try:
            budget = default_budget()
        except ValueError as exc:  # a malformed $GRADER_SELFTEST_SECONDS
            _fail(str(exc))
    try:
        assignment = _load_assignment(path)
    except SpecError as exc:
        _fail(str(exc), code=1)
    solution_path = Path(solution) if solution else assignment.folder / "solution.py"
    data = solution_path.read_bytes() if solution_path.is_file() else None
    from grader.runner.session import SandboxFailure
    from grader.sandbox import SandboxUnavailable

    try:
        report = self_test(assignment, solution=data, budget_seconds=budget)
    except (SandboxUnavailable, SandboxFailure) as exc:
        _fail(str(exc), code=3)
    click.echo(f"{assignment.id} v{assignment.spec.version}: {len(assignment.functions)} functions, {assignment.max_score:g} points")
    # A note may hold a small table (the mutants' report): its lines go under the note's text.
    for note in report.notes:
        click.echo(f"  ok: {note}".replace("\n", "\n      "))
    for warning in report.warnings:
        click.echo(f"  warning: {warning}")
    for problem in report.problems:
        click.echo(f"  PROBLEM: {problem}")
    if data is None:
        click.echo("  (no reference solution given; pass --solution FILE to grade one)")
    if not report.ok:
        click.echo(f"{assignment.id}: self-test FAILED ({len(report.problems)} problem(s))", err=True)
        sys.exit(1)
    click.echo(f"{assignment.id}: self-test passed")


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"grader: {message}", err=True)
    sys.exit(code)


# The service's operator commands (db, users, tokens, web, worker, sweep, up).
from grader import service_cli  # noqa: E402

service_cli.register(main)


from grader.client import submit as _submit  # noqa: E402 - the API client's command (grader/client.py)

main.add_command(_submit)


if __name__ == "__main__":
    main()
