"""The coordinator console's page: what the run folder's newest checkpoint and the SuperLink say, read-only."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from server.store import RunStore
from server.superlink import CONNECTION, flwr
from shared_model.console.charts import by_round_svg
from shared_model.console.web import console_frame

HERE = Path(__file__).parent
TOKEN_FILE = "console-token"
TOKEN_HINT = ("This console shows the federation's rounds. Give the console token: the console-token file in the "
              "coordinator's state folder.")


def superlink_nodes(flwr_home: Path) -> Callable[[], list[dict]]:
    """The SuperLink's SuperNodes (`flwr supernode list`), asked at most every 5 s: node id, status, since when."""
    cache: dict = {"at": 0.0, "nodes": []}

    def nodes() -> list[dict]:
        if time.monotonic() - cache["at"] > 5:
            done = flwr(["supernode", "list", CONNECTION, "--format", "json"], flwr_home, timeout=30)
            try:
                cache["nodes"] = json.loads(done.stdout).get("nodes", []) if done.returncode == 0 else []
            except json.JSONDecodeError:
                cache["nodes"] = []
            cache["at"] = time.monotonic()
        return cache["nodes"]

    return nodes


KEY = re.compile(r"BEGIN PUBLIC KEY-----(.*?)-----END")


def refused_connections(superlink_log: str | Path | None, *, tail_bytes: int = 4_000_000) -> list[dict]:
    """Keys the SuperLink turned away (not registered), from its log: a fingerprint of each and how often."""
    path = Path(superlink_log) if superlink_log else None
    if path is None or not path.is_file():
        return []
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - tail_bytes))
        text = handle.read().decode(errors="replace")
    seen: dict[str, int] = {}
    for line in text.splitlines():
        if "No SuperNode found" in line:
            match = KEY.search(line.replace("\\n", ""))
            key = hashlib.sha256(match.group(1).strip().encode()).hexdigest()[:16] if match else "unknown key"
            seen[key] = seen.get(key, 0) + 1
    return [{"key": key, "attempts": count} for key, count in sorted(seen.items())]


def run_status(run_dir: str | Path, nodes: Callable[[], list[dict]] | None = None,
               superlink_log: str | Path | None = None) -> dict:
    """Rounds, quality, epsilon per merchant, refusals, and the SuperNodes with the merchant each one is."""
    state = RunStore(run_dir).latest_state() or {}
    history = state.get("history", [])
    labels = state.get("merchants", {}).get("labels", {})
    merchants = [{"node": node.get("node-id"), "merchant": labels.get(str(node.get("node-id")), ""),
                  "status": node.get("status"), "since": node.get("online-at") or ""} for node in (nodes() if nodes else [])]
    refused = [{"round": row["round"], "merchant": name, "why": why, "kind": kind}
               for row in history for kind in ("refused", "rejected", "evaluation-left-out")
               for name, why in (row.get(kind) or {}).items()]
    return {"run_id": state.get("run_id"), "rounds_planned": state.get("run_config", {}).get("num-rounds"),
            "history": history, "epsilon": state.get("epsilon", {}), "delta": state.get("delta", {}),
            "target_epsilon": state.get("run_config", {}).get("target-epsilon"), "merchants": merchants,
            "refused": refused, "final": state.get("final", {}),
            "refused_connections": refused_connections(superlink_log)}


def create_app(run_dir: str | Path, *, token: str, nodes: Callable[[], list[dict]] | None = None,
               superlink_log: str | Path | None = None, secure_cookie: bool = False) -> FastAPI:
    app, templates = console_frame(title="fedprofile coordinator", templates=HERE / "templates", token=token,
                                   home="/rounds", secure_cookie=secure_cookie, hint=TOKEN_HINT)

    @app.get("/rounds", response_class=HTMLResponse)
    def rounds(request: Request):
        return templates.TemplateResponse(request, "rounds.html",
                                          {"status": run_status(run_dir, nodes, superlink_log)})

    @app.get("/rounds/quality.svg")
    def quality():
        history = run_status(run_dir)["history"]
        series = {name: [row.get(name) for row in history] for name in ("ndcg@10", "hr@10")}
        return Response(by_round_svg([row["round"] for row in history], series, ylabel="test metric"),
                        media_type="image/svg+xml")

    return app
