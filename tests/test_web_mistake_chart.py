"""The recognised-mistakes chart and table on the assignment gradebook (staff only), and the
query behind it on both database backends.

The arrangement is the gradebook tests' one (real grading results): Alice first submitted a
transposed dW (matmul and affine) and then a correct file, which counts; Carol's counted
submission averages db; a TA's own transposed submission is not a student's."""

from __future__ import annotations

import html
import re

from sqlalchemy import select

from grader.store import gradebook as facts_db
from grader.store import submissions as subs
from grader.store.db import make_sessionmaker
from grader.store.models import Assignment, Course, User
from service_fixtures import Enqueued, login
from service_fixtures import test_settings as settings_for  # (not collected as a test)
from test_web_gradebook import CAROL, DAY, PASSWORD, _page, arrange, results, world  # noqa: F401 - fixtures

MEAN = "averaged over N instead of summed, or averaged twice"
PAGE = "/courses/demo/assignments/vjp/gradebook"


def _mistake_rows(page: str) -> list[tuple[str, ...]]:
    """(function, output, mistake, now, who now, ever, who fixed it) per row of the table."""
    table = re.search(r'<table class="compact" id="mistake-table">(.*?)</table>', page, re.S)
    assert table, "no mistake table on the page"
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        if not cells:
            continue  # the header row
        if len(cells) == 7:
            names = [re.findall(r'<a href="[^"]*">([^<]*)</a>', c) for c in (cells[4], cells[6])]
            text = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells[:4] + [cells[5]]]
            rows.append((*text[:4], tuple(html.unescape(n) for n in names[0]), text[4], tuple(html.unescape(n) for n in names[1])))
        else:
            rows.append(tuple(html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells))
    return rows


def test_ta_sees_who_made_each_mistake_now_and_ever(client, world):
    login(client, "ta")
    page = _page(client, PAGE)
    rows = _mistake_rows(page)
    assert ("matmul_backward", "dW", "transposed", "0", (), "1", ("Alice Able",)) in rows
    assert ("affine_backward", "dW", "transposed", "0", (), "1", ("Alice Able",)) in rows
    assert ("affine_backward", "db", MEAN, "1", (CAROL,), "1", ()) in rows
    # The TA's own transposed submission is not counted: Alice alone made it.
    assert all(r[5] == "1" for r in rows)
    # The functions in the spec's order: matmul_backward before affine_backward.
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), key=["relu_backward", "matmul_backward", "affine_backward"].index)
    # The names link to the student's page, to follow up.
    assert f'href="/courses/demo/students/{world.carol}"' in page.split('id="mistake-table"')[1]
    chart = re.search(r'<svg[^>]*aria-labelledby="mistakes-title mistakes-desc".*?</svg>', page, re.S)
    assert chart and "<script" not in chart.group(0)
    assert "affine_backward · db: " + MEAN + ": 1 now, 1 at some point" in html.unescape(chart.group(0))


def test_no_mistakes_yet_is_said_in_words(client, world):
    login(client, "ta")
    page = _page(client, "/courses/demo/assignments/gates/gradebook")
    assert _mistake_rows(page) == [("No recognised mistakes yet.",)]
    assert 'aria-labelledby="mistakes-title' not in page  # no empty chart


def test_students_cannot_see_the_mistakes(client, world):
    for who, password in (("student", None), ("alice@example.com", PASSWORD)):
        login(client, who, password)
        assert client.get(PAGE).status_code == 404


def test_mistake_query_on_both_backends(db_url, tmp_path, results, monkeypatch):  # noqa: F811 - the imported fixture
    from grader.web import create_app

    monkeypatch.setattr(facts_db, "CHUNK", 2)  # several chunks, as for a large course

    app = create_app(settings_for(db_url, tmp_path), enqueue=Enqueued())
    try:
        with make_sessionmaker(app.extensions["grader.engine"])() as session:
            w = arrange(session, results)
            course = session.scalar(select(Course).where(Course.code == "demo"))
            vjp = session.scalar(select(Assignment).where(Assignment.course_id == course.id, Assignment.slug == "vjp"))
            alice = session.get(User, w.alice)
            # Odd stored results (another grader version, a hand-edited row) unnest to nothing.
            odd = []
            for result in (
                {"parts": [{"function": "f", "outputs": {"dx": 1}}, 5, "x", {"outputs": [{"mistakes": ["m"]}]}]},
                {"parts": {"f": 1}},
                {"parts": [{"function": "f", "outputs": [{"name": "dx", "mistakes": [3, {"a": 1}, "sign error"]}, 7]}]},
            ):
                # Earlier than her other submissions, so the correct one still counts.
                sub = subs.create_submission(session, vjp, alice, b"x = 1\n", "vjp.py", now=w.due - 5 * DAY, enforce=False)
                session.commit()
                held = subs.claim(session, sub.id)
                assert held is not None and subs.finish(session, held, {"score": 0.0, "max_score": 8.0, **result})
                odd.append(sub.id)
            made = facts_db.mistakes_of(session, [w.alice_early, w.alice_late, w.carol_graded, w.eve_error, *odd])
        assert sorted(made[w.alice_early]) == [("affine_backward", "dW", "transposed"), ("matmul_backward", "dW", "transposed")]
        assert made[w.carol_graded] == [("affine_backward", "db", MEAN)]
        assert w.alice_late not in made and w.eve_error not in made
        assert odd[0] not in made and odd[1] not in made
        assert made[odd[2]] == [("f", "dx", "sign error")]
        client = app.test_client()
        login(client, "ta")
        rows = _mistake_rows(_page(client, PAGE))
        assert ("affine_backward", "db", MEAN, "1", (CAROL,), "1", ()) in rows
        assert ("f", "dx", "sign error", "0", (), "1", ("Alice Able",)) in rows  # an older spec's function, last
        assert rows[-1][0] == "f"
    finally:
        app.extensions["grader.engine"].dispose()
