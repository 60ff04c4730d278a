"""The "where the chain broke" graphs of a result page, drawn at render time from the spec
version the submission was graded against and the verdicts stored in its result."""

from __future__ import annotations

import logging
from typing import Any, Optional

from markupsafe import Markup

from grader.chain import build_graph, node_states
from grader.graph_svg import render_graph_svg
from grader.spec import SpecError
from grader.store import catalog
from grader.store.models import AssignmentVersion

log = logging.getLogger(__name__)


def chain_graphs(version: Optional[AssignmentVersion], result: Optional[dict[str, Any]]) -> dict[str, Markup]:
    """Function name -> its forward graph as inline SVG, for each part of `result` with a
    chain. Empty when the stored result was graded against another spec version than the
    one at hand (a regrade in flight): a graph of the wrong spec would mislead."""
    stored = (result or {}).get("parts")
    parts = [p for p in stored if isinstance(p, dict) and isinstance(p.get("chain"), dict)] if isinstance(stored, list) else []
    if version is None or not parts:
        return {}
    try:
        assignment = catalog.loaded_spec(version)
    except (SpecError, OSError) as exc:
        log.warning("version=%s event=spec-load-failed error=%r", version.id, exc)
        return {}
    if str(assignment.spec.version) != str((result or {}).get("assignment_version")):
        return {}
    graphs: dict[str, Markup] = {}
    for part in parts:
        name = part.get("function")
        try:
            fn = assignment.function(name) if isinstance(name, str) else None
        except KeyError:
            fn = None
        if fn is None:
            continue
        svg = render_graph_svg(
            build_graph(fn), node_states(part["chain"]), f"chain-{fn.index}", f"Forward computation graph of {fn.name}"
        )
        # Safe to mark: render_graph_svg escapes every piece of text it writes.
        graphs[fn.name] = Markup(svg)
    return graphs
