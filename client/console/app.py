"""The console's pages: a FastAPI app over the on-site engine the gRPC service answers from."""

from __future__ import annotations

import csv
import hmac
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from client.onsite.engine import BEHAVIOR_NAMES, NoModelYet, OnsiteEngine
from shared_model.console.charts import segment_map_svg
from shared_model.console.server import ConsoleServer
from shared_model.console.web import console_frame, form_key

HERE = Path(__file__).parent
TOKEN_FILE = "console-token"
ADDRESS_FILE = "console-address"  # the daemon writes the console's URL here once it listens
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
TOKEN_HINT = ("This console shows customers' profiles. Give the console token: the console-token file in the "
              "merchant's state folder (beside the store for merchant serve).")


@dataclass(frozen=True)
class ConsoleSettings:
    """Who may look (the token), whether staff may change anything (`writable`: marking suspects reviewed),
    whether the cookie is TLS-only, and where the federation page reads from."""

    token: str
    writable: bool = False
    secure_cookie: bool = False
    federation: Callable[[], dict] | None = None  # client/console/federation.py's federation_status, bound


@dataclass(frozen=True)
class ConsoleOptions:
    """How a merchant's console listens: `port` (0: a free one), TLS files, and whether staff may mark reviews."""

    port: int = 8080
    host: str = "127.0.0.1"
    writable: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False

    def start(self, engine: OnsiteEngine, *, token: str, federation: Callable[[], dict] | None = None) -> ConsoleServer:
        settings = ConsoleSettings(token=token, writable=self.writable, secure_cookie=self.tls_cert is not None,
                                   federation=federation)
        return ConsoleServer(create_app(engine, settings), host=self.host, port=self.port, tls_cert=self.tls_cert,
                             tls_key=self.tls_key, insecure=self.insecure).start()


def _level(share: float, peak: float) -> int:
    """A heatmap cell's shade, 0-9 (the stylesheet colours each; pages carry no inline style)."""
    return 0 if peak <= 0 else max(0, min(9, round(9 * share / peak)))


def create_app(engine: OnsiteEngine, settings: ConsoleSettings) -> FastAPI:
    app, templates = console_frame(title="fedprofile console", templates=HERE / "templates", token=settings.token,
                                   home="/customers", secure_cookie=settings.secure_cookie, hint=TOKEN_HINT)
    key = form_key(settings.token)

    def page(request: Request, name: str, *, status_code: int = 200, **context) -> HTMLResponse:
        serving = engine.current.version if engine.current else None
        return templates.TemplateResponse(request, f"{name}.html", {
            "page": name, "version": serving, "writable": settings.writable, "form_key": key,
            "level": _level, **context}, status_code=status_code)

    @app.exception_handler(KeyError)  # UnknownUser is one too
    async def unknown(request: Request, exc: KeyError):
        return page(request, "error", heading="Not found", message=str(exc).strip("'\""), status_code=404)

    @app.exception_handler(NoModelYet)
    async def no_model(request: Request, exc: NoModelYet):
        return page(request, "error", heading="No model yet", message=str(exc), status_code=503)

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
        if not hmac.compare_digest(form_key.encode(), key.encode()):
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
