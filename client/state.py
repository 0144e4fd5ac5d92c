"""What a merchant keeps between rounds: its privacy ledger, its local weights, and the last update it sent."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shared_model.checkpoint import publish_version
from shared_model.files import atomic_torch_save, atomic_write


@dataclass
class MerchantState:
    """Kept in the node's `context.state` and, when the merchant has a state folder, on disk too, so that a
    restarted merchant keeps its cumulative epsilon. `rounds` lists the (run id, server round) pairs already
    paid for: a round sent again (a restarted server) gets the stored update back instead of new training."""

    ledger: dict | None = None
    local: dict[str, torch.Tensor] = field(default_factory=dict)
    rounds: list[list] = field(default_factory=list)
    folder: Path | None = None

    LEDGER = "privacy-ledger.json"
    LOCAL = "local-weights.pt"
    LAST = "last-update.pt"

    @classmethod
    def load(cls, folder: str | Path | None, in_memory: dict | None = None) -> "MerchantState":
        folder = Path(folder) if folder else None
        if folder is not None and (folder / cls.LEDGER).exists():
            saved = json.loads((folder / cls.LEDGER).read_text())
            local = torch.load(folder / cls.LOCAL, weights_only=True) if (folder / cls.LOCAL).exists() else {}
            return cls(saved.get("ledger"), local, saved.get("rounds", []), folder)
        if in_memory:
            return cls(in_memory.get("ledger"), in_memory.get("local", {}), in_memory.get("rounds", []), folder)
        return cls(folder=folder)

    def as_memory(self) -> dict:
        return {"ledger": self.ledger, "local": self.local, "rounds": self.rounds}

    def already_paid(self, run_id: str, server_round: int) -> bool:
        return [run_id, server_round] in self.rounds

    def stored_update(self, run_id: str, server_round: int) -> dict | None:
        """The update sent for this round before, if it is the last one and kept on disk."""
        if self.folder is None or not (self.folder / self.LAST).exists():
            return None
        last = torch.load(self.folder / self.LAST, weights_only=True)  # data, never code
        return last if (last.get("run_id"), last.get("round")) == (run_id, server_round) else None

    def record(self, run_id: str, server_round: int, *, ledger: dict | None, local: dict, reply: dict | None) -> None:
        """Note a finished round; the ledger is written before anything else so that it can never lag behind."""
        self.ledger, self.local = ledger, local
        if [run_id, server_round] not in self.rounds:
            self.rounds.append([run_id, server_round])
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / self.LEDGER, json.dumps({"ledger": ledger, "rounds": self.rounds}).encode())
        atomic_torch_save(self.folder / self.LOCAL, local)
        if reply is not None:
            atomic_torch_save(self.folder / self.LAST, {"run_id": run_id, "round": server_round, **reply})


MODELS = "models"
LOCAL_WITH_IDS = "local.pt"
SENT_LOG = "sent.jsonl"


def log_sent(folder: str | Path, entry: dict) -> None:
    """Append what one reply carried out of the merchant (counts, never values) to the folder's sent log."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / SENT_LOG, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def sent_log(folder: str | Path, *, last: int = 200) -> list[dict]:
    """The newest `last` entries of the sent log, newest first (a line cut by a crash is skipped)."""
    path = Path(folder) / SENT_LOG
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines()[-last:]:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries[::-1]


def keep_global_model(folder: Path, model, server_round: int, run_id: str, *, item_ids=(), keep: int = 3) -> Path:
    """Keep the global model a round's evaluate message brought as `models/vNNNN` (with LATEST), where the
    merchant's on-site service picks it up; the merchant's own residual rows go beside it, keyed by item id so
    any catalogue can use them."""
    local = model.local_state()
    extra = {LOCAL_WITH_IDS: {"item_ids": [str(i) for i in item_ids], "state": {k: v.cpu() for k, v in local.items()}}} \
        if local else None
    return publish_version(Path(folder) / MODELS, server_round, model.config, model.shared_state(),
                           {"round": server_round, "run_id": run_id, "received_by": "merchant"}, keep=keep, extra=extra)
