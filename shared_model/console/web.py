"""A console's web frame: templates (its own and the shared ones), sign-in by token, headers on every answer."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

from fastapi import FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader

HERE = Path(__file__).parent
COOKIE = "fedprofile_console"
# Pages load nothing from elsewhere and run no script: a page that shows customer data cannot leak it by one.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def form_key(token: str) -> str:
    """What a form posts back to prove it came from a page this console served (with the token's cookie)."""
    return hmac.new(token.encode(), b"console-form", hashlib.sha256).hexdigest()


def console_frame(*, title: str, templates: Path, token: str, home: str, secure_cookie: bool,
                  hint: str) -> tuple[FastAPI, Jinja2Templates]:
    """A FastAPI app whose every path but /login and /static needs the token (the cookie /login sets, or
    `authorization: Bearer`), with the shared stylesheet and templates; `hint` tells a person where the token is."""
    if len(token) < 16:
        raise ValueError("the console token must be at least 16 characters")
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    pages = Jinja2Templates(directory=templates)
    pages.env.loader = ChoiceLoader([FileSystemLoader(templates), FileSystemLoader(HERE / "templates")])
    pages.env.filters["clock"] = lambda at: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(at)))
    pages.env.globals.update(console_title=title)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    expected = token.encode()

    def signed_in(request: Request) -> bool:
        given = request.cookies.get(COOKIE) or request.headers.get("authorization", "").removeprefix("Bearer ")
        return bool(given) and hmac.compare_digest(given.encode(), expected)

    def login_page(request: Request, *, failed: bool, status_code: int = 200) -> Response:
        return pages.TemplateResponse(request, "login.html", {"failed": failed, "hint": hint},
                                      status_code=status_code)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith(("/login", "/static/")) or signed_in(request):
            response = await call_next(request)
        else:
            response = login_page(request, failed=False, status_code=401)
        response.headers.update(SECURITY_HEADERS)
        return response

    def sign_in(request: Request, given: str) -> Response:
        if not hmac.compare_digest(given.encode(), expected):
            return login_page(request, failed=True, status_code=401)
        response = RedirectResponse(home, status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure_cookie)
        return response

    @app.get("/login")
    def login_form(request: Request, token: str = ""):
        # the address a daemon prints signs in once; the redirect takes the token out of the address bar
        return sign_in(request, token) if token else login_page(request, failed=False)

    @app.post("/login")
    def login(request: Request, token: str = Form("")):
        return sign_in(request, token)

    @app.get("/")
    def start():
        return RedirectResponse(home, status_code=303)

    return app, pages
