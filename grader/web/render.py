"""Turning stored text into HTML for the pages: handouts (Markdown with math) and source code.

Handouts are written by course staff, but staff are users too, so nothing in a handout is
trusted: raw HTML in the Markdown is disabled (markdown-it escapes it), links go through
markdown-it's URL check (no `javascript:`), and math is converted to MathML on the server
and re-serialised through an allow-list of MathML elements and attributes. latex2mathml
itself copies `\\text{...}` verbatim and turns `\\href`/`\\style` into attributes, so its
string output must never reach a page; only its element tree is used. No sanitizer is
needed because nothing unescaped ever leaves this module."""

from __future__ import annotations

import functools
import html
from typing import Any, Optional, Sequence
from xml.etree.ElementTree import Element

from latex2mathml.converter import convert_to_element
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token
from markupsafe import Markup, escape
from mdit_py_plugins.dollarmath import dollarmath_plugin

# Presentation MathML that latex2mathml produces; anything else becomes an <mrow>.
_MATHML_TAGS = frozenset(
    """math mrow mi mn mo ms mtext mspace msup msub msubsup mfrac msqrt mroot mover munder
    munderover mtable mtr mtd mlabeledtr mstyle mpadded mphantom menclose mfenced merror
    mmultiscripts mprescripts none semantics""".split()
)
# Layout attributes only: no href, style, class, id or event handlers.
_MATHML_ATTRS = frozenset(
    """display mathvariant stretchy fence separator lspace rspace width height depth
    linethickness columnalign rowalign columnspacing rowspacing columnlines rowlines frame
    framespacing equalrows equalcolumns displaystyle scriptlevel mathsize accent accentunder
    movablelimits largeop symmetric minsize maxsize notation open close separators align
    columnspan rowspan form mathcolor mathbackground voffset""".split()
)
MATHML_NS = "http://www.w3.org/1998/Math/MathML"


def _local(tag: Any) -> str:
    tag = str(tag)
    return tag.rsplit("}", 1)[-1] if tag.startswith("{") else tag


def _text(value: Optional[str]) -> str:
    # latex2mathml keeps entity references such as "&#x0003C;" as literal text (it unescapes
    # its whole output at the end); resolve them, then escape everything for real.
    return str(escape(html.unescape(value))) if value else ""


def _serialise(node: Element, out: list[str]) -> None:
    tag = _local(node.tag)
    if tag not in _MATHML_TAGS:
        tag = "mrow"
    attrs = [f' xmlns="{MATHML_NS}"'] if tag == "math" else []
    for raw_name, value in sorted(node.attrib.items()):
        name = _local(raw_name)
        if name in _MATHML_ATTRS:
            attrs.append(f' {name}="{escape(html.unescape(str(value)))}"')
    out.append(f"<{tag}{''.join(attrs)}>")
    out.append(_text(node.text))
    for child in node:
        _serialise(child, out)
        out.append(_text(child.tail))
    out.append(f"</{tag}>")


def latex_to_mathml(latex: str, display: bool) -> str:
    """MathML for one formula, safe to put in a page; LaTeX that does not convert is shown
    as escaped source, marked so the author can spot it."""
    try:
        tree = convert_to_element(latex, display="block" if display else "inline")
    except Exception:  # noqa: BLE001 - the converter raises many kinds on bad LaTeX
        css = "math-error block" if display else "math-error"
        return f'<code class="{css}" title="this formula could not be rendered">{escape(latex)}</code>'
    out: list[str] = []
    _serialise(tree, out)
    return "".join(out)


def _math(content: str, options: dict[str, Any]) -> str:
    return latex_to_mathml(content, bool(options.get("display_mode")))


def _fence(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    """Fenced code: `<pre class="code"><code class="language-X">`, everything escaped."""
    token = tokens[idx]
    lang = token.info.strip().split(maxsplit=1)[0] if token.info.strip() else ""
    css = f' class="language-{escapeHtml(lang)}"' if lang else ""
    return f'<pre class="code"><code{css}>{escapeHtml(token.content)}</code></pre>\n'


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    # No digits right outside the dollars, so "$5 and $10" in prose stays prose.
    dollarmath_plugin(md, allow_digits=False, double_inline=True, renderer=_math)
    md.add_render_rule("fence", _fence)
    md.add_render_rule("code_block", _fence)
    return md


_MD = _markdown()


def _demote_headings(tokens: list[Token]) -> None:
    # The page has its own <h1> (the assignment title); a handout's "# ..." becomes <h2>.
    for token in tokens:
        if token.type in ("heading_open", "heading_close") and token.tag in ("h1", "h2", "h3", "h4", "h5"):
            token.tag = f"h{int(token.tag[1]) + 1}"


@functools.lru_cache(maxsize=64)
def _render_cached(text: str) -> str:
    tokens = _MD.parse(text)
    _demote_headings(tokens)
    return _MD.renderer.render(tokens, _MD.options, {})


def render_markdown(text: str) -> Markup:
    """A handout as HTML. Cached: a class opening the same handout at once renders it once."""
    return Markup(_render_cached(text or ""))


def source_text(data: bytes) -> str:
    """Submitted bytes as text for display: undecodable bytes become U+FFFD rather than an
    error (an API upload is not checked for UTF-8 before it is graded)."""
    text = data.decode("utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def source_lines(data: bytes) -> list[str]:
    """The lines of a submission, for a listing with line numbers (escaped by the template)."""
    text = source_text(data).replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def fmt_shape(shape: Any) -> str:
    """A shape from a result's `shapes`: [7, 10] -> (7, 10), [3] -> (3,), [] -> () (0-d),
    a list of shapes (a list argument) -> [(3, 2), (4, 3)], None -> scalar."""
    if shape is None:
        return "scalar"
    if isinstance(shape, (list, tuple)):
        if all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            if len(shape) == 1:
                return f"({shape[0]},)"
            return "(" + ", ".join(str(d) for d in shape) + ")"
        return "[" + ", ".join(fmt_shape(s) for s in shape) + "]"
    return str(shape)
