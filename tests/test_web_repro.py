"""Downloading failing visible trials from the result page (grader/web/repro_view.py and
the routes in grader/web/student.py), and recognised mistakes shown on that page."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from grader import repro
from grader.store import accounts, catalog
from grader.store.models import Submission
from grader.trials import make_trials
from service_fixtures import login
from test_web_student import SUBMISSIONS, TRANSPOSED_VJP, _graded, _second_student, _store

CORRECT_VJP = (SUBMISSIONS / "vjp" / "correct_plain.py").read_bytes()
# vjp.matmul_backward: visible trials 0-7 (the transposed dW fails where D != M), trial 8
# is the large hidden one, 9-11 are hidden random ones.
FN = "matmul_backward"


def urls(sid: int, function: str, index: int) -> list[str]:
    base = f"/submissions/{sid}/trials/{function}"
    return [f"{base}/{index}/repro.zip", f"{base}/{index}/inputs.npz", f"{base}/repro.zip"]


def trials_of(result: dict[str, Any], function: str) -> list[dict[str, Any]]:
    return next(p for p in result["parts"] if p["function"] == function)["trials"]


def failing_visible(result: dict[str, Any], function: str = FN) -> list[int]:
    return [t["index"] for t in trials_of(result, function) if not t["hidden"] and t["status"] != "passed"]


def test_owner_downloads_a_failing_trial_that_reproduces_the_mistake(client, session, tmp_path):
    sid, result = _graded(session, TRANSPOSED_VJP.read_bytes(), filename="my_vjp.py")
    index = failing_visible(result)[0]
    login(client, "student")
    response = client.get(f"/submissions/{sid}/trials/{FN}/{index}/repro.zip")
    assert response.status_code == 200
    assert response.mimetype == "application/zip"
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert f"vjp-{FN}-trial{index}.zip" in response.headers["Content-Disposition"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" in response.headers["Cache-Control"]

    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path)
    folder = tmp_path / f"vjp-{FN}-trial{index}"
    assert sorted(names) == sorted(f"{folder.name}/{n}" for n in (repro.npz_name(FN, index), repro.script_name(FN)))
    # The inputs are those grading used (the stored seed), though the seed is in no file.
    row = session.get(Submission, sid)
    trial = make_trials(catalog.loaded_spec(row.version), catalog.loaded_spec(row.version).function(FN), row.seed)[index]
    with np.load(folder / repro.npz_name(FN, index), allow_pickle=False) as npz:
        assert np.array_equal(npz["x"], trial.args[1]) and np.array_equal(npz["expected__dW"], trial.expected[1])
    assert str(row.seed) not in (folder / repro.script_name(FN)).read_text()
    assert "DEFAULT_FILE = 'my_vjp.py'" in (folder / repro.script_name(FN)).read_text()

    (tmp_path / "my_vjp.py").write_bytes(row.source)
    out = subprocess.run(
        [sys.executable, "-I", str(folder / repro.script_name(FN))], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "dW: shape mismatch" in out.stdout and "dx: OK" in out.stdout

    npz = client.get(f"/submissions/{sid}/trials/{FN}/{index}/inputs.npz")
    assert npz.status_code == 200 and npz.headers["Content-Disposition"].startswith("attachment")
    with np.load(io.BytesIO(npz.data), allow_pickle=False) as data:
        assert np.array_equal(data["dout"], trial.args[0])

    every = client.get(f"/submissions/{sid}/trials/{FN}/repro.zip")
    assert every.status_code == 200
    with zipfile.ZipFile(io.BytesIO(every.data)) as archive:
        held = {Path(n).name for n in archive.namelist()}
    assert held == {repro.script_name(FN)} | {repro.npz_name(FN, i) for i in failing_visible(result)}


def test_another_student_gets_404_and_a_ta_of_the_course_may_download(app, client, session):
    sid, result = _graded(session, TRANSPOSED_VJP.read_bytes())
    index = failing_visible(result)[0]
    _second_student(session)
    login(client, "other@example.com", "other-pass-1")
    missing = client.get(f"/submissions/999999/trials/{FN}/{index}/repro.zip")
    for url in urls(sid, FN, index):
        denied = client.get(url)
        assert denied.status_code == 404, url
        assert denied.get_data() == missing.get_data()  # says nothing a missing id would not

    ta = app.test_client()
    login(ta, "ta")
    for url in urls(sid, FN, index):
        assert ta.get(url).status_code == 200, url
    page = ta.get(f"/submissions/{sid}").get_data(as_text=True)
    assert f'href="/submissions/{sid}/trials/{FN}/{index}/repro.zip"' in page  # the staff view links too

    other_course = catalog.create_course(session, "elsewhere", "Another course")
    ta2 = accounts.create_user(session, "ta2@example.com", role="ta", password="ta2-pass-12")
    accounts.set_membership(session, other_course, ta2, "ta")
    session.commit()
    outsider = app.test_client()
    login(outsider, "ta2@example.com", "ta2-pass-12")
    for url in urls(sid, FN, index):
        assert outsider.get(url).status_code == 404, url


def test_hidden_passed_unknown_and_out_of_range_trials_are_404(client, session):
    sid, result = _graded(session, TRANSPOSED_VJP.read_bytes())
    trials = trials_of(result, FN)
    hidden = [t["index"] for t in trials if t["hidden"]]
    passed = [t["index"] for t in trials if not t["hidden"] and t["status"] == "passed"]
    hidden_failed = [t["index"] for t in trials if t["hidden"] and t["status"] != "passed"]
    assert hidden_failed and passed  # the transposed dW fails hidden trials; square ones pass
    login(client, "student")
    for index in hidden + passed + [len(trials), 99999]:
        for url in urls(sid, FN, index)[:2]:
            assert client.get(url).status_code == 404, url
    # relu_backward passed every trial: nothing of it to download, not even all of it.
    assert not failing_visible(result, "relu_backward")
    for url in urls(sid, "relu_backward", 0):
        assert client.get(url).status_code == 404, url
    for url in urls(sid, "no_such_function", 0):
        assert client.get(url).status_code == 404, url
    # The page links only what may be downloaded.
    body = client.get(f"/submissions/{sid}").get_data(as_text=True)
    for index in hidden + passed:
        assert f"/trials/{FN}/{index}/" not in body
    for index in failing_visible(result):
        assert f'href="/submissions/{sid}/trials/{FN}/{index}/repro.zip"' in body
        assert f'href="/submissions/{sid}/trials/{FN}/{index}/inputs.npz"' in body
    assert f'href="/submissions/{sid}/trials/{FN}/repro.zip"' in body
    assert "/trials/relu_backward/" not in body


def test_a_submission_not_yet_graded_or_all_correct_offers_nothing(client, session):
    queued = _store(session, TRANSPOSED_VJP.read_bytes())
    correct, _ = _graded(session, CORRECT_VJP)
    login(client, "student")
    for sid in (queued, correct):
        for url in urls(sid, FN, 0):
            assert client.get(url).status_code == 404, url
        assert "/trials/" not in client.get(f"/submissions/{sid}").get_data(as_text=True)


def test_a_result_of_another_seed_or_spec_version_offers_nothing(client, session: Session):
    sid, result = _graded(session, TRANSPOSED_VJP.read_bytes())
    index = failing_visible(result)[0]
    login(client, "student")
    url = urls(sid, FN, index)[0]
    assert client.get(url).status_code == 200
    row = session.get(Submission, sid)
    row.result = {**result, "seed": result["seed"] + 1}  # stored result does not match the row
    session.commit()
    assert client.get(url).status_code == 404
    row.result = {**result, "assignment_version": "not-this-one"}
    session.commit()
    assert client.get(url).status_code == 404
    # Shapes recorded at grading that the regenerated trial does not have: the trial
    # generator or the spec changed under the result, so the download would mislead.
    moved = {**result, "parts": [
        {**p, "trials": [{**t, "shapes": {**t["shapes"], "x": [1, 1]}} if t["index"] == index else t for t in p["trials"]]}
        if p["function"] == FN else p
        for p in result["parts"]
    ]}
    row.result = moved
    session.commit()
    assert client.get(url).status_code == 404
    row.result = result
    session.commit()
    assert client.get(url).status_code == 200
    # A result that claims a hidden trial is visible still gets no hidden inputs: the
    # regenerated trial is hidden, and that decides.
    hidden = next(t["index"] for t in trials_of(result, FN) if t["hidden"] and t["status"] != "passed")
    forged = {**result, "parts": [
        {**p, "trials": [{**t, "hidden": False} if t["index"] == hidden else t for t in p["trials"]]} if p["function"] == FN else p
        for p in result["parts"]
    ]}
    row.result = forged
    session.commit()
    for url in urls(sid, FN, hidden)[:2]:
        assert client.get(url).status_code == 404, url
    assert client.get(f"/submissions/{sid}/trials/{FN}/repro.zip").status_code == 404


def test_recognised_mistakes_are_shown_per_output(client, session):
    sid, result = _graded(session, (SUBMISSIONS / "vjp" / "wrong_factor_two.py").read_bytes())
    outputs = next(p for p in result["parts"] if p["function"] == FN)["outputs"]
    named = [m for o in outputs for m in o["mistakes"]]
    assert named, outputs  # the corpus file's mistake is one the grader recognises
    login(client, "student")
    body = client.get(f"/submissions/{sid}").get_data(as_text=True)
    assert "<th>Recognised mistake</th>" in body
    for name in named:
        assert f'<span class="badge mistake-badge">{name}</span>' in body.replace("&#39;", "'")


def test_the_api_lists_and_serves_the_same_downloads_for_a_token(client, session):
    from test_api import API, bearer, token_for

    sid, result = _graded(session, TRANSPOSED_VJP.read_bytes())
    failing = failing_visible(result)
    owner = token_for(session, "student@example.com")
    body = client.get(f"{API}/submissions/{sid}", headers=bearer(owner)).get_json()
    downloads = body["downloads"]
    assert set(downloads) == {"matmul_backward", "affine_backward"}
    offered = downloads[FN]
    assert sorted(int(i) for i in offered["trials"]) == failing
    assert offered["all"] == f"http://localhost{API}/submissions/{sid}/trials/{FN}/repro.zip"
    for i in failing[:2]:
        for url in offered["trials"][str(i)].values():
            response = client.get(url.removeprefix("http://localhost"), headers=bearer(owner))
            assert response.status_code == 200 and response.headers["Content-Disposition"].startswith("attachment")
    assert client.get(offered["all"].removeprefix("http://localhost"), headers=bearer(owner)).status_code == 200
    hidden = next(t["index"] for t in trials_of(result, FN) if t["hidden"])
    assert client.get(f"{API}/submissions/{sid}/trials/{FN}/{hidden}/repro.zip", headers=bearer(owner)).status_code == 404
    # No token, a cookie session, or another student's token: nothing.
    login(client, "student")
    assert client.get(f"{API}/submissions/{sid}/trials/{FN}/repro.zip").status_code == 401
    _second_student(session)
    other = token_for(session, "other@example.com")
    for i in failing[:1]:
        for url in [f"{API}/submissions/{sid}/trials/{FN}/{i}/repro.zip", f"{API}/submissions/{sid}/trials/{FN}/{i}/inputs.npz"]:
            assert client.get(url, headers=bearer(other)).status_code == 404, url
    queued = _store(session, TRANSPOSED_VJP.read_bytes())
    assert client.get(f"{API}/submissions/{queued}", headers=bearer(owner)).get_json()["downloads"] == {}


def test_layer_lists_and_numbers_download_from_a_graded_submission(client, session, tmp_path):
    """The regenerated trial is checked against the shapes grading recorded, lists of
    layers and plain numbers included."""
    login(client, "student")
    for slug, corpus, function in (("bp4", "wrong_sum_not_mean.py", "minibatch_backprop"), ("mlp", "wrong_no_reg.py", "mlp_backward")):
        sid, result = _graded(session, (SUBMISSIONS / slug / corpus).read_bytes(), slug=slug, filename=corpus)
        failing = failing_visible(result, function)
        assert failing, (slug, function)
        response = client.get(f"/submissions/{sid}/trials/{function}/repro.zip")
        assert response.status_code == 200, (slug, response.status_code)
        with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
            archive.extractall(tmp_path / slug)
        folder = tmp_path / slug / f"{slug}-{function}-failing-trials"
        (folder / corpus).write_bytes((SUBMISSIONS / slug / corpus).read_bytes())
        out = subprocess.run(
            [sys.executable, "-I", str(folder / repro.script_name(function))], cwd=folder, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"{len(failing)} of {len(failing)} trial(s) do not match" in out.stdout


def test_downloads_are_rate_limited_per_account(client, session):
    # Each download regenerates trials and compresses arrays: a script looping over them
    # must not tie up the web processes. The budget is per account, on the page and the API.
    from grader.web.repro_view import DOWNLOAD_RATE

    sid, result = _graded(session, TRANSPOSED_VJP.read_bytes())
    index = failing_visible(result)[0]
    budget = int(DOWNLOAD_RATE.split()[0])
    login(client, "student")
    url = f"/submissions/{sid}/trials/{FN}/{index}/inputs.npz"
    codes = [client.get(url).status_code for _ in range(budget)]
    assert codes == [200] * budget
    assert client.get(url).status_code == 429
    assert client.get(f"/submissions/{sid}/trials/{FN}/repro.zip").status_code == 429
