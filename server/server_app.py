"""The coordinator's Flower ServerApp: reads the run config once and hands the grid to the round loop."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.coordinator import run_federation
from shared_model.run_config import RunConfig

app = ServerApp()
log = logging.getLogger("fedprofile.server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = RunConfig.from_flat(context.run_config)
    result = run_federation(grid, run, on_round=log_round)
    log.info("run %s: %d rounds, global model %s, epsilon per merchant %s", result.run_id, result.rounds_completed,
             result.model_dir, result.epsilon)


def log_round(row: dict) -> None:
    """One line per round: merchants, loss, metrics (of an earlier round's model when its evaluation rode on this
    round's training messages), privacy spent."""
    eps = ", ".join(f"{k} {v:.2f}" for k, v in sorted(row.get("epsilon", {}).items()) if v > 0)
    loss = row.get("train-loss")
    print(
        f"round {row['round']}: {len(row['merchants-trained'])} merchants trained"
        + (f", {len(row['refused'])} refused" if row["refused"] else "")
        + (f", {len(row['rejected'])} rejected" if row["rejected"] else "")
        + ("" if row["aggregated"] else f" (not aggregated: {row.get('discarded', 'quorum not met')})")
        + (f" | loss {loss:.4f}" if loss is not None else "")
        + (f" | HR@10 {row['hr@10']:.4f} NDCG@10 {row['ndcg@10']:.4f}" if "ndcg@10" in row else "")
        + "".join(f" | round {e['round']}'s model: HR@10 {e['hr@10']:.4f} NDCG@10 {e['ndcg@10']:.4f}"
                  for e in [row.get("model-evaluated", {})] if "ndcg@10" in e)
        + (f" | epsilon {eps}" if eps else "")
        + f" | {row['seconds']:.1f}s",
        flush=True,
    )
