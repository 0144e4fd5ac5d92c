"""What the console's federation page shows: model versions, epsilon against the policy, what left each round."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from client.policy import POLICY_FILE, PrivacyPolicy
from client.state import MODELS, MerchantState, sent_log
from shared_model.checkpoint import MANIFEST_FILE
from shared_model.privacy import PrivacyLedger


def model_versions(models: str | Path | None) -> list[dict]:
    """Published versions in a models folder, newest first: name, when it arrived, what it says about itself."""
    folder = Path(models) if models else None
    if folder is None or not folder.is_dir():
        return []
    latest = (folder / "LATEST").read_text().strip() if (folder / "LATEST").is_file() else None
    versions = []
    for path in sorted(folder.glob("v[0-9]*"), reverse=True):
        meta_file = path / MANIFEST_FILE
        try:
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        except json.JSONDecodeError:
            meta = {}
        versions.append({"version": path.name, "latest": path.name == latest,
                         "arrived": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime)),
                         "round": meta.get("round"), "run_id": meta.get("run_id")})
    return versions


def federation_status(*, models: str | Path | None, state_dir: str | Path | None, serving: str | None) -> dict:
    """Everything the federation page shows; a merchant serving without a federation has versions only."""
    status = {"serving": serving, "versions": model_versions(models), "in_federation": state_dir is not None,
              "epsilon": None, "delta": None, "steps": None, "policy": None, "sent": []}
    if state_dir is None:
        return status
    state_dir = Path(state_dir)
    if (state_dir / POLICY_FILE).is_file():
        status["policy"] = asdict(PrivacyPolicy.load(state_dir))
    state = MerchantState.load(state_dir)
    if state.ledger:
        ledger = PrivacyLedger.from_state_dict(state.ledger)
        status.update(epsilon=ledger.epsilon(), delta=ledger.target_delta, steps=ledger.steps_taken())
    status["sent"] = sent_log(state_dir)
    if not status["versions"]:
        status["versions"] = model_versions(state_dir / MODELS)
    return status
