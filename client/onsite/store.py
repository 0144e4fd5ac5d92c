"""The merchant's on-site store: events, profiles per model version, quarantined events, and which model answered."""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shared_model.data.schema import EVENT_COLUMNS

log = logging.getLogger("fedprofile.store")


class ProfileStore(ABC):
    """What the on-site service needs from a database; SQLite is the embedded default."""

    @abstractmethod
    def add_events(self, events: pd.DataFrame) -> None: ...

    @abstractmethod
    def events(self, user_ids=None) -> pd.DataFrame:
        """Events in schema columns, sorted by user then time then arrival; all users or only these."""

    @abstractmethod
    def count_events(self) -> int: ...

    @abstractmethod
    def put_profiles(self, version: str, profiles: list[dict]) -> None:
        """Insert or replace profiles (dicts with `user_id`) under a model version."""

    @abstractmethod
    def get_profile(self, user_id: str, version: str) -> dict | None: ...

    @abstractmethod
    def drop_other_versions(self, version: str) -> None: ...

    @abstractmethod
    def quarantine(self, rejected: pd.DataFrame, *, source: str) -> None:
        """Keep rejected events with their reasons (columns file/row/field/reason/raw)."""

    @abstractmethod
    def quarantined(self) -> pd.DataFrame: ...

    @abstractmethod
    def record_answer(self, rpc: str, user_id: str, version: str) -> None:
        """Remember which model version served an answer (may be written in the background)."""

    @abstractmethod
    def answers(self) -> pd.DataFrame: ...

    @abstractmethod
    def mark_reviewed(self, user_id: str, *, by: str, note: str = "") -> None:
        """Record that staff reviewed a risk suspect (kept across restarts and model versions)."""

    @abstractmethod
    def reviews(self) -> dict[str, dict]:
        """user_id -> {"at", "by", "note"} of the latest review."""

    @abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Retention:
    """How much of the answer log and the quarantine table the store keeps: rows younger than `days`, and at
    most the newest `max_answers` / `max_quarantined` rows. Pruned every `prune_every` answers logged."""

    days: float = 90.0
    max_answers: int = 1_000_000
    max_quarantined: int = 1_000_000
    prune_every: int = 10_000

    def __post_init__(self):
        if not (self.days > 0 and self.max_answers >= 1 and self.max_quarantined >= 1 and self.prune_every >= 1):
            raise ValueError("retention: days must be positive, row limits and prune-every at least 1")


class SQLiteStore(ProfileStore):
    """One SQLite file in WAL mode: one connection per thread; answers are logged by a writer thread in
    batches so that logging never sits on a request's path."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
        category_id TEXT NOT NULL, behavior INTEGER NOT NULL, timestamp INTEGER NOT NULL, price REAL, brand TEXT);
    CREATE INDEX IF NOT EXISTS events_user ON events (user_id, timestamp, seq);
    CREATE TABLE IF NOT EXISTS profiles (
        user_id TEXT NOT NULL, model_version TEXT NOT NULL, profile TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (user_id, model_version));
    CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT, received_at REAL NOT NULL, source TEXT, row INTEGER,
        field TEXT, reason TEXT, raw TEXT);
    CREATE TABLE IF NOT EXISTS answers (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, rpc TEXT NOT NULL, user_id TEXT,
        model_version TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS reviews (
        user_id TEXT PRIMARY KEY, at REAL NOT NULL, by TEXT NOT NULL, note TEXT NOT NULL);
    """

    def __init__(self, path: str | Path, *, retention: "Retention | None" = None):
        self.path = Path(path)
        self.retention = retention or Retention()
        self.write_errors = 0  # answer batches the writer could not store (it logs each and carries on)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(self.SCHEMA)
        self._answers: queue.Queue = queue.Queue(maxsize=100_000)  # bounded: a stuck writer drops, never grows
        self._written = 0
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_answers, name="answer-log", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def add_events(self, events: pd.DataFrame) -> None:
        rows = events[list(EVENT_COLUMNS)].astype(object).where(events[list(EVENT_COLUMNS)].notna(), None)
        with self._connect() as db:
            db.executemany(
                "INSERT INTO events (user_id, item_id, category_id, behavior, timestamp, price, brand) VALUES (?,?,?,?,?,?,?)",
                [(str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), None if r[5] is None else float(r[5]),
                  "" if r[6] is None else str(r[6])) for r in rows.itertuples(index=False, name=None)],
            )

    def events(self, user_ids=None) -> pd.DataFrame:
        query = "SELECT user_id, item_id, category_id, behavior, timestamp, price, brand FROM events"
        params: tuple = ()
        if user_ids is not None:
            user_ids = [str(u) for u in user_ids]
            query += f" WHERE user_id IN ({','.join('?' * len(user_ids))})"
            params = tuple(user_ids)
        frame = pd.read_sql_query(query + " ORDER BY user_id, timestamp, seq", self._connect(), params=params)
        frame["brand"] = frame["brand"].fillna("").astype(str)
        return frame.astype({"behavior": "int8", "timestamp": "int64", "price": "float64"})

    def count_events(self) -> int:
        return int(self._connect().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def put_profiles(self, version: str, profiles: list[dict]) -> None:
        now = time.time()
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO profiles (user_id, model_version, profile, updated_at) VALUES (?,?,?,?)",
                [(str(p["user_id"]), version, json.dumps(p), now) for p in profiles],
            )

    def get_profile(self, user_id: str, version: str) -> dict | None:
        row = self._connect().execute(
            "SELECT profile, updated_at FROM profiles WHERE user_id = ? AND model_version = ?", (str(user_id), version)
        ).fetchone()
        if row is None:
            return None
        return {**json.loads(row[0]), "updated_at": row[1]}

    def drop_other_versions(self, version: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM profiles WHERE model_version != ?", (version,))

    def quarantine(self, rejected: pd.DataFrame, *, source: str) -> None:
        if rejected is None or len(rejected) == 0:
            return
        now = time.time()
        with self._connect() as db:
            db.executemany(
                "INSERT INTO quarantine (received_at, source, row, field, reason, raw) VALUES (?,?,?,?,?,?)",
                [(now, source, int(r["row"]), str(r["field"]), str(r["reason"]), str(r["raw"]))
                 for r in rejected.to_dict("records")],
            )

    def quarantined(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT received_at, source, row, field, reason, raw FROM quarantine ORDER BY id",
                                 self._connect())

    def record_answer(self, rpc: str, user_id: str, version: str) -> None:
        try:
            self._answers.put_nowait((time.time(), rpc, user_id, version))
        except queue.Full:
            self.write_errors += 1

    def _write_answers(self) -> None:
        while not self._stop.is_set() or not self._answers.empty():
            try:
                batch = [self._answers.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < 1000:
                try:
                    batch.append(self._answers.get_nowait())
                except queue.Empty:
                    break
            try:
                with self._connect() as db:
                    db.executemany("INSERT INTO answers (at, rpc, user_id, model_version) VALUES (?,?,?,?)", batch)
                    self._written += len(batch)
                    if self._written >= self.retention.prune_every:
                        self._written = 0
                        self._prune(db)
            except sqlite3.Error as exc:  # a full disk or a locked file must not end the answer log for good
                self.write_errors += 1
                log.error("could not log %d answers (%s); the service carries on", len(batch), exc)
                self._stop.wait(min(5.0, 0.1 * 2 ** min(self.write_errors, 6)))

    def _prune(self, db: sqlite3.Connection) -> None:
        """Keep the answer log and the quarantine table within their retention: age and row count."""
        cutoff = time.time() - self.retention.days * 86_400
        for table, column, keep in (("answers", "at", self.retention.max_answers),
                                    ("quarantine", "received_at", self.retention.max_quarantined)):
            db.execute(f"DELETE FROM {table} WHERE {column} < ?", (cutoff,))
            db.execute(f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?", (keep,))

    def prune(self) -> None:
        """Apply the retention now (it also runs as answers are logged)."""
        with self._connect() as db:
            self._prune(db)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every recorded answer is written."""
        deadline = time.time() + timeout
        while not self._answers.empty() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.15)

    def answers(self) -> pd.DataFrame:
        self.flush()
        return pd.read_sql_query("SELECT at, rpc, user_id, model_version FROM answers ORDER BY id", self._connect())

    def mark_reviewed(self, user_id: str, *, by: str, note: str = "") -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO reviews (user_id, at, by, note) VALUES (?,?,?,?)",
                       (str(user_id), time.time(), str(by), str(note)))

    def reviews(self) -> dict[str, dict]:
        rows = self._connect().execute("SELECT user_id, at, by, note FROM reviews").fetchall()
        return {user: {"at": at, "by": by, "note": note} for user, at, by, note in rows}

    def close(self) -> None:
        self._stop.set()
        self._writer.join(timeout=5)
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
