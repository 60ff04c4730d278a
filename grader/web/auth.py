"""Logging in and out, passwords, API tokens; and the token check the API uses."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import login_required, login_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import BooleanField, EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from grader.store import accounts
from grader.store.models import ApiToken
from grader.web.access import local_path, user
from grader.web.database import db
from grader.web.extensions import limiter

bp = Blueprint("auth", __name__)


def _login_rate() -> str:
    return current_app.extensions["grader.settings"].login_rate  # type: ignore[no-any-return]


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1000)])
    remember = BooleanField("Keep me logged in on this computer")


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired()])
    new = PasswordField("New password", validators=[DataRequired(), Length(min=accounts.MIN_PASSWORD, max=1000)])
    confirm = PasswordField("New password again", validators=[EqualTo("new", message="the two new passwords differ")])


class TokenForm(FlaskForm):
    name = StringField("Token name", validators=[Length(max=100)])


def _login_email() -> str:
    return "login-email:" + (request.form.get("email") or "").strip().lower()[:254]


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_rate, methods=["POST"])
# Also per account, so guessing one password from many addresses is limited too.
@limiter.limit(_login_rate, methods=["POST"], key_func=_login_email)
def login() -> Any:
    form = LoginForm()
    if form.validate_on_submit():
        found = accounts.authenticate(db(), form.email.data or "", form.password.data or "")
        if found is not None:
            db().commit()  # a rehashed password
            login_user(found, remember=bool(form.remember.data))
            return redirect(local_path(request.args.get("next")) or url_for("student.home"))
        form.password.errors = ["wrong email or password"]
    return render_template("auth/login.html", form=form), 401 if request.method == "POST" else 200


@bp.post("/logout")
@login_required
def logout() -> Any:
    logout_user()
    flash("You are logged out.", "success")
    return redirect(url_for("auth.login"))


def _account_page(new_token: str | None = None, **forms: Any) -> Any:
    tokens = db().scalars(select(ApiToken).where(ApiToken.user_id == user().id).order_by(ApiToken.id)).all()
    return render_template(
        "auth/account.html",
        password_form=forms.get("password_form") or PasswordForm(),
        token_form=forms.get("token_form") or TokenForm(),
        tokens=tokens,
        new_token=new_token,
    )


@bp.get("/account")
@login_required
def account() -> Any:
    return _account_page()


@bp.post("/account/password")
@login_required
def password() -> Any:
    form = PasswordForm()
    if form.validate_on_submit():
        if not accounts.verify_password(user(), form.current.data or ""):
            form.current.errors = ["that is not your current password"]
        else:
            accounts.set_password(user(), form.new.data or "")
            db().commit()
            login_user(user())  # this session goes on; every other one has ended
            flash("Password changed.", "success")
            return redirect(url_for("auth.account"))
    return _account_page(password_form=form), 400


@bp.post("/account/tokens")
@login_required
def create_token() -> Any:
    form = TokenForm()
    if not form.validate_on_submit():
        return _account_page(token_form=form), 400
    token = accounts.create_token(db(), user(), form.name.data or "")
    db().commit()
    return _account_page(new_token=token)


@bp.post("/account/tokens/<int:token_id>/revoke")
@login_required
def revoke_token(token_id: int) -> Any:
    row = db().get(ApiToken, token_id)
    if row is None or row.user_id != user().id:
        abort(404)
    row.revoked = True
    db().commit()
    flash("Token revoked.", "success")
    return redirect(url_for("auth.account"))
