"""The synthetic format: the built-in merchants generated in memory, or a folder `fedprofile data synthesize` wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from shared_model.data.catalogue import load_catalogue
from shared_model.data.eventlog import EventLog, finalize
from shared_model.data.formats import generic
from shared_model.data.synthetic import SyntheticConfig, generate, merge_merchants
from shared_model.data.validation import DataFileError, Quarantine


def load(path: str | Path | None, *, quarantine_path=None, config: SyntheticConfig | None = None) -> EventLog:
    """`path` None or 'builtin': generate the default merchants in memory; else a folder from `write`."""
    if path is None or str(path) == "builtin":
        merchants = generate(config or SyntheticConfig())
        return merge_merchants(merchants, quarantine_path=quarantine_path)
    path = Path(path)
    folders = [path] if (path / "events.csv").exists() else sorted(p.parent for p in path.glob("*/events.csv"))
    if not folders:
        raise DataFileError(f"{path}: no events.csv here or in its subfolders (write one with `fedprofile data synthesize`)")
    quarantine = Quarantine(quarantine_path)
    files = [folder / "events.csv" for folder in folders]
    log = finalize(*generic.load(files, quarantine, {}), quarantine, source=",".join(map(str, files)))
    users, truth = [], {}
    for folder in folders:
        frame = pd.read_csv(folder / "users.csv", dtype={"user_id": str, "gender": str, "region": str},
                            keep_default_na=False)
        frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
        users.append(frame)
        if (folder / "truth.json").exists():
            truth.update(json.loads((folder / "truth.json").read_text())["users"])
    log.users = pd.concat(users, ignore_index=True)
    log.truth = {"users": truth} if truth else None
    catalogues = [folder / "items.csv" for folder in folders if (folder / "items.csv").exists()]
    if catalogues:
        log.items = pd.concat([load_catalogue(f) for f in catalogues], ignore_index=True)
    return log
