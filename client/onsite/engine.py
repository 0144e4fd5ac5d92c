"""The merchant's on-site engine: profiles, recommendations, segments, audiences and risk from the newest model."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from client.onsite.adjacency import ItemAdjacency, check_weight, saved_weight
from client.onsite.ensemble import served_model
from client.onsite.profile import ProfileSettings, profile_users
from client.onsite.profile_shapes import profile_record
from client.onsite.recommend import ItemIndex, Scored
from client.onsite.risk import replace_rows
from client.onsite.segments import Segmenter, audience, fit_segments, summarize_segments
from client.onsite.store import ProfileStore, Retention, SQLiteStore
from client.state import LOCAL_WITH_IDS
from shared_model.checkpoint import open_model, resolve_model_folder
from shared_model.data.catalogue import load_catalogue
from shared_model.data.eventlog import EventLog
from shared_model.data.loaders import load_events
from shared_model.data.schema import Behavior
from shared_model.data.stream import validate_records
from shared_model.data.validation import ValidationSummary
from shared_model.features import Catalogue, build_catalogue

log = logging.getLogger("fedprofile.onsite")
BEHAVIOR_NAMES = {int(b): b.name.lower() for b in Behavior}
RECENT_EVENTS = 10  # recent events kept per user for "why" reasons
RISK_FIT_CUTOFF = 0.9  # users scoring above this are left out when segments are fitted (still assigned)


class UnknownUser(KeyError):
    """No events and no profile for this user at this merchant."""


class NoModelYet(RuntimeError):
    """Nothing to answer from: no model version has been loaded (a merchant waiting for the federation's first)."""


@dataclass
class UserState:
    """What the engine keeps in memory per user for one model version (the profile itself is in the store)."""

    vector: np.ndarray  # (k,) float32
    propensity: float
    next_categories: np.ndarray  # (C,) over ServingModel.categories
    interests: list
    segment: int
    purchased: np.ndarray  # catalogue indices the user bought
    recent: np.ndarray  # newest first, catalogue indices
    recent_names: dict
    risk_score: float
    risk_reasons: list


@dataclass
class ServingModel:
    """One model version with everything derived from it; replaced as a whole when a newer version arrives."""

    version: str
    model: torch.nn.Module
    catalogue: Catalogue  # built with the model's hash spec from every event known when it was loaded
    index: ItemIndex
    categories: np.ndarray
    segmenter: Segmenter
    segments: list[dict]
    users: dict[str, UserState] = field(default_factory=dict)
    adjacency: ItemAdjacency | None = None  # the on-site blend: counts from the store's events at load time
    blend: float = 0.0  # its weight, chosen on site (client/onsite/personalise.py); 0 = the model alone

    def boost(self, state: UserState) -> tuple[np.ndarray, np.ndarray] | None:
        """(items, added scores) next to the user's newest item, or None without a blend."""
        if self.adjacency is None or self.blend == 0 or len(state.recent) == 0:
            return None
        items, scores = self.adjacency.log_row(int(state.recent[0]))
        return items, self.blend * scores

    def next_to(self, state: UserState) -> dict[int, int] | None:
        if self.adjacency is None or self.blend == 0 or len(state.recent) == 0:
            return None
        return self.adjacency.neighbours(int(state.recent[0]))


class OnsiteEngine:
    """Serves from `current` (a ServingModel); `load_model` builds the next one aside and swaps the reference,
    so requests in flight finish on the version they started with and none is dropped."""

    def __init__(self, store: ProfileStore, users: pd.DataFrame, *, titles: pd.Series | None = None,
                 items: pd.DataFrame | None = None, settings: ProfileSettings = ProfileSettings(), segments: int = 5, device: str | torch.device = "cpu"):
        self.store = store
        self.titles = titles
        self.items = items  # the catalogue file: items no event mentions, stock
        self.user_attributes = users
        self.settings = settings
        self.k_segments = segments
        self.device = torch.device(device)
        self.current: ServingModel | None = None
        self._write = threading.Lock()  # one writer at a time: ingests and model swaps
        self._signals: pd.DataFrame | None = None
        self.window_start: int | None = None
        self.now: int | None = None
        self.on_swap: list = []  # callables(version) run after each model swap

    # ---- start-up and model versions -------------------------------------------------------------------

    @classmethod
    def from_log(cls, store: ProfileStore, log_: EventLog, **kwargs) -> "OnsiteEngine":
        """Fill an empty store with a merchant's cleaned events (a non-empty store keeps its own, which
        include events ingested earlier)."""
        if store.count_events() == 0:
            store.add_events(log_.events)
        return cls(store, log_.users, titles=log_.item_titles, items=log_.items, **kwargs)

    def close(self) -> None:
        self.store.close()

    def load_model(self, path: str | Path, *, adjacency_weight: float | None = None) -> str:
        """Load a model version, profile every user with it, then make it the one that serves; its scores are
        blended with the item adjacency of every event in the store at `adjacency_weight`, by default the weight
        saved with an on-site fit (`saved_weight`: never a received model's)."""
        with self._write:
            started = time.perf_counter()
            events = self.store.events()
            if len(events) == 0:
                raise ValueError("no events to build profiles from; give the merchant's data")
            source = open_model(path)
            adjacency_weight = saved_weight(source.blob) if adjacency_weight is None else check_weight(adjacency_weight)
            catalogue = build_catalogue(events, source.config.hash_spec, self.titles, self.items)
            model, version, _ = source.build(catalogue, device=self.device,
                                             local_state=saved_local_rows(source.file.parent, catalogue))
            model = served_model(source, model, catalogue, device=self.device)
            if self.current is not None and self.current.version == version and self.current.blend == adjacency_weight:
                return version
            ts = events["timestamp"].to_numpy()
            self.window_start = int(ts.min()) if self.window_start is None else self.window_start
            self.now = int(ts.max())  # the service's clock is the newest event it has seen
            batch = profile_users(model, events, self.user_attributes, catalogue, device=self.device,
                                  now=self.now, window_start=self.window_start, settings=self.settings,
                                  model_version=version)
            trusted = batch.risk["score"].reindex(batch.user_ids).to_numpy() < RISK_FIT_CUTOFF
            segmenter, labels = fit_segments(batch.described, batch.outputs.vectors,
                                             k=min(self.k_segments, len(batch.user_ids)), fit_on=trusted)
            summaries = summarize_segments(batch.described, labels, batch.outputs.propensity)
            serving = ServingModel(version, model, catalogue, ItemIndex(model, catalogue, device=self.device).batched(),
                                   batch.outputs.categories, segmenter, summaries, blend=adjacency_weight,
                                   adjacency=ItemAdjacency.from_events(events, catalogue) if adjacency_weight else None)
            self._install(serving, batch, labels, events)
            self._signals = batch.signals
            previous = self.current
            self.current = serving  # the swap: one reference assignment
            self.store.drop_other_versions(version)
            for callback in self.on_swap:
                callback(version)
            log.info("serving model %s (%d profiles, %.1fs)%s", version, len(batch.profiles), time.perf_counter() - started,
                     f", replacing {previous.version}" if previous else "")
            return version

    @staticmethod
    def _histories(events: pd.DataFrame, catalogue: Catalogue) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
        index = catalogue.index_of(events["item_id"].to_numpy(dtype=object))
        frame = pd.DataFrame({"user_id": events["user_id"].to_numpy(dtype=object), "item": index,
                              "behavior": events["behavior"].to_numpy()})
        out = {}
        for user, group in frame.groupby("user_id", sort=False):
            items, behaviors = group["item"].to_numpy(), group["behavior"].to_numpy()
            bought = np.unique(items[(behaviors == int(Behavior.PURCHASE)) & (items > 0)])
            recent, names = [], {}
            for item, b in zip(items[::-1], behaviors[::-1]):
                if item > 0 and item not in names:
                    names[int(item)] = BEHAVIOR_NAMES.get(int(b), "seen")
                    recent.append(int(item))
                    if len(recent) == RECENT_EVENTS:
                        break
            out[user] = (bought, np.asarray(recent, dtype=np.int64), names)
        return out

    @staticmethod
    def _state(batch, row: int, segment: int, histories) -> UserState:
        user = batch.user_ids[row]
        bought, recent, names = histories.get(user, (np.zeros(0, np.int64), np.zeros(0, np.int64), {}))
        risk = batch.risk.loc[user]
        return UserState(batch.outputs.vectors[row].astype(np.float32), float(batch.outputs.propensity[row]),
                         batch.outputs.next_categories[row], list(batch.described.loc[user, "interests"]), segment,
                         bought, recent, names, float(risk["score"]), list(risk["reasons"]))

    def watch(self, folder: str | Path, *, interval: float = 2.0, stop: threading.Event | None = None,
              on_new=None, name: str = "model-watch") -> threading.Thread:
        """Poll `folder` (a models folder with LATEST, or a run folder) and, for each newer version, call
        `on_new(version_folder)` (default: load it)."""
        stop = stop or threading.Event()
        on_new = on_new or self.load_model

        def loop():
            seen = None
            while not stop.wait(interval):
                try:
                    target = resolve_model_folder(folder)
                except FileNotFoundError:
                    continue
                if target != seen and target.exists():
                    try:
                        on_new(target)
                        seen = target
                    except Exception:  # a half-published or bad model must not stop serving
                        log.exception("could not serve model %s; still serving %s", target,
                                      self.current.version if self.current else None)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        return thread

    # ---- answers -------------------------------------------------------------------------------------------

    def _serving(self) -> ServingModel:
        serving = self.current
        if serving is None:
            raise NoModelYet("no model loaded yet: profiles appear once the federation sends its first model "
                             "(or give the merchant --model)")
        return serving

    def _user(self, serving: ServingModel, user_id: str) -> UserState:
        state = serving.users.get(str(user_id))
        if state is None:
            raise UnknownUser(f"no customer {str(user_id)[:64]!r} at this merchant")
        return state

    def profile(self, user_id: str) -> tuple[dict, str]:
        serving = self._serving()
        self._user(serving, user_id)
        record = self.store.get_profile(str(user_id), serving.version)
        if record is None:  # swapped between the two reads: the next version's row is the right one
            serving = self._serving()
            record = self.store.get_profile(str(user_id), serving.version)
        if record is None:
            raise UnknownUser(f"no profile for {str(user_id)[:64]!r} under model {serving.version}")
        self.store.record_answer("GetProfile", str(user_id), serving.version)
        return record, serving.version

    def recommend(self, user_id: str, *, k: int = 10, category: str | None = None, min_price: float | None = None,
                  max_price: float | None = None, in_stock_only: bool = False,
                  include_purchased: bool = False) -> tuple[list[Scored], str]:
        serving = self._serving()
        state = self._user(serving, user_id)
        ranked = serving.index.recommend(state.vector, k=k, exclude=None if include_purchased else state.purchased,
                                         category=category, min_price=min_price, max_price=max_price,
                                         in_stock_only=in_stock_only, boost=serving.boost(state))
        items = serving.index.scored(ranked, recent=state.recent, interests=state.interests,
                                     recent_names=state.recent_names, next_to=serving.next_to(state))
        self.store.record_answer("Recommend", str(user_id), serving.version)
        return items, serving.version

    def rerank(self, user_id: str, item_ids: list[str]) -> tuple[list[Scored], list[str], str]:
        serving = self._serving()
        state = self._user(serving, user_id)
        index = serving.index.index_of(item_ids)
        unknown = [item for item, i in zip(item_ids, index) if i == 0]
        ranked = serving.index.rerank(state.vector, index[index > 0], boost=serving.boost(state))
        items = serving.index.scored(ranked, recent=state.recent, interests=state.interests,
                                     recent_names=state.recent_names, next_to=serving.next_to(state))
        self.store.record_answer("Rerank", str(user_id), serving.version)
        return items, unknown, serving.version

    def segment(self, *, user_id: str | None = None, segment: int | None = None) -> tuple[dict, str]:
        serving = self._serving()
        if user_id:
            segment = self._user(serving, user_id).segment
        if segment is None or not 0 <= segment < len(serving.segments):
            raise KeyError(f"segment {segment} does not exist; there are {len(serving.segments)}")
        self.store.record_answer("GetSegment", str(user_id or ""), serving.version)
        return serving.segments[segment], serving.version

    def segments(self) -> tuple[list[dict], str]:
        serving = self._serving()
        return serving.segments, serving.version

    def audience(self, category: str, n: int) -> tuple[list[tuple[str, float]], str]:
        serving = self._serving()
        users = list(serving.users.items())
        chosen = audience(np.array([u for u, _ in users], dtype=object), np.array([s.propensity for _, s in users]),
                          np.stack([s.next_categories for _, s in users]), serving.categories,
                          [s.interests for _, s in users], category, n)
        self.store.record_answer("Audience", "", serving.version)
        return chosen, serving.version

    def risk(self, *, user_id: str | None = None, top: int = 10, min_score: float = 0.0) -> tuple[list[dict], str]:
        serving = self._serving()
        if user_id:
            state = self._user(serving, user_id)
            entries = [{"user_id": str(user_id), "score": state.risk_score, "reasons": state.risk_reasons}]
        else:
            ranked = sorted(serving.users.items(), key=lambda kv: -kv[1].risk_score)
            entries = [{"user_id": u, "score": s.risk_score, "reasons": s.risk_reasons}
                       for u, s in ranked if s.risk_score >= min_score][:top]
        self.store.record_answer("RiskReport", str(user_id or ""), serving.version)
        return entries, serving.version

    # ---- what the console reads (the same serving model the gRPC calls answer from) -----------------------

    def find_users(self, query: str, *, limit: int = 25) -> tuple[list[str], str]:
        """Customer ids containing `query` (case-insensitive), in id order."""
        serving = self._serving()
        query = str(query).strip().lower()
        found = sorted(u for u in serving.users if query in u.lower()) if query else sorted(serving.users)
        return found[:limit], serving.version

    def recent_events(self, user_id: str, *, n: int = 20) -> pd.DataFrame:
        """A customer's newest `n` events from the store, newest first."""
        events = self.store.events([str(user_id)])
        return events.iloc[::-1].head(n).reset_index(drop=True)

    def segment_members(self, segment: int, *, limit: int = 200) -> tuple[list[dict], str]:
        """Members of a segment, most likely to buy first."""
        serving = self._serving()
        members = [{"user_id": u, "propensity": s.propensity, "risk_score": s.risk_score}
                   for u, s in serving.users.items() if s.segment == segment]
        members.sort(key=lambda m: -m["propensity"])
        return members[:limit], serving.version

    def segment_map(self, *, max_points: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
        """Profile vectors projected on their first two principal axes: (N, 2) points and (N,) segments, a
        random `max_points` of the customers at most."""
        serving = self._serving()
        states = list(serving.users.values())
        if len(states) > max_points:
            keep = np.random.default_rng(seed).choice(len(states), max_points, replace=False)
            states = [states[i] for i in sorted(keep)]
        vectors = np.stack([s.vector for s in states]).astype(np.float64)  # (N, k)
        centred = vectors - vectors.mean(0)
        _, _, axes = np.linalg.svd(centred, full_matrices=False)  # rows: principal axes
        return centred @ axes[:2].T, np.array([s.segment for s in states]), serving.version

    def audience_preview(self, category: str, *, n: int, segment: int | None = None,
                         min_propensity: float = 0.0) -> tuple[list[dict], str]:
        """The Audience call's ranking for `category`, narrowed to one segment and a purchase-propensity floor;
        without those it is exactly the Audience call's answer."""
        serving = self._serving()
        ranked, version = self.audience(category, len(serving.users))
        chosen = []
        for user_id, score in ranked:
            state = serving.users.get(user_id)
            if state is None or (segment is not None and state.segment != segment) or state.propensity < min_propensity:
                continue
            chosen.append({"user_id": user_id, "score": score, "segment": state.segment,
                           "propensity": state.propensity})
            if len(chosen) == n:
                break
        return chosen, version

    def categories(self) -> list[str]:
        return sorted(str(c) for c in self._serving().categories)

    # ---- real-time updates --------------------------------------------------------------------------------

    def ingest(self, records: list[dict], *, source: str = "stream") -> dict:
        """Validate new events, keep them (rejects go to the quarantine with reasons) and refresh the profiles
        of the users they belong to with the serving model: no retraining."""
        accepted, rejected, summary = validate_records(records, source=source)
        with self._write:
            serving = self._serving()
            self.store.quarantine(rejected, source=source)
            updated: list[str] = []
            if len(accepted):
                self.store.add_events(accepted)
                updated = list(dict.fromkeys(accepted["user_id"].astype(str)))
                self._refresh(serving, updated)
        return {
            "received": summary.rows_read, "accepted": summary.rows_accepted,
            "quarantined": summary.rows_quarantined,
            "rejections": [{"index": int(r["row"]) - 1, "field": str(r["field"]), "reason": str(r["reason"])}
                           for r in rejected.to_dict("records")],
            "users_updated": updated, "model_version": serving.version,
        }

    def _refresh(self, serving: ServingModel, user_ids: list[str]) -> None:
        events = self.store.events(user_ids)
        self.now = max(self.now or 0, int(events["timestamp"].max()))
        batch = profile_users(serving.model, events, self.user_attributes, serving.catalogue, device=self.device,
                              now=self.now, window_start=self.window_start, settings=self.settings,
                              model_version=serving.version, population=self._signals)
        labels = serving.segmenter.assign(batch.described, batch.outputs.vectors)
        self._install(serving, batch, labels, events)
        self._signals = replace_rows(self._signals, batch.signals)

    def _install(self, serving: ServingModel, batch, labels: np.ndarray, events: pd.DataFrame) -> None:
        """Write the batch's profiles (with their segments) to the store, then to the serving model's memory."""
        records = [profile_record(profile, segment=int(labels[row])) for row, profile in enumerate(batch.profiles)]
        self.store.put_profiles(serving.version, records)
        histories = self._histories(events, serving.catalogue)
        for row, profile in enumerate(batch.profiles):
            serving.users[profile.user_id] = self._state(batch, row, int(labels[row]), histories)


def open_engine(data: str, fmt: str, *, store: Path, quarantine: Path, catalogue: Path | None = None,
                retention: Retention | None = None, **kwargs) -> tuple[OnsiteEngine, ValidationSummary]:
    """The one place an on-site engine is assembled (the daemon, `merchant serve` and the profile commands): the
    merchant's cleaned events (rejected rows to `quarantine`) in the SQLite store at `store`, with its catalogue
    file when given (rejected rows beside `quarantine`). Returns the engine, which owns the store, and the
    data's row accounting. Raises DataFileError or ValueError on data it cannot read."""
    log_ = load_events(data, fmt, quarantine_path=quarantine)
    if catalogue is not None:
        log_.items = load_catalogue(catalogue, quarantine_path=Path(quarantine).with_name("catalogue.quarantine.csv"))
    return OnsiteEngine.from_log(SQLiteStore(store, retention=retention), log_, **kwargs), log_.summary


def saved_local_rows(folder: Path, catalogue: Catalogue) -> dict | None:
    """The merchant's local residual rows saved beside a received model, re-indexed to `catalogue` by item id
    (items it has not trained on start at zero)."""
    file = Path(folder) / LOCAL_WITH_IDS
    if not file.is_file():
        return None
    saved = torch.load(file, map_location="cpu", weights_only=True)  # data, never code
    source = {item: row for row, item in enumerate(saved["item_ids"])}
    rows = np.array([source.get(str(item), -1) for item in catalogue.item_ids])
    rows[0] = -1  # padding
    out = {}
    for name, table in saved["state"].items():
        fresh = torch.zeros(len(catalogue.item_ids), table.shape[1], dtype=table.dtype)
        hit = rows >= 0
        fresh[torch.from_numpy(np.flatnonzero(hit))] = table[torch.from_numpy(rows[hit])]
        out[name] = fresh
    return out
