"""The on-site model line: each global version a merchant receives is served, then the best on-site model in its place."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from pathlib import Path

from client.onsite.adjacency import ItemAdjacency, saved_weight
from client.onsite.engine import OnsiteEngine, saved_local_rows
from client.onsite.ensemble import SECOND_FILE, check_ensemble_weight, save_served
from client.onsite.personalise import OnsiteConfig, personalise, train_alone
from shared_model.checkpoint import open_model, resolve_model_folder
from shared_model.features import build_catalogue, build_sequences
from shared_model.files import write_pointer

log = logging.getLogger("fedprofile.onsite")
ONSITE = "onsite"  # beside `models` in the merchant's state folder; the ClientApp never reads it (docs/privacy.md)
_NUMBER = re.compile(r"\+local(\d+)$")


def global_part(version: str) -> str:
    """The global version a served version came from: `v0012@run+local3` -> `v0012@run`."""
    return version.split("+local")[0]


def saved_adjacency_weight(path: str | Path) -> float:
    """The blend weight a model file carries (`adjacency.saved_weight`): what the engine serves it with."""
    return saved_weight(open_model(path).blob)


class OnsiteFitter:
    """Serves each new global version at once, then, on the events in the engine's store, fine-tunes it and
    (once per change of the events) trains the merchant's own model, and serves whichever of the global model,
    its fine-tuned copy, the own model and the own model plus the federation's (a score ensemble, saved as its
    two parts) is best on its validation customers, blended with its item adjacency where that ranks them better
    (client/onsite/personalise.py), as `<global version>+local<n>`, kept in `folder`. No DP: none of it leaves
    the merchant.
    Nothing here feeds what the merchant sends: its ClientApp trains from the coordinator's message and its
    own DP-trained state, so the per-customer sensitivity of every update is the shared model's alone."""

    def __init__(self, engine: OnsiteEngine, folder: str | Path, config: OnsiteConfig = OnsiteConfig(), *,
                 keep: int = 2):
        self.engine, self.folder, self.config, self.keep = engine, Path(folder), config, keep
        self.fits: list[dict] = []  # what each fit measured, newest last
        self._alone_model, self._alone_key = None, None

    def fit(self, global_folder: str | Path) -> Path | None:
        """Fit on site against the global model in `global_folder`; publish the winner and return its folder,
        or None when the global model itself is best on the merchant's validation customers."""
        source = open_model(global_folder)
        events = self.engine.store.events()
        spec = source.config.hash_spec
        catalogue = build_catalogue(events, spec, self.engine.titles, self.engine.items)
        model, version, _ = source.build(catalogue, local_state=saved_local_rows(source.file.parent, catalogue),
                                         device=self.engine.device)
        data = build_sequences(events, self.engine.user_attributes, spec, max_len=source.config.max_len,
                               catalogue=catalogue)
        alone = self._alone(model, data, events) if self.config.alone_epochs > 0 else None
        adjacency = ItemAdjacency.from_training(data.train, catalogue.num_items) if self.config.blend else None
        served, figures = personalise(model, data, self.config, alone=alone, adjacency=adjacency,
                                      device=self.engine.device)
        self.fits.append({"global": version, **figures})
        if figures["chosen"] == "global" and figures["adjacency-weight"] == 0:
            log.info("on-site fit of %s: the global model stays (validation NDCG@10 %.4f, no candidate beat it)",
                     version, figures["global-valid-ndcg@10"])
            return None
        number = self._last_number() + 1
        label = f"{version}+local{number}"
        out = self.folder / f"{Path(source.file.parent).name}+local{number}"
        out.mkdir(parents=True, exist_ok=True)
        save_served(out, served, catalogue,
                    metadata={"version": label, "base": str(Path(source.file.parent).resolve()), **figures})
        write_pointer(self.folder / "LATEST", out.name)
        self._prune(out)
        log.info("on-site fit of %s: the %s model, blend %g, is better on validation (NDCG@10 %.4f against %.4f); "
                 "next: %s", version, figures["chosen"], figures["adjacency-weight"], figures["valid-ndcg@10"],
                 figures["global-valid-ndcg@10"], label)
        return out

    def _alone(self, template, data, events):
        """The merchant's own model, trained again only when its events changed since the last time."""
        key = (len(events), int(events["timestamp"].max()), data.catalogue.num_items)
        if self._alone_model is None or self._alone_key != key:
            self._alone_model, _ = train_alone(template, data, self.config, device=self.engine.device)
            self._alone_key = key
        return self._alone_model

    def fitted_for(self, global_folder: str | Path) -> Path | None:
        """The on-site model already fitted on `global_folder`, if the latest one is (a restart serves it)."""
        try:
            latest = resolve_model_folder(self.folder)
            metadata = json.loads(open_model(latest).blob.get("metadata_json", "{}"))
            if metadata.get("ensemble-weight") is not None:  # both parts readable, or fitted again
                check_ensemble_weight(metadata["ensemble-weight"])
                open_model(latest / SECOND_FILE)
        except (FileNotFoundError, ValueError):
            return None
        return latest if metadata.get("base") == str(Path(global_folder).resolve()) else None

    def step(self, models: str | Path) -> str | None:
        """One pass: serve the newest global version in `models` and its on-site fit (fitting it if needed).
        Returns the version served, or None when `models` holds none yet."""
        try:
            target = resolve_model_folder(models)
        except FileNotFoundError:
            return None
        if not target.exists():
            return None
        fitted = self.fitted_for(target)
        if fitted is None:
            self.engine.load_model(target)  # customers get the newer global model while the fit runs
            if self.config.epochs <= 0 and self.config.alone_epochs <= 0 and not self.config.blend:
                return self.engine.current.version
            fitted = self.fit(target)
            if fitted is None or resolve_model_folder(models) != target:  # none, or a newer one arrived meanwhile
                return self.engine.current.version
        return self.engine.load_model(fitted)  # with the weight saved beside it

    def watch(self, models: str | Path, *, interval: float = 2.0, stop: threading.Event | None = None) -> threading.Thread:
        """Poll `models` and run `step` whenever LATEST moves (the engine's watch, fitting as well as loading)."""
        return self.engine.watch(models, interval=interval, stop=stop, on_new=lambda _: self.step(models),
                                 name="onsite-fit")

    def _last_number(self) -> int:
        numbers = [int(m.group(1)) for p in self.folder.glob("*+local*") if (m := _NUMBER.search(p.name))]
        return max(numbers, default=0)

    def _prune(self, newest: Path) -> None:
        fitted = sorted((p for p in self.folder.glob("*+local*") if p.is_dir() and p != newest),
                        key=lambda p: p.stat().st_mtime_ns)
        for old in fitted[: max(0, len(fitted) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
