"""Scenario files: several simulations that differ in a few settings, run side by side and summarised."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from shared_model.run_config import RunConfig
from simulations.simulate import simulate


@dataclass(frozen=True)
class Variant:
    name: str
    merchants: int
    run: RunConfig
    centralized: bool


def load_scenario(path: str | Path) -> tuple[str, list[Variant]]:
    """A TOML file: `name`, `merchants`, `centralized-baseline`, a `[base]` table of run-config keys, and
    `[[variant]]` tables, each with a `name` and the keys it changes (`merchants` and `centralized-baseline`
    included)."""
    path = Path(path)
    spec = tomllib.loads(path.read_text())
    if not spec.get("variant"):
        raise ValueError(f"{path}: no [[variant]] tables")
    base = {**RunConfig().to_flat(), **spec.get("base", {})}
    variants = []
    for index, entry in enumerate(spec["variant"], start=1):
        entry = dict(entry)
        name = str(entry.pop("name", f"variant-{index}"))
        merchants = int(entry.pop("merchants", spec.get("merchants", 4)))
        centralized = bool(entry.pop("centralized-baseline", spec.get("centralized-baseline", False)))
        try:
            run = RunConfig.from_flat({**base, **entry})
        except ValueError as exc:
            raise ValueError(f"{path}: variant {name!r}: {exc}") from None
        variants.append(Variant(name, merchants, run.replace(min_replies=min(run.min_replies, merchants)), centralized))
    return str(spec.get("name", path.stem)), variants


def run_scenario(path: str | Path, out: str | Path, *, on_round=None, only: list[str] | None = None) -> dict:
    name, variants = load_scenario(path)
    out = Path(out)
    rows = []
    for variant in variants:
        if only and variant.name not in only:
            continue
        metrics = simulate(variant.run, variant.merchants, out / variant.name, centralized=variant.centralized,
                           on_round=on_round)
        central = metrics.get("centralized", {})
        rows.append({"variant": variant.name, "merchants": variant.merchants, "dp": variant.run.dp,
                     "target_epsilon": variant.run.target_epsilon if variant.run.dp else None,
                     "partitioning": variant.run.partitioning, "rounds": metrics["rounds"],
                     "hr@10": metrics["hr@10"], "ndcg@10": metrics["ndcg@10"],
                     "max_epsilon": max(metrics["epsilon"].values(), default=0.0),
                     "centralized_ndcg@10": central.get("ndcg@10"), "seconds": metrics["seconds"]})
    summary = {"scenario": name, "variants": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# scenario {name}", "", "| variant | merchants | DP | partitioning | NDCG@10 | HR@10 | max epsilon | "
             "centralized NDCG@10 | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dp = f"eps {r['target_epsilon']}" if r["dp"] else "off"
        central = "-" if r["centralized_ndcg@10"] is None else f"{r['centralized_ndcg@10']:.4f}"
        lines.append(f"| {r['variant']} | {r['merchants']} | {dp} | {r['partitioning']} | {r['ndcg@10']:.4f} | "
                     f"{r['hr@10']:.4f} | {r['max_epsilon']:.3f} | {central} | {r['seconds']:.0f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary
