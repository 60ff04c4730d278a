"""Logging in and out, accounts, tokens, and the protections every page gets."""

from __future__ import annotations

import pytest

from grader.config import ConfigError, Settings
from service_fixtures import csrf_token, login


def test_login_page_and_wrong_password(client):
    assert client.get("/login").status_code == 200
    bad = client.post(
        "/login",
        data={"email": "student@example.com", "password": "nope-nope", "csrf_token": csrf_token(client)},
    )
    assert bad.status_code == 401
    assert "wrong email or password" in bad.get_data(as_text=True)
    assert client.get("/").status_code == 302  # still logged out


def test_unknown_email_gets_the_same_answer(client):
    bad = client.post(
        "/login", data={"email": "nobody@example.com", "password": "whatever1", "csrf_token": csrf_token(client)}
    )
    assert bad.status_code == 401
    assert "wrong email or password" in bad.get_data(as_text=True)


def test_login_logout(client):
    login(client, "student")
    home = client.get("/")
    assert home.status_code == 200
    assert "demo" in home.get_data(as_text=True)
    token = csrf_token(client, "/")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302


def test_login_without_csrf_token_is_refused(client):
    response = client.post("/login", data={"email": "student@example.com", "password": "student-pass-1"})
    assert response.status_code == 400
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"])
def test_login_does_not_redirect_off_site(client, target):
    client.get("/login")
    response = client.post(
        "/login?next=" + target,
        data={"email": "student@example.com", "password": "student-pass-1", "csrf_token": csrf_token(client)},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_login_follows_a_local_next(client):
    client.get("/login")
    response = client.post(
        "/login?next=/account",
        data={"email": "student@example.com", "password": "student-pass-1", "csrf_token": csrf_token(client)},
    )
    assert response.headers["Location"] == "/account"


def test_security_headers(client):
    response = client.get("/login")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_tokens_are_shown_once_and_stored_hashed(client, session):
    from grader.store.models import ApiToken

    login(client, "student")
    page = client.post("/account/tokens", data={"name": "laptop", "csrf_token": csrf_token(client, "/account")})
    body = page.get_data(as_text=True)
    import re

    token = re.search(r'id="new-token">(bpg_[^<]+)<', body).group(1)
    rows = session.query(ApiToken).all()
    assert len(rows) == 1 and rows[0].token_hash != token and token not in rows[0].token_hash
    assert token not in client.get("/account").get_data(as_text=True)  # never shown again


def test_change_password(client):
    login(client, "student")
    token = csrf_token(client, "/account")
    wrong = client.post(
        "/account/password",
        data={"current": "not-it-at-all", "new": "a-new-password", "confirm": "a-new-password", "csrf_token": token},
    )
    assert wrong.status_code == 400 and "not your current password" in wrong.get_data(as_text=True)
    ok = client.post(
        "/account/password",
        data={"current": "student-pass-1", "new": "a-new-password", "confirm": "a-new-password", "csrf_token": token},
    )
    assert ok.status_code == 302
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    login(client, "student@example.com", "a-new-password")


def test_login_is_rate_limited(client):
    client.get("/login")
    token = csrf_token(client)
    codes = [
        client.post("/login", data={"email": "student@example.com", "password": "wrong-pass", "csrf_token": token}).status_code
        for _ in range(12)
    ]
    assert codes[:10] == [401] * 10
    assert codes[-1] == 429


def test_production_refuses_a_weak_or_missing_secret(tmp_path):
    base = {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        Settings.from_env(environ=base, instance_path=tmp_path)
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        Settings.from_env(environ={**base, "SECRET_KEY": "changeme"}, instance_path=tmp_path)
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env(environ={"SECRET_KEY": "k" * 40, "REDIS_URL": "redis://x"}, instance_path=tmp_path)
    ok = Settings.from_env(environ={**base, "SECRET_KEY": "k" * 40}, instance_path=tmp_path)
    assert ok.production


def test_development_keeps_a_random_secret_in_the_instance_folder(tmp_path):
    one = Settings.from_env(environ={"GRADER_ENV": "development"}, instance_path=tmp_path)
    two = Settings.from_env(environ={"GRADER_ENV": "development"}, instance_path=tmp_path)
    assert one.secret_key == two.secret_key and len(one.secret_key) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
