"""Event features, hashed item descriptors, and one sequence per user with a leave-one-out split."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from shared_model.data.schema import Behavior

# Fixed 16-byte keys: hashes must agree across merchants and runs so shared tables mean the same thing.
_KEY_ITEM_A = "fedprofile-itm-a"
_KEY_ITEM_B = "fedprofile-itm-b"
_KEY_CATEGORY = "fedprofile-categ"
_KEY_BRAND = "fedprofile-brand"
_KEY_TOKEN = "fedprofile-token"
TITLE_TOKENS = 12  # hashed title words per item
_STOPWORDS = frozenset("and the for with of in to by a an oz ml fl pack count ounce set".split())

# Columns of an item descriptor row, in order, followed by TITLE_TOKENS hashed title words.
ITEM_FIELDS = ("hash_a", "hash_b", "category", "brand", "price")
# Per-event input tensors, in the order the model's forward takes them.
EVENT_FIELDS = ("items", "behaviors", "hours", "weekdays", "gaps")
AGE_EDGES = np.array([18, 25, 35, 45, 55])  # bands: unknown, <18, 18-24, 25-34, 35-44, 45-54, 55+
NUM_AGE_BANDS = len(AGE_EDGES) + 2
NUM_GENDERS = 3  # unknown, F, M


@dataclass(frozen=True)
class HashSpec:
    """Sizes of the hashed tables; part of the model config, so every merchant hashes alike."""

    item_buckets: int
    category_buckets: int
    brand_buckets: int
    price_buckets: int
    gap_buckets: int
    token_buckets: int


def stable_bucket(values: np.ndarray, *, key: str, buckets: int) -> np.ndarray:
    """Map strings to 1..buckets-1 with a keyed hash that is the same on every machine; 0 stays for padding."""
    hashed = pd.util.hash_array(np.asarray(values, dtype=object), hash_key=key, categorize=True)
    return (1 + hashed % np.uint64(buckets - 1)).astype(np.int64)


def price_bucket(price: np.ndarray, buckets: int) -> np.ndarray:
    """Half-octave log-price buckets on a fixed scale (comparable across merchants); 0 = unknown."""
    price = np.asarray(price, dtype=np.float64)
    level = np.floor(2 * np.log2(np.nan_to_num(price, nan=0.0) + 1.0))
    out = 1 + np.clip(level, 0, buckets - 2).astype(np.int64)
    return np.where(np.isnan(price), 0, out)


def gap_bucket(gap_seconds: np.ndarray, first: np.ndarray, buckets: int) -> np.ndarray:
    """0 pad, 1 first event, 2 <1 min, 3 <1 h, 4 <1 day, then one bucket per doubling of days."""
    gap = np.asarray(gap_seconds, dtype=np.float64)
    days = gap / 86_400
    out = np.where(gap < 60, 2, np.where(gap < 3600, 3, np.where(days < 1, 4, 5 + np.floor(np.log2(np.maximum(days, 1))))))
    out = np.clip(out, 2, buckets - 1).astype(np.int64)
    return np.where(first, 1, out)


def age_band(age: np.ndarray) -> np.ndarray:
    age = np.asarray(age, dtype=np.float64)
    return np.where(np.isnan(age), 0, 1 + np.searchsorted(AGE_EDGES, np.nan_to_num(age), side="right"))


@dataclass
class Catalogue:
    """A merchant's items, indexed 1..N (0 is padding), with the descriptors the model hashes."""

    item_ids: np.ndarray  # (N+1,) raw ids as text, [0] = ""
    categories: np.ndarray  # (N+1,) raw category ids
    brands: np.ndarray  # (N+1,)
    prices: np.ndarray  # (N+1,) float, NaN unknown
    descriptors: torch.Tensor  # (N+1, len(ITEM_FIELDS) + TITLE_TOKENS) long
    titles: np.ndarray | None = None  # (N+1,) text, "" unknown
    in_stock: np.ndarray | None = None  # (N+1,) bool from the merchant's catalogue file (None: all in stock)

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    def index_of(self, item_ids) -> np.ndarray:
        lookup = pd.Series(np.arange(len(self.item_ids)), index=self.item_ids)
        return lookup.reindex(np.asarray(item_ids, dtype=object)).fillna(0).to_numpy(dtype=np.int64)

    def state_dict(self) -> dict:
        """Tensors, strings and lists only: what `torch.load(weights_only=True)` reads back."""
        return {"item_ids": [str(v) for v in self.item_ids], "categories": [str(v) for v in self.categories],
                "brands": [str(v) for v in self.brands], "prices": torch.from_numpy(np.asarray(self.prices, np.float64)),
                "descriptors": self.descriptors,
                "titles": None if self.titles is None else [str(v) for v in self.titles],
                "in_stock": None if self.in_stock is None else torch.from_numpy(np.asarray(self.in_stock, bool))}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Catalogue":
        text = lambda values: None if values is None else np.asarray(values, dtype=object)  # noqa: E731
        return cls(text(state["item_ids"]), text(state["categories"]), text(state["brands"]),
                   state["prices"].numpy(), state["descriptors"], text(state["titles"]),
                   None if state["in_stock"] is None else state["in_stock"].numpy())


def title_tokens(titles: np.ndarray, spec: HashSpec) -> np.ndarray:
    """(N, TITLE_TOKENS) hashed words of each title, 0-padded; words are lower-cased alphanumerics."""
    out = np.zeros((len(titles), TITLE_TOKENS), dtype=np.int64)
    words = pd.Series(titles, dtype=object).fillna("").astype(str).str.lower().str.findall(r"[a-z0-9]+")
    rows, tokens = [], []
    for i, ws in enumerate(words):
        kept = list(dict.fromkeys(w for w in ws if len(w) > 1 and w not in _STOPWORDS))[:TITLE_TOKENS]
        rows.extend([i] * len(kept))
        tokens.extend(kept)
    if tokens:
        cols = np.concatenate([np.arange(c) for c in np.bincount(rows, minlength=len(titles))])
        out[np.asarray(rows), cols] = stable_bucket(np.asarray(tokens, dtype=object), key=_KEY_TOKEN,
                                                    buckets=spec.token_buckets)
    return out


def build_catalogue(events: pd.DataFrame, spec: HashSpec, titles: pd.Series | None = None,
                    items: pd.DataFrame | None = None) -> Catalogue:
    """One row per item with its latest category, brand, known price, and title words where known. `items`
    (a catalogue file, see loaders.load_catalogue) adds items no event mentions and overrides what events say."""
    last = events.groupby("item_id", sort=True).agg(
        category_id=("category_id", "last"), brand=("brand", "last"), price=("price", "last")
    )
    stock = None
    if items is not None and len(items):
        listed = items.drop_duplicates("item_id", keep="last").set_index("item_id")
        merged = last.reindex(last.index.union(listed.index))
        for column in ("category_id", "brand", "price"):
            given = listed[column].replace("", np.nan) if column != "price" else listed[column]
            merged.loc[given.dropna().index, column] = given.dropna()
        merged["category_id"] = merged["category_id"].fillna("").astype(str)
        merged["brand"] = merged["brand"].fillna("").astype(str)
        merged["price"] = merged["price"].astype(np.float64)
        last = merged.sort_index()
        if "title" in listed.columns:
            named = listed["title"][listed["title"].fillna("") != ""]
            titles = named if titles is None else pd.concat([titles[~titles.index.isin(named.index)], named])
        stock = listed["in_stock"].reindex(last.index).fillna(True).to_numpy(dtype=bool) if "in_stock" in listed else None
    item_ids = np.concatenate([[""], last.index.to_numpy(dtype=object)])
    categories = np.concatenate([[""], last["category_id"].to_numpy(dtype=object)])
    brands = np.concatenate([[""], last["brand"].to_numpy(dtype=object)])
    prices = np.concatenate([[np.nan], last["price"].to_numpy(dtype=np.float64)])
    desc = np.stack(
        [
            stable_bucket(item_ids, key=_KEY_ITEM_A, buckets=spec.item_buckets),
            stable_bucket(item_ids, key=_KEY_ITEM_B, buckets=spec.item_buckets),
            stable_bucket(categories, key=_KEY_CATEGORY, buckets=spec.category_buckets),
            np.where(brands == "", 0, stable_bucket(brands, key=_KEY_BRAND, buckets=spec.brand_buckets)),
            price_bucket(prices, spec.price_buckets),
        ],
        axis=1,
    )
    title_text = titles.reindex(item_ids).fillna("").to_numpy(dtype=object) if titles is not None else np.full(len(item_ids), "", dtype=object)
    desc = np.concatenate([desc, title_tokens(title_text, spec)], axis=1)
    desc[0] = 0
    in_stock = None if stock is None else np.concatenate([[False], stock])
    return Catalogue(item_ids, categories, brands, prices, torch.from_numpy(desc), title_text, in_stock)


def category_bucket(categories, spec: HashSpec) -> np.ndarray:
    return stable_bucket(np.asarray(categories, dtype=object), key=_KEY_CATEGORY, buckets=spec.category_buckets)


@dataclass
class SequenceSet:
    """Right-padded per-user tensors: one row is one user, i.e. one example for user-level DP."""

    events: dict[str, torch.Tensor]  # each (U, L) long, keys EVENT_FIELDS
    genders: torch.Tensor  # (U,)
    ages: torch.Tensor  # (U,)
    lengths: torch.Tensor  # (U,) number of real events per row
    user_ids: np.ndarray  # (U,) raw ids
    target_items: torch.Tensor | None = None  # (U, L) next item per position (train) or (U,) held-out item
    target_categories: torch.Tensor | None = None  # (U, L) next event's category bucket
    target_purchase: torch.Tensor | None = None  # (U, L) float: purchase within the horizon, -1 on padding
    history: list[np.ndarray] | None = None  # per user, every item seen before the held-out one

    def __len__(self) -> int:
        return len(self.user_ids)

    def positions_per_user(self) -> float:
        """Scored next-item positions per user (a training set's mean); 0 for an empty set."""
        return float((self.target_items > 0).sum()) / len(self) if len(self) else 0.0

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Flat tuple for a TensorDataset: event fields, genders, ages, then training targets."""
        base = tuple(self.events[name] for name in EVENT_FIELDS) + (self.genders, self.ages)
        if self.target_categories is None:
            return base
        return base + (self.target_items, self.target_categories, self.target_purchase)

    def state_dict(self) -> dict:
        """Tensors, strings and lists only: what `torch.load(weights_only=True)` reads back."""
        return {"events": dict(self.events), "genders": self.genders, "ages": self.ages, "lengths": self.lengths,
                "user_ids": [str(u) for u in self.user_ids], "target_items": self.target_items,
                "target_categories": self.target_categories, "target_purchase": self.target_purchase,
                "history": None if self.history is None else [torch.from_numpy(np.asarray(h, np.int64))
                                                              for h in self.history]}

    @classmethod
    def from_state_dict(cls, state: dict) -> "SequenceSet":
        return cls(dict(state["events"]), state["genders"], state["ages"], state["lengths"],
                   np.asarray(state["user_ids"], dtype=object), state["target_items"], state["target_categories"],
                   state["target_purchase"],
                   None if state["history"] is None else [h.numpy() for h in state["history"]])

    def select(self, rows: np.ndarray) -> "SequenceSet":
        """The rows (users) at integer positions `rows`, in that order."""
        index = torch.as_tensor(rows, dtype=torch.long)
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return SequenceSet(
            events={k: v[index] for k, v in self.events.items()},
            genders=self.genders[index],
            ages=self.ages[index],
            lengths=self.lengths[index],
            user_ids=self.user_ids[rows],
            target_items=pick(self.target_items),
            target_categories=pick(self.target_categories),
            target_purchase=pick(self.target_purchase),
            history=None if self.history is None else [self.history[i] for i in rows],
        )


@dataclass
class SequenceData:
    """Everything a merchant trains and evaluates on, built from its cleaned events."""

    catalogue: Catalogue
    train: SequenceSet
    valid: SequenceSet
    test: SequenceSet
    spec: HashSpec
    max_len: int

    def state_dict(self) -> dict:
        """Tensors, strings and numbers only (the data cache is read back with weights-only loading)."""
        return {"catalogue": self.catalogue.state_dict(), "train": self.train.state_dict(),
                "valid": self.valid.state_dict(), "test": self.test.state_dict(),
                "spec": asdict(self.spec), "max_len": self.max_len}

    @classmethod
    def from_state_dict(cls, state: dict) -> "SequenceData":
        return cls(Catalogue.from_state_dict(state["catalogue"]), SequenceSet.from_state_dict(state["train"]),
                   SequenceSet.from_state_dict(state["valid"]), SequenceSet.from_state_dict(state["test"]),
                   HashSpec(**state["spec"]), int(state["max_len"]))

    def for_users(self, user_ids) -> "SequenceData":
        """The same catalogue with only these users' sequences (a merchant's share of a split data set)."""
        wanted = set(np.asarray(user_ids, dtype=object).tolist())
        part = lambda seq: seq.select(np.flatnonzero([u in wanted for u in seq.user_ids]))  # noqa: E731
        return SequenceData(self.catalogue, part(self.train), part(self.valid), part(self.test), self.spec, self.max_len)


def event_features(events: pd.DataFrame, catalogue: Catalogue, spec: HashSpec) -> pd.DataFrame:
    """Per-event model inputs; `events` must be sorted by user then time (as loaders return them)."""
    ts = events["timestamp"].to_numpy(dtype=np.int64)
    users = events["user_id"].to_numpy(dtype=object)
    first = np.ones(len(events), dtype=bool)
    first[1:] = users[1:] != users[:-1]
    gap = np.zeros(len(events), dtype=np.int64)
    gap[1:] = ts[1:] - ts[:-1]
    return pd.DataFrame(
        {
            "user_id": users,
            "items": catalogue.index_of(events["item_id"].to_numpy(dtype=object)),
            "behaviors": events["behavior"].to_numpy(dtype=np.int64),
            "hours": 1 + (ts // 3600) % 24,
            "weekdays": 1 + (ts // 86_400 + 3) % 7,  # 1 = Monday (1970-01-01 was a Thursday)
            "gaps": gap_bucket(gap, first, spec.gap_buckets),
            "category": category_bucket(events["category_id"].to_numpy(dtype=object), spec),
            "purchase": (events["behavior"].to_numpy() == int(Behavior.PURCHASE)).astype(np.int64),
        }
    )


def user_attributes(users: pd.DataFrame, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gender id, age band) per user in `user_ids` order; 0 where unknown."""
    if not len(users):
        return np.zeros(len(user_ids), dtype=np.int64), np.zeros(len(user_ids), dtype=np.int64)
    attrs = users.drop_duplicates("user_id").set_index("user_id").reindex(user_ids)
    genders = np.array(attrs["gender"].map({"F": 1, "M": 2}).fillna(0), dtype=np.int64)
    return genders, age_band(attrs["age"].to_numpy())


def build_sequences(
    events: pd.DataFrame,
    users: pd.DataFrame,
    spec: HashSpec,
    *,
    max_len: int = 50,
    purchase_horizon: int = 10,
    catalogue: Catalogue | None = None,
    titles: pd.Series | None = None,
    train_on_validation: bool = False,
) -> SequenceData:
    """Leave-one-out: each user's last event is the test target, the one before it the validation target,
    and everything before that trains (users with fewer than 3 events only train). `train_on_validation`
    also trains on the validation event (a final refit once validation has chosen the epochs); the test
    event never trains."""
    catalogue = catalogue or build_catalogue(events, spec, titles)
    feats = event_features(events, catalogue, spec)
    starts = np.flatnonzero(np.r_[True, feats["user_id"].to_numpy()[1:] != feats["user_id"].to_numpy()[:-1]])
    ends = np.r_[starts[1:], len(feats)]
    user_ids = feats["user_id"].to_numpy()[starts] if len(feats) else np.array([], dtype=object)
    genders, ages = user_attributes(users, user_ids)
    columns = {name: feats[name].to_numpy() for name in (*EVENT_FIELDS, "category", "purchase")}
    n = ends - starts
    evaluable = n >= 3
    train_end = np.where(evaluable, ends - (1 if train_on_validation else 2), ends)
    keep_train = (train_end - starts) >= 2
    train = _training_set(columns, starts[keep_train], train_end[keep_train], user_ids[keep_train],
                          genders[keep_train], ages[keep_train], max_len, purchase_horizon)
    e_starts, e_ends = starts[evaluable], ends[evaluable]
    valid = _heldout_set(columns, e_starts, e_ends - 2, user_ids[evaluable], genders[evaluable], ages[evaluable], max_len)
    test = _heldout_set(columns, e_starts, e_ends - 1, user_ids[evaluable], genders[evaluable], ages[evaluable], max_len)
    return SequenceData(catalogue=catalogue, train=train, valid=valid, test=test, spec=spec, max_len=max_len)


def _window(columns: dict, starts: np.ndarray, ends: np.ndarray, length: int) -> tuple[dict, np.ndarray]:
    """Right-padded (U, length) arrays holding each user's last `length` events of [start, end)."""
    begin = np.maximum(starts, ends - length)
    lengths = ends - begin
    offsets = np.arange(length)[None, :]
    index = begin[:, None] + offsets
    valid = offsets < lengths[:, None]
    index = np.where(valid, index, 0)
    out = {}
    for name, values in columns.items():
        arr = values[index] if len(values) else np.zeros(index.shape, dtype=np.int64)
        out[name] = np.where(valid, arr, 0)
    return out, lengths


def _training_set(columns, starts, ends, user_ids, genders, ages, max_len, horizon) -> SequenceSet:
    window, lengths = _window(columns, starts, ends, max_len + 1)
    purchase = window["purchase"]
    # purchase within the next `horizon` events after position t (t+1 .. t+horizon), inside the window
    csum = np.concatenate([np.zeros((len(purchase), 1), dtype=np.int64), np.cumsum(purchase, axis=1)], axis=1)
    t = np.arange(max_len)
    hi = np.minimum(t + 1 + horizon, lengths[:, None])
    lo = np.minimum(t + 1, hi)
    ahead = np.take_along_axis(csum, hi, axis=1) - np.take_along_axis(csum, lo, axis=1)
    positions = lengths - 1
    real = t[None, :] < positions[:, None]
    return SequenceSet(
        events={name: torch.from_numpy(np.ascontiguousarray(window[name][:, :-1])) for name in EVENT_FIELDS},
        genders=torch.from_numpy(genders),
        ages=torch.from_numpy(ages),
        lengths=torch.from_numpy(positions),
        user_ids=user_ids,
        target_items=torch.from_numpy(np.ascontiguousarray(window["items"][:, 1:])),
        target_categories=torch.from_numpy(np.ascontiguousarray(window["category"][:, 1:])),
        target_purchase=torch.from_numpy(np.where(real, (ahead > 0).astype(np.float32), -1.0).astype(np.float32)),
    )


def _heldout_set(columns, starts, target_index, user_ids, genders, ages, max_len) -> SequenceSet:
    window, lengths = _window(columns, starts, target_index, max_len)
    items = columns["items"]
    history = [items[s:e] for s, e in zip(starts, target_index)]
    return SequenceSet(
        events={name: torch.from_numpy(np.ascontiguousarray(window[name])) for name in EVENT_FIELDS},
        genders=torch.from_numpy(genders),
        ages=torch.from_numpy(ages),
        lengths=torch.from_numpy(lengths),
        user_ids=user_ids,
        target_items=torch.from_numpy(items[target_index] if len(items) else np.zeros(0, dtype=np.int64)),
        history=history,
    )


def latest_windows(events: pd.DataFrame, users: pd.DataFrame, catalogue: Catalogue, spec: HashSpec, *,
                   max_len: int = 50) -> SequenceSet:
    """Each user's newest `max_len` events as model input (serving: nothing held out), users in order of
    first appearance in `events` (sorted by user then time); events of items outside the catalogue keep
    their time and behaviour with item index 0."""
    feats = event_features(events, catalogue, spec)
    ids = feats["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(feats) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(feats)].astype(np.int64)
    user_ids = ids[starts] if len(feats) else np.array([], dtype=object)
    genders, ages = user_attributes(users, user_ids)
    columns = {name: feats[name].to_numpy() for name in EVENT_FIELDS}
    window, lengths = _window(columns, starts, ends, max_len)
    return SequenceSet(
        events={name: torch.from_numpy(np.ascontiguousarray(window[name])) for name in EVENT_FIELDS},
        genders=torch.from_numpy(genders),
        ages=torch.from_numpy(ages),
        lengths=torch.from_numpy(lengths),
        user_ids=user_ids,
    )
