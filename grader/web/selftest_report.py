"""A stored self-test report (`grader.store.catalog.report_text`) arranged for the spec page:
problems, warnings and notes apart, and the mutant summary of each function as a table.

The report is stored as text with each version (what the CLI prints too), so this reads that
text back; a line it does not recognise stays a plain note, never an error."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# "mutant 'name' fails 11 of 14 trials (8 visible, 3 hidden): caught" (`MutantCheck.line`).
_MUTANT_LINE = re.compile(
    r"^\s+mutant (?P<name>'.*'|\".*\") fails (?P<failed>\d+) of (?P<trials>\d+) trials "
    r"\((?P<visible>\d+) visible, (?P<hidden>\d+) hidden\): (?P<verdict>.+)$"
)
_KINDS = {"problem: ": "problems", "warning: ": "warnings", "note: ": "notes"}


@dataclass(frozen=True)
class MutantRow:
    name: str
    failed: int
    trials: int
    failed_visible: int
    failed_hidden: int
    verdict: str

    @property
    def caught(self) -> bool:
        return self.failed > 0


@dataclass
class MutantTable:
    function: str
    heading: str  # the summary line above the rows
    rows: list[MutantRow] = field(default_factory=list)

    @property
    def all_caught(self) -> bool:
        return all(r.verdict == "caught" for r in self.rows)


@dataclass
class ReportView:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mutants: list[MutantTable] = field(default_factory=list)


def _unquote(name: str) -> str:
    return name[1:-1].replace("\\'", "'")


def parse_report(text: str) -> ReportView:
    """The report's entries by kind; a note made of a heading and mutant lines becomes a table."""
    view = ReportView()
    entries: list[tuple[str, list[str]]] = []
    for line in (text or "").splitlines():
        kind = next((k for prefix, k in _KINDS.items() if line.startswith(prefix)), None)
        if kind is not None:
            entries.append((kind, [line.split(": ", 1)[1]]))
        elif entries:
            entries[-1][1].append(line)  # a continuation line of a multi-line entry
        elif line.strip():
            entries.append(("notes", [line]))
    for kind, lines in entries:
        rows = [m for m in (_MUTANT_LINE.match(line) for line in lines[1:]) if m]
        if kind == "notes" and rows and len(rows) == len(lines) - 1:
            function, _, heading = lines[0].partition(": ")
            view.mutants.append(
                MutantTable(
                    function,
                    heading,
                    [
                        MutantRow(
                            _unquote(m["name"]), int(m["failed"]), int(m["trials"]),
                            int(m["visible"]), int(m["hidden"]), m["verdict"],
                        )
                        for m in rows
                    ],
                )
            )
            continue
        getattr(view, kind).append("\n".join(lines))
    return view
