"""The `fedprofile` command line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedprofile import recipes
from fedprofile.console import Fmt, fail, parse_sets

app = typer.Typer(help="fedprofile: federated, privacy-preserving user profiling for e-commerce merchants.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Inspect, validate and generate event data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _register_onsite() -> None:
    from fedprofile import deploy_cli, onsite_cli

    app.add_typer(onsite_cli.merchant_app, name="merchant")
    onsite_cli.merchant_app.command("keys")(deploy_cli.merchant_keys)
    app.add_typer(deploy_cli.server_app, name="server")
    app.add_typer(deploy_cli.federation_app, name="federation")
    for command in (onsite_cli.profile, onsite_cli.recommend, onsite_cli.segments, onsite_cli.audience, onsite_cli.risk):
        app.command()(command)

Columns = Annotated[
    Optional[str],
    typer.Option(help="For --format events: schema field to source column, e.g. 'user_id=uid,item_id=sku'."),
]



def _load(data: Optional[str], fmt: str, quarantine: Optional[Path], columns: Optional[str]):
    from shared_model.data.loaders import load_events, parse_column_map
    from shared_model.data.validation import DataFileError

    try:
        return load_events(data, fmt, quarantine_path=quarantine, column_map=parse_column_map(columns))
    except (DataFileError, ValueError) as exc:
        fail(str(exc))


@data_app.command("validate")
def data_validate(
    path: Annotated[str, typer.Argument(help="Data file or folder ('builtin' for the synthetic default).")],
    fmt: Fmt,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    quarantine: Annotated[
        Optional[Path], typer.Option(help="Where rejected rows go (default: ./<name>.quarantine.csv).")
    ] = None,
    columns: Columns = None,
) -> None:
    """Load and validate a data set; rejected rows go to a quarantine file with row number and reason."""
    quarantine = quarantine or Path(f"{Path(path).name or 'data'}.quarantine.csv")
    log = _load(path, fmt, quarantine, columns)
    summary = log.summary.as_dict()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"{path} ({fmt})")
    for f in summary["files"] + summary["side_files"]:
        typer.echo(
            f"  {f['path']}: read {f['rows_read']}, accepted {f['rows_accepted']}, "
            f"duplicates {f['duplicates']}, quarantined {f['rows_quarantined']}"
        )
        for reason, count in f["reasons"].items():
            typer.echo(f"      {count:>8}  {reason}")
    typer.echo(
        f"events: read {summary['rows_read']} = accepted {summary['rows_accepted']} + duplicates "
        f"{summary['duplicates']} + quarantined {summary['rows_quarantined']}; "
        f"{summary['users']} users, {summary['items']} items"
    )
    typer.echo(log.summary.metadata_line())
    typer.echo(f"quarantine: {summary['quarantine_path']}")


@data_app.command("synthesize")
def data_synthesize(
    out: Annotated[Path, typer.Option(help="Folder to write merchant-N/{events,users}.csv and truth.json into.")],
    merchants: Annotated[int, typer.Option(help="Number of merchants.")] = 4,
    users: Annotated[int, typer.Option(help="Customers per merchant.")] = 500,
    items: Annotated[int, typer.Option(help="Catalogue size per merchant.")] = 3000,
    bot_share: Annotated[float, typer.Option(help="Share of customers that are bots.")] = 0.03,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write synthetic merchants' logs with planted ground truth (interests, segments, bots)."""
    from shared_model.data.synthetic import SyntheticConfig, generate, write

    config = SyntheticConfig(merchants=merchants, users_per_merchant=users, items_per_merchant=items,
                             bot_share=bot_share, seed=seed)
    write(generate(config), out, config)
    typer.echo(f"wrote {merchants} merchants to {out}")


def _log_epoch(row: dict) -> None:
    parts = [f"epoch {row['epoch']}", f"loss {row['loss']:.4f}", f"lr {row['lr']:.3g}", f"{row['seconds']:.0f}s"]
    if "epsilon" in row:
        parts.append(f"epsilon {row['epsilon']:.3f}")
    if "valid" in row:
        parts.append(f"valid ndcg@10 {row['valid']['ndcg@10']:.4f}")
    if "test" in row:
        parts.append(f"test ndcg@10 {row['test']['ndcg@10']:.4f}")
    print("  ".join(parts), flush=True)  # a log file shows each epoch as it ends


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run folder for metrics.json and model.pt.")],
    fmt: Fmt = "synthetic",
    data: Annotated[
        Optional[str], typer.Option(help="Data file or folder; omit for the built-in synthetic merchants.")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(
        min=1, help=f"Passes over the training users: at most {recipes.PLAIN.epochs} (stopping once validation stops "
                    f"improving), with --dp exactly {recipes.PRIVATE.epochs} (the budget is spread over them).")] = None,
    dp: Annotated[bool, typer.Option("--dp/--no-dp", help="User-level DP-SGD (Opacus).")] = False,
    epsilon: Annotated[float, typer.Option(help="Target epsilon with --dp.", envvar="FEDPROFILE_EPSILON")] = 8.0,
    delta: Annotated[Optional[float], typer.Option(help="Target delta with --dp (default: min(1e-5, 1/(10 users))).")] = None,
    max_grad_norm: Annotated[float, typer.Option(help="Per-user gradient clipping norm with --dp.")] = 1.0,
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, help=f"(Expected) users per batch (default: {recipes.PLAIN.batch_size}; with --dp "
                    f"{recipes.PRIVATE.batch_size}: DP-SGD's noise is per step, so a larger batch carries less of it "
                    "per customer and runs faster; docs/benchmarks.md 3).")] = None,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    lr_schedule: Annotated[Optional[str], typer.Option(
        help=f"constant; cosine: from --lr down to 0 over --epochs; plateau: halved after 2 evaluations without a "
             f"better validation NDCG@10 (not with --dp). Default: {recipes.PLAIN.lr_schedule}.")] = None,
    negatives: Annotated[Optional[int], typer.Option(
        min=1, help=f"Shared uniform negatives in the sampled softmax (default: {recipes.PLAIN.negatives}).")] = None,
    full_softmax: Annotated[Optional[bool], typer.Option(
        "--full-softmax/--no-full-softmax",
        help=f"Score the whole catalogue in training instead of --negatives sampled items (default: on while a "
             f"customer scores at most {recipes.PLAIN.full_softmax_per_customer:,} logits an epoch, positions x "
             f"items; not with --dp).")] = None,
    max_len: Annotated[int, typer.Option(help="Events per user sequence.")] = 50,
    d_model: Annotated[int, typer.Option(help="Transformer width.")] = 64,
    layers: Annotated[Optional[int], typer.Option(
        min=1, help=f"Transformer blocks (default: {recipes.PLAIN.layers}).")] = None,
    heads: Annotated[Optional[int], typer.Option(min=1, help=f"Attention heads (default: {recipes.PLAIN.heads}).")] = None,
    dropout: Annotated[Optional[float], typer.Option(
        help=f"Dropout rate (default: {recipes.PLAIN.dropout}; with --dp {recipes.PRIVATE.dropout}).")] = None,
    profile_dim: Annotated[int, typer.Option(help="Profile vector size k.")] = 64,
    item_buckets: Annotated[int, typer.Option(help="Rows in each of the two hashed item-id tables.")] = 1 << 15,
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay.")] = 0.0,
    ema_decay: Annotated[Optional[float], typer.Option(
        help=f"Keep and evaluate a moving average of the weights, decay per step (default: spanning "
             f"{recipes.PLAIN.ema_epochs} epochs, 0.999 on Amazon Beauty; with --dp 0 = off).")] = None,
    refit: Annotated[bool, typer.Option(help="After validation has chosen the epochs, train a fresh model that "
                                             "long on training + validation events, and test that (no DP).")] = False,
    patience: Annotated[Optional[int], typer.Option(
        min=1, help=f"Stop after this many evaluations without improvement (default: {recipes.PLAIN.patience}; "
                    "not with --dp).")] = None,
    track_test: Annotated[bool, typer.Option(help="Record test metrics at every evaluation (metric curves).")] = False,
    adjacency: Annotated[bool, typer.Option(
        help="Also test the model blended with the training events' item adjacency, as a merchant serves it "
             "(the weight chosen on validation; not with --dp: the counts are not private).")] = True,
    tie_item_tables: Annotated[Optional[bool], typer.Option(
        "--tie-item-tables/--no-tie-item-tables",
        help=f"One item encoder for inputs and outputs (default: {'on' if recipes.PLAIN.tie_item_tables else 'off'}; "
             f"with --dp off: ghost clipping refuses one table used on both sides).")] = None,
    recency_positions: Annotated[bool, typer.Option(help="Position ids count back from the newest event.")] = False,
    frozen_item_ids: Annotated[bool, typer.Option(help="Keep the hashed item-id tables at their random start.")] = False,
    frequency_mix: Annotated[float, typer.Option(
        help="BSARec's alpha: each block's share of a low-pass filter over the events beside attention (0: off; "
             "not with --dp).", min=0.0, max=1.0)] = 0.0,
    frequency_cutoff: Annotated[int, typer.Option(
        help="BSARec's c: the filter keeps the c // 2 + 1 lowest frequencies of a --max-len window.", min=1)] = 5,
    local_table: Annotated[bool, typer.Option(help="Add the merchant-local item residual table.")] = False,
    time_features: Annotated[bool, typer.Option(
        help="Hour, weekday and time-gap embeddings in each event's input (off: item, behaviour and position "
             "only, as SASRec).")] = True,
    item_metadata: Annotated[bool, typer.Option(
        help="Item vectors from category, brand, price and title words beside the id hashes (off: ids only, as "
             "ID-only baselines such as SASRec see items).")] = True,
    profile_mlp: Annotated[Optional[bool], typer.Option(
        "--profile-mlp/--no-profile-mlp",
        help=f"An MLP between the encoder and the scores (off: the encoder's normalised states are the profiles, as "
             f"SASRec scores them; needs --d-model equal to --profile-dim). Default: "
             f"{'on' if recipes.PLAIN.profile_mlp else 'off'}; with --dp {'on' if recipes.PRIVATE.profile_mlp else 'off'}.")] = None,
    loss_average: Annotated[Optional[str], typer.Option(
        help=f"users: each customer's positions averaged, then customers (what DP-SGD clips); positions: every "
             f"scored position alike, as SASRec (a long history counts more; not with --dp). Default: "
             f"{recipes.PLAIN.loss_average}; with --dp {recipes.PRIVATE.loss_average}.")] = None,
    category_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the next-category term beside the next-item loss.")] = 0.1,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop training after this many minutes.")] = None,
    eval_every: Annotated[Optional[int], typer.Option(
        min=1, help=f"Epochs between validation passes (default: {recipes.PLAIN.eval_every}; with --dp "
                    f"{recipes.PRIVATE.eval_every}).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when present).",
                                                  envvar="FEDPROFILE_DEVICE")] = None,
    columns: Columns = None,
) -> None:
    """Train the profile Transformer on one data set (centrally) and evaluate with full ranking."""
    import torch

    from shared_model.checkpoint import save_model
    from shared_model.device import pick_device
    from shared_model.features import build_sequences
    from shared_model.loss import AVERAGES
    from shared_model.model import ProfileConfig, ProfileTransformer
    from shared_model.privacy import PrivacyBudgetExhausted, PrivacyConfig, delta_for
    from shared_model.training import LR_SCHEDULES, PLATEAU, TrainConfig
    from shared_model.training import refit as refit_training
    from shared_model.training import train as run_training

    recipe = (recipes.PRIVATE if dp else recipes.PLAIN).with_choices(
        epochs=epochs, batch_size=batch_size, layers=layers, heads=heads, dropout=dropout, negatives=negatives,
        eval_every=eval_every, patience=patience, profile_mlp=profile_mlp, loss_average=loss_average,
        tie_item_tables=tie_item_tables, lr_schedule=lr_schedule)
    if recipe.lr_schedule not in (*LR_SCHEDULES, PLATEAU):
        fail(f"--lr-schedule must be one of {', '.join((*LR_SCHEDULES, PLATEAU))}, got {recipe.lr_schedule!r}")
    if dp and recipe.lr_schedule == PLATEAU:
        fail("--lr-schedule plateau follows validation, which picks nothing under --dp (it would spend privacy the "
             "accountant does not count): use constant or cosine")
    if dp and recipe.patience is not None:
        fail("--patience stops when validation stops improving; under --dp validation picks nothing and the "
             "epochs are planned (the budget is spread over them): drop --patience")
    if dp and frequency_mix > 0:
        fail("--frequency-mix is for plain training: Opacus has no per-customer gradient for the filter's beta; "
             "drop it under --dp")
    if recipe.loss_average not in AVERAGES:
        fail(f"--loss-average must be one of {', '.join(AVERAGES)}, got {recipe.loss_average!r}")
    if dp and recipe.loss_average != "users":
        fail("--loss-average positions has no per-customer loss to clip: under --dp drop it (DP-SGD averages over "
             "customers)")
    if not recipe.profile_mlp and d_model != profile_dim:
        fail(f"--no-profile-mlp scores the encoder's states directly: --d-model ({d_model}) must equal "
             f"--profile-dim ({profile_dim})")
    if dp and full_softmax:
        fail("--full-softmax is for plain training: under --dp the measured recipe samples --negatives; drop it")
    if refit and dp:
        fail("--refit trains on the validation events after choosing epochs by them: it is for plain training; "
             "under --dp the last weights are reported and validation picks nothing")
    out.mkdir(parents=True, exist_ok=True)
    log = _load(data or "builtin" if fmt == "synthetic" else data, fmt, out / "quarantine.csv", columns)
    s = log.summary
    typer.echo(f"data: {s.rows_accepted} events, {s.users} users, {s.items} items "
               f"({s.duplicates} duplicates, {s.rows_quarantined} quarantined); {s.metadata_line()}")
    base = ProfileConfig(max_len=max_len, d_model=d_model, n_heads=recipe.heads, n_layers=recipe.layers,
                         profile_dim=profile_dim, dropout=recipe.dropout, item_buckets=item_buckets,
                         tie_item_tables=recipe.tie_item_tables,
                         recency_positions=recency_positions, frozen_item_ids=frozen_item_ids,
                         frequency_mix=frequency_mix, frequency_cutoff=frequency_cutoff, item_metadata=item_metadata,
                         time_features=time_features, profile_mlp=recipe.profile_mlp)
    sequences = build_sequences(log.events, log.users, base.hash_spec, max_len=max_len, titles=log.item_titles)
    whole = full_softmax if full_softmax is not None else recipe.full_softmax(
        num_items=sequences.catalogue.num_items, positions_per_customer=sequences.train.positions_per_user())
    config = ProfileConfig(**{**base.to_dict(), "local_items": sequences.catalogue.num_items + 1 if local_table else 0})
    torch.manual_seed(seed)
    model = ProfileTransformer(config, sequences.catalogue.descriptors)
    privacy = None
    if dp:
        privacy = PrivacyConfig(target_epsilon=epsilon, target_delta=delta or delta_for(len(sequences.train)),
                                max_grad_norm=max_grad_norm)
    train_config = TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=lr, negatives=recipe.negatives,
                               lr_schedule=recipe.lr_schedule,
                               full_softmax=whole, seed=seed, eval_every=recipe.eval_every,
                               weight_decay=weight_decay, patience=recipe.patience, loss_average=recipe.loss_average,
                               category_weight=category_weight,
                               ema_decay=ema_decay if ema_decay is not None else
                               recipe.ema_decay(math.ceil(len(sequences.train) / recipe.batch_size)),
                               track_test=track_test,
                               max_seconds=max_minutes * 60 if max_minutes else None,
                               show_progress=sys.stderr.isatty())
    target = pick_device(device)
    typer.echo(f"training on {target}: {len(sequences.train)} users, {'' if dp else 'at most '}{recipe.epochs} epochs "
               f"of batches of {recipe.batch_size}, {recipe.layers} block(s) of {recipe.heads} head(s), dropout "
               f"{recipe.dropout}, " + ("the full softmax" if whole else f"{recipe.negatives} negatives")
               + (f", DP epsilon {epsilon}" if dp else f", weight average {train_config.ema_decay:.4g}")
               + ("" if item_metadata else ", item ids only (no item metadata)")
               + ("" if time_features else ", no time features")
               + ("" if recipe.profile_mlp else ", no profile MLP")
               + (", tied item tables" if recipe.tie_item_tables else "")
               + f", the loss averaged over {recipe.loss_average}"
               + ("" if recipe.lr_schedule == "constant" else f", the learning rate {recipe.lr_schedule}"))
    try:
        result = run_training(model, sequences, train_config, privacy=privacy, device=target,
                              on_epoch=None if train_config.show_progress else _log_epoch)
    except (PrivacyBudgetExhausted, ValueError) as exc:
        fail(str(exc))
    blend = _adjacency_blend(model, sequences, target) if adjacency and not dp else None
    if refit:  # a fresh model, as many epochs as validation chose, on training + validation events
        refit_data = build_sequences(log.events, log.users, base.hash_spec, max_len=max_len, titles=log.item_titles,
                                     train_on_validation=True)
        typer.echo(f"refit: {result.best_epoch} epochs on training + validation events "
                   f"(selection run: test ndcg@10 {result.test['ndcg@10']:.4f})")
        torch.manual_seed(seed)
        model = ProfileTransformer(config, refit_data.catalogue.descriptors)
        result = refit_training(model, refit_data, result, train_config, device=target)
        if blend is not None:  # the selection run's weight, the refit's counts (training + validation events)
            blend = {**_adjacency_blend(model, refit_data, target, weight=blend["weight"]),
                     "valid": blend["valid"], "selection_test": blend["test"]}
    metrics = {**result.metrics(), **({"with_adjacency": blend} if blend else {}), "data": s.as_dict(), "model": config.to_dict(),
               "train": {k: v for k, v in train_config.__dict__.items()}, "device": str(target)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    # The weight travels with the model so that the on-site commands serve what was tested here.
    saved = {"metrics": result.test, **({"adjacency-weight": blend["weight"]} if blend else {})}
    save_model(out / "model.pt", model.cpu(), sequences.catalogue, metadata=saved)
    typer.echo(
        "test: " + ", ".join(f"{k} {result.test[k]:.4f}" for k in ("hr@10", "ndcg@10", "mrr"))
        + f" | epsilon {result.epsilon:.3f} delta {result.delta:g} | {result.train_seconds:.0f}s, "
        f"{result.examples_per_second:.0f} users/s"
    )
    if blend is not None:
        typer.echo(f"test with the item adjacency (weight {blend['weight']:g}, chosen on validation): "
                   + ", ".join(f"{k} {blend['test'][k]:.4f}" for k in ("hr@10", "ndcg@10", "mrr")))
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'model.pt'}")


def _adjacency_blend(model, data, device, *, weight: float | None = None) -> dict:
    """The model's scores plus `weight * log(1 + count)` of items adjacent to the customer's newest one in the
    training events (the on-site blend, client/onsite/adjacency.py): the weight validation ranks best with
    unless given, and the test metrics at it."""
    from client.onsite.adjacency import ItemAdjacency
    from client.onsite.personalise import blend_weight
    from shared_model.evaluation import evaluate

    counts = ItemAdjacency.from_training(data.train, data.catalogue.num_items)
    valid = None
    if weight is None:
        valid, weight = blend_weight(model, data, counts, device=device)
    return {"weight": weight, "valid": valid,
            "test": evaluate(model, data.test, device=device, boost=counts.booster(weight))}


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Run folder: metrics.json, report.md, plots, checkpoints, models.")],
    merchants: Annotated[int, typer.Option(help="Simulated merchants (Flower SuperNodes).")] = 4,
    rounds: Annotated[Optional[int], typer.Option(help="Federated rounds (run config num-rounds).")] = None,
    data: Annotated[str, typer.Option(help="'synthetic' (built-in merchants) or a data set path.")] = "synthetic",
    fmt: Fmt = "synthetic",
    partitioning: Annotated[Optional[str], typer.Option(
        help="natural (one synthetic shop per merchant), iid or dirichlet (split one data set's users).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Dirichlet concentration for --partitioning dirichlet.")] = None,
    dp: Annotated[Optional[bool], typer.Option("--dp/--no-dp", help="User-level DP-SGD on every merchant.")] = None,
    epsilon: Annotated[Optional[float], typer.Option(help="Target epsilon per merchant over the whole run.",
                                                     envvar="FEDPROFILE_EPSILON")] = None,
    delta: Annotated[Optional[float], typer.Option(help="Target delta (default: min(1e-5, 1/(10 users))).")] = None,
    privacy: Annotated[Optional[str], typer.Option(
        help="local (each merchant noises its own update) or distributed (one central DP-SGD step a round, "
             "noise shared among merchants, secure aggregation); see docs/privacy.md.")] = None,
    strategy: Annotated[Optional[str], typer.Option(
        help="fedavg, fedavgm, fedadam, fedprox, fedmedian, fedtrimmedavg or krum.")] = None,
    local_epochs: Annotated[Optional[float], typer.Option(help="Local epochs per round (0.5: half of each merchant's batches a round).")] = None,
    centralized_baseline: Annotated[bool, typer.Option(
        help="Also train one model on the union of the merchants' data with the same epoch budget.")] = False,
    centralized_batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size of the centralized baseline (default: the merchants' batch-size).", min=1)] = None,
    served: Annotated[bool, typer.Option(
        help="Also measure what each merchant would serve: a model of its own customers alone, the shared model, "
             "and the on-site model: the best of those two and the shared model fine-tuned on site, by the "
             "merchant's validation customers (metrics.json `served`).")] = True,
    served_without_dp: Annotated[bool, typer.Option(
        help="With --served and DP: also train the same federation without DP and serve its model beside them "
             "(metrics.json `served.no-dp`; the price of privacy for customers).")] = True,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Any run-config key, e.g. --set lr=3e-3 --set batch-size=256 (see pyproject.toml).")] = None,
    cpus_per_merchant: Annotated[Optional[int], typer.Option(help="CPU cores reserved per simulated merchant.")] = None,
) -> None:
    """Run a federated simulation (Flower's simulation engine) and write metrics.json and report.md."""
    import logging

    from server.server_app import log_round
    from shared_model.run_config import RunConfig
    from simulations.simulate import simulate as run_sim

    overrides = parse_sets(set_)
    given = {"num-rounds": rounds, "data": data, "data-format": fmt, "partitioning": partitioning,
             "dirichlet-alpha": alpha, "dp": dp, "target-epsilon": epsilon, "target-delta": delta,
             "privacy": privacy, "strategy": strategy, "local-epochs": local_epochs, "resume": resume}
    values = {**RunConfig().to_flat(), **overrides, **{k: v for k, v in given.items() if v is not None}}
    if values["data-format"] != "synthetic" and partitioning is None and "partitioning" not in overrides:
        values["partitioning"] = "iid"  # a real data set is split by user unless told otherwise
    if values["data"] == "synthetic" and values["data-format"] != "synthetic":
        fail(f"--format {values['data-format']} needs --data PATH")
    try:
        run = RunConfig.from_flat(values)
    except ValueError as exc:
        fail(str(exc))
    run = run.replace(min_replies=min(run.min_replies, merchants))
    logging.getLogger("flwr").setLevel(logging.WARNING)  # our own line per round replaces Flower's INFO chatter
    typer.echo(f"simulating {merchants} merchants, {run.num_rounds} rounds, {run.strategy}, "
               + (f"{run.privacy} DP, epsilon {run.target_epsilon} per merchant" if run.dp else "no DP")
               + f", data {run.data}")
    metrics = run_sim(run, merchants, out, centralized=centralized_baseline, on_round=log_round,
                      cpus_per_merchant=cpus_per_merchant, centralized_batch_size=centralized_batch_size,
                      served=served, served_without_dp=served_without_dp)
    line = f"final: HR@10 {metrics['hr@10']:.4f} NDCG@10 {metrics['ndcg@10']:.4f}"
    if "centralized" in metrics:
        c = metrics["centralized"]
        line += f" | centralized HR@10 {c['hr@10']:.4f} NDCG@10 {c['ndcg@10']:.4f}"
    typer.echo(line)
    if "served" in metrics:
        figures = metrics["served"]
        typer.echo("served NDCG@10 (all merchants' test users): " + ", ".join(
            f"{kind} {figures[kind]['ndcg@10']:.4f}" for kind in ("alone", "shared", "onsite"))
            + ("; without DP: " + ", ".join(f"{kind} {figures['no-dp'][kind]['ndcg@10']:.4f}"
                                            for kind in ("shared", "onsite")) if "no-dp" in figures else ""))
    if metrics["epsilon"]:
        typer.echo("epsilon: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(metrics["epsilon"].items())))
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")


@app.command()
def scenario(
    path: Annotated[Path, typer.Argument(help="Scenario file (see simulations/scenarios/).")],
    out: Annotated[Path, typer.Option(help="Folder: one sub-folder per variant, summary.md and summary.json.")],
    only: Annotated[Optional[list[str]], typer.Option(help="Run only these variants (repeatable).")] = None,
) -> None:
    """Run every variant of a scenario file as a simulation and summarise them side by side."""
    import logging

    from server.server_app import log_round
    from simulations.scenario import run_scenario

    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        summary = run_scenario(path, out, on_round=log_round, only=only)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"wrote {out / 'summary.md'} ({len(summary['variants'])} variants)")


_register_onsite()

if __name__ == "__main__":
    app()
