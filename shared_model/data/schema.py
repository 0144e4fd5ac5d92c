"""The one event schema every loader produces."""

from __future__ import annotations

from enum import IntEnum

import pandas as pd


class Behavior(IntEnum):
    """Kinds of customer event; 0 is reserved for padding in model inputs."""

    VIEW = 1
    CART = 2
    FAV = 3
    PURCHASE = 4
    REVIEW = 5


# Names accepted in raw logs, mapped to the schema; anything else is quarantined as unknown.
BEHAVIOR_ALIASES: dict[str, Behavior] = {
    "view": Behavior.VIEW,
    "pv": Behavior.VIEW,
    "click": Behavior.VIEW,
    "browse": Behavior.VIEW,
    "cart": Behavior.CART,
    "add_to_cart": Behavior.CART,
    "fav": Behavior.FAV,
    "favorite": Behavior.FAV,
    "follow": Behavior.FAV,
    "purchase": Behavior.PURCHASE,
    "buy": Behavior.PURCHASE,
    "order": Behavior.PURCHASE,
    "review": Behavior.REVIEW,
    "rating": Behavior.REVIEW,
}

REQUIRED_COLUMNS = ("user_id", "item_id", "category_id", "behavior", "timestamp")
OPTIONAL_COLUMNS = ("price", "brand")
EVENT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
USER_COLUMNS = ("user_id", "gender", "age", "region")

# Categories that come from item metadata rather than the event row get this value when unknown.
UNKNOWN_CATEGORY = "unknown"

# Earliest plausible event time (1990-01-01 UTC); later than "now + 1 day" is impossible too.
MIN_TIMESTAMP = 631_152_000
FUTURE_SLACK_SECONDS = 86_400


def empty_events() -> pd.DataFrame:
    """An events frame with the schema's columns and dtypes and no rows."""
    return pd.DataFrame(
        {
            "user_id": pd.Series(dtype=str),
            "item_id": pd.Series(dtype=str),
            "category_id": pd.Series(dtype=str),
            "behavior": pd.Series(dtype="int8"),
            "timestamp": pd.Series(dtype="int64"),
            "price": pd.Series(dtype="float64"),
            "brand": pd.Series(dtype=str),
        }
    )


def empty_users() -> pd.DataFrame:
    """A user-attributes frame with no rows."""
    return pd.DataFrame(
        {
            "user_id": pd.Series(dtype=str),
            "gender": pd.Series(dtype=str),
            "age": pd.Series(dtype="float64"),
            "region": pd.Series(dtype=str),
        }
    )
