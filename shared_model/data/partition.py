"""Splitting one data set's users across simulated merchants: IID, or non-IID by a Dirichlet over categories."""

from __future__ import annotations

import numpy as np
import pandas as pd


def partition_users(events: pd.DataFrame, num_partitions: int, *, scheme: str = "iid", alpha: float = 0.5,
                    seed: int = 0) -> list[np.ndarray]:
    """Disjoint user-id arrays, one per merchant; together they hold every user exactly once.

    `iid`: users shuffled and dealt evenly. `dirichlet`: each user is labelled by their most frequent
    category; each category's users go to merchants in Dirichlet(`alpha`) proportions (smaller alpha = more
    skew), the usual label-skew split of federated-learning benchmarks."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}")
    rng = np.random.default_rng(seed)
    users = np.asarray(pd.unique(events["user_id"]), dtype=object)
    if len(users) < num_partitions:
        raise ValueError(f"{len(users)} users cannot fill {num_partitions} merchants")
    if scheme == "iid":
        shuffled = users[rng.permutation(len(users))]
        return [np.sort(part) for part in np.array_split(shuffled, num_partitions)]
    if scheme != "dirichlet":
        raise ValueError(f"unknown partitioning {scheme!r}; use iid or dirichlet")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    top = (events.groupby(["user_id", "category_id"], sort=False).size().rename("n").reset_index()
           .sort_values(["user_id", "n", "category_id"], ascending=[True, False, True])
           .drop_duplicates("user_id").set_index("user_id")["category_id"])
    owner = {}
    for _, group in top.groupby(top, sort=True):
        members = group.index.to_numpy(dtype=object)[rng.permutation(len(group))]
        shares = rng.dirichlet(np.full(num_partitions, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
        for merchant, chunk in enumerate(np.split(members, cuts)):
            owner.update(dict.fromkeys(chunk.tolist(), merchant))
    assignment = np.array([owner[u] for u in users])
    # every merchant needs customers: move users from the largest merchant to any empty one
    for merchant in range(num_partitions):
        if not (assignment == merchant).any():
            largest = np.bincount(assignment, minlength=num_partitions).argmax()
            donors = np.flatnonzero(assignment == largest)
            assignment[donors[: max(1, len(donors) // (2 * num_partitions))]] = merchant
    return [np.sort(users[assignment == m]) for m in range(num_partitions)]
