"""The console's pages: a FastAPI app over the on-site engine the gRPC service answers from."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from client.console.charts import segment_map_svg
from client.onsite.engine import BEHAVIOR_NAMES, OnsiteEngine, UnknownUser

HERE = Path(__file__).parent
COOKIE = "fedprofile_console"
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# Pages load nothing from elsewhere and run no script: a page that shows customer data cannot leak it by one.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class ConsoleSettings:
    """Who may look (the token), whether staff may change anything (`writable`: marking suspects reviewed),
    whether the cookie is TLS-only, and where the federation page reads from."""

    token: str
    writable: bool = False
    secure_cookie: bool = False
    federation: Callable[[], dict] | None = None  # client/console/federation.py's federation_status, bound

    def __post_init__(self):
        if len(self.token) < 16:
            raise ValueError("the console token must be at least 16 characters")

    def form_key(self) -> str:
        """What a form posts back to prove it came from a page this console served (with the token's cookie)."""
        return hmac.new(self.token.encode(), b"console-form", hashlib.sha256).hexdigest()


def _level(share: float, peak: float) -> int:
    """A heatmap cell's shade, 0-9 (the stylesheet colours each; pages carry no inline style)."""
    return 0 if peak <= 0 else max(0, min(9, round(9 * share / peak)))


def create_app(engine: OnsiteEngine, settings: ConsoleSettings) -> FastAPI:
    app = FastAPI(title="fedprofile console", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["clock"] = lambda at: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(at)))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def signed_in(request: Request) -> bool:
        given = request.cookies.get(COOKIE) or request.headers.get("authorization", "").removeprefix("Bearer ")
        return bool(given) and hmac.compare_digest(given.encode(), settings.token.encode())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if not request.url.path.startswith(("/login", "/static/")) and not signed_in(request):
            response = templates.TemplateResponse(request, "login.html", {"page": "login", "failed": False},
                                                  status_code=401)
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def page(request: Request, name: str, *, status_code: int = 200, **context) -> HTMLResponse:
        serving = engine.current.version if engine.current else None
        return templates.TemplateResponse(request, f"{name}.html", {
            "page": name, "version": serving, "writable": settings.writable, "form_key": settings.form_key(),
            "level": _level, **context}, status_code=status_code)

    @app.exception_handler(UnknownUser)
    async def unknown_user(request: Request, exc: UnknownUser):
        return page(request, "error", message=str(exc).strip("'\""), status_code=404)

    @app.exception_handler(KeyError)
    async def unknown_thing(request: Request, exc: KeyError):
        return page(request, "error", message=str(exc).strip("'\""), status_code=404)

    # ---- signing in ------------------------------------------------------------------------------------

    def sign_in(token: str) -> Response:
        if not hmac.compare_digest(token.encode(), settings.token.encode()):
            raise HTTPException(401, "wrong token")
        response = RedirectResponse("/customers", status_code=303)
        response.set_cookie(COOKIE, settings.token, httponly=True, samesite="strict", secure=settings.secure_cookie)
        return response

    @app.get("/login")
    def login_page(request: Request, token: str = ""):
        if token:  # the address the daemon prints: sign in once, the token leaves the address bar at once
            try:
                return sign_in(token)
            except HTTPException:
                return templates.TemplateResponse(request, "login.html", {"page": "login", "failed": True},
                                                  status_code=401)
        return templates.TemplateResponse(request, "login.html", {"page": "login", "failed": False})

    @app.post("/login")
    def login(request: Request, token: str = Form("")):
        try:
            return sign_in(token)
        except HTTPException:
            return templates.TemplateResponse(request, "login.html", {"page": "login", "failed": True},
                                              status_code=401)

    @app.get("/")
    def home():
        return RedirectResponse("/customers", status_code=303)

    # ---- customers --------------------------------------------------------------------------------------

    @app.get("/customers", response_class=HTMLResponse)
    def customers(request: Request, q: str = ""):
        found, _ = engine.find_users(q, limit=50)
        return page(request, "customers", query=q, found=found)

    @app.get("/customers/{user_id}", response_class=HTMLResponse)
    def customer(request: Request, user_id: str):
        profile, version = engine.profile(user_id)
        recommended, _ = engine.recommend(user_id, k=10)
        events = [{**e, "behavior_name": BEHAVIOR_NAMES.get(int(e["behavior"]), str(e["behavior"])),
                   "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(e["timestamp"])))}
                  for e in engine.recent_events(user_id, n=20).to_dict("records")]
        hours = {int(h["hour"]): float(h["share"]) for h in profile["active_hours"]}
        days = {str(d["day"]): float(d["share"]) for d in profile["active_days"]}
        peak = max([*hours.values(), *days.values(), 1e-9])
        return page(request, "customer", user_id=user_id, profile=profile, served_by=version,
                    recommended=recommended, events=events, hours=hours, days=days,
                    day_names=DAYS, peak=peak, reviewed=engine.store.reviews().get(str(user_id)))

    # ---- segments ---------------------------------------------------------------------------------------

    @app.get("/segments", response_class=HTMLResponse)
    def segments(request: Request):
        rows, _ = engine.segments()
        return page(request, "segments", segments=rows)

    @app.get("/segments/map.svg")
    def segment_map():
        points, labels, _ = engine.segment_map()
        rows, _ = engine.segments()
        svg = segment_map_svg(points, labels, {row["segment"]: row.get("name", "") for row in rows})
        return Response(svg, media_type="image/svg+xml")

    @app.get("/segments/{segment}", response_class=HTMLResponse)
    def segment(request: Request, segment: int):
        row, _ = engine.segment(segment=segment)
        members, _ = engine.segment_members(segment, limit=200)
        return page(request, "segment", segment=row, members=members)

    # ---- audiences --------------------------------------------------------------------------------------

    def chosen_audience(category: str, segment: str, min_propensity: float, n: int) -> list[dict]:
        n = max(1, min(int(n), 100_000))
        return engine.audience_preview(category, n=n, segment=int(segment) if segment.strip() else None,
                                       min_propensity=max(0.0, float(min_propensity)))[0]

    @app.get("/audiences", response_class=HTMLResponse)
    def audiences(request: Request, category: str = "", segment: str = "", min_propensity: float = 0.0,
                  n: int = 100):
        rows, _ = engine.segments()
        chosen = chosen_audience(category, segment, min_propensity, n) if category else None
        return page(request, "audiences", categories=engine.categories(), segments=rows, category=category,
                    segment=segment, min_propensity=min_propensity, n=n, chosen=chosen)

    @app.get("/audiences.csv")
    def audience_csv(category: str, segment: str = "", min_propensity: float = 0.0, n: int = 100):
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["user_id", "score", "segment", "purchase_propensity"])
        for row in chosen_audience(category, segment, min_propensity, n):
            writer.writerow([row["user_id"], row["score"], row["segment"], round(row["propensity"], 6)])
        name = "".join(c if c.isalnum() else "-" for c in category)[:40] or "audience"
        return Response(out.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="audience-{name}.csv"'})

    # ---- risk -------------------------------------------------------------------------------------------

    @app.get("/risk", response_class=HTMLResponse)
    def risk(request: Request, min_score: float = 0.5, top: int = 50, show: str = "open"):
        entries, _ = engine.risk(top=max(1, min(top, 1000)) * 4, min_score=min_score)
        reviews = engine.store.reviews()
        rows = [{**e, "review": reviews.get(e["user_id"])} for e in entries]
        if show == "open":
            rows = [r for r in rows if r["review"] is None]
        return page(request, "risk", rows=rows[:top], min_score=min_score, top=top, show=show)

    @app.post("/risk/{user_id}/review")
    def review(user_id: str, form_key: str = Form(""), note: str = Form("")):
        if not settings.writable:
            raise HTTPException(403, "this console is read-only: start it with --console-writable to mark reviews")
        if not hmac.compare_digest(form_key.encode(), settings.form_key().encode()):
            raise HTTPException(403, "this form did not come from this console")
        engine.risk(user_id=user_id)  # an unknown customer is an error, not a review of no one
        engine.store.mark_reviewed(user_id, by="console", note=note[:500])
        return RedirectResponse("/risk", status_code=303)

    # ---- federation -------------------------------------------------------------------------------------

    @app.get("/federation", response_class=HTMLResponse)
    def federation(request: Request):
        status = settings.federation() if settings.federation else {"versions": [], "in_federation": False}
        return page(request, "federation", status=status)

    return app
