"""Signing in and out: ``GET/POST /ui/login`` (the form field ``key``) and ``POST /ui/logout``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from adapterhub.web.context import UI
from adapterhub.web.render import PageError, form_fields, render, safe_next
from adapterhub.web.sessions import READ_ONLY


def add_routes(router: APIRouter, ui: UI) -> None:
    @router.get("/login")
    def login_form(request: Request):
        common = ui.common(request)
        if not ui.sessions.configured:
            return render("login.html", 403, message=READ_ONLY, next="/ui/adapters", **common)
        return render("login.html", message=None, next=safe_next(request.query_params.get("next")), **common)

    @router.post("/login")
    async def login(request: Request):
        form = await form_fields(request)
        try:
            session = ui.sessions.login(form.get("key", ""))
        except PageError as error:
            return render("login.html", error.status, message=error.message, next=safe_next(form.get("next")),
                          **ui.common(request))  # fmt: skip
        response = RedirectResponse(safe_next(form.get("next")), status_code=303)
        ui.sessions.set_cookie(response, session)
        return response

    @router.post("/logout")
    async def logout(request: Request):
        form = await form_fields(request)
        session = ui.sessions.require(request, form.get("csrf"))
        ui.sessions.logout(session)
        response = RedirectResponse("/ui/login", status_code=303)  # the pages need the key again
        ui.sessions.clear_cookie(response)
        return response
