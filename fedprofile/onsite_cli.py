"""`fedprofile merchant ...` (the daemon and the on-site service) and the profile commands for people."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedprofile.console import Fmt, fail, wait_for_signal

merchant_app = typer.Typer(help="Run a merchant: the federation SuperNode and the on-site gRPC service.",
                           no_args_is_help=True)

Model = Annotated[str, typer.Option(help="A published model version folder, a run or models folder (its LATEST), "
                                         "or a `fedprofile train` output folder.", envvar="FEDPROFILE_MODEL")]
Data = Annotated[str, typer.Option(help="The merchant's event data (file or folder).", envvar="FEDPROFILE_DATA")]
CatalogueFile = Annotated[Optional[Path], typer.Option(
    "--catalogue", help="Catalogue CSV (item_id, category_id, brand, price, title, in_stock): items no event "
                        "mentions, and stock for --in-stock-only.", envvar="FEDPROFILE_CATALOGUE")]
Store = Annotated[Optional[Path], typer.Option(help="SQLite store of events and profiles (default: a temporary one).",
                                               envvar="FEDPROFILE_STORE")]
RetentionDays = Annotated[float, typer.Option(help="Days the store keeps its answer log and quarantined events "
                                                   "(and at most a million rows of each).")]
TlsCert = Annotated[Optional[Path], typer.Option(help="TLS certificate (PEM) of the on-site service; needed beyond "
                                                      "loopback.", envvar="FEDPROFILE_TLS_CERT")]
TlsKey = Annotated[Optional[Path], typer.Option(help="TLS private key (PEM) of the on-site service.",
                                                envvar="FEDPROFILE_TLS_KEY")]
TokenFile = Annotated[Optional[Path], typer.Option(help="File holding the token callers must send (authorization: "
                                                        "Bearer TOKEN); made, owner-readable, if missing. Needed beyond "
                                                        "loopback.", envvar="FEDPROFILE_TOKEN_FILE")]
ConsolePort = Annotated[Optional[int], typer.Option(help="Serve the console (profiles, segments, audiences, risk, "
                                                         "federation in a browser) on this port; off unless given; "
                                                         "0: a free port. Its token is the console-token file.",
                                                    envvar="FEDPROFILE_CONSOLE_PORT")]
ConsoleHost = Annotated[str, typer.Option(help="Interface the console listens on (beyond loopback: TLS, from "
                                               "--tls-cert/--tls-key, or --insecure).")]
ConsoleWritable = Annotated[bool, typer.Option(help="Let console users mark risk suspects reviewed (read-only "
                                                    "otherwise).")]
AdjacencyWeight = Annotated[Optional[float], typer.Option(
    help="Blend the model's scores with this merchant's item adjacency at this weight (0: off; default: the weight "
         "`fedprofile train` chose on validation and saved with the model, none for a published global model).",
    min=0.0)]



@contextlib.contextmanager
def _engine(model: str | None, data: str, fmt: str, store: Path | None, *, quiet: bool = True,
            catalogue: Path | None = None, retention=None, adjacency_weight: float | None = None):
    """An on-site engine over the merchant's data with `model` loaded (when given), blended with the item
    adjacency at `adjacency_weight` (None: the weight saved with the model, 0 for a published global one)."""
    from client.onsite.engine import open_engine
    from shared_model.data.validation import DataFileError

    with tempfile.TemporaryDirectory(prefix="fedprofile-store-") as tmp:
        path = store or Path(tmp) / "store.sqlite"
        quarantine = Path(tmp) / "quarantine.csv" if store is None else path.with_suffix(".quarantine.csv")
        try:
            engine, summary = open_engine(data, fmt, store=path, quarantine=quarantine, catalogue=catalogue,
                                          retention=retention)
        except (DataFileError, ValueError) as exc:
            fail(str(exc))
        if not quiet:
            typer.echo(f"data: {summary.rows_accepted} events, {summary.users} users, {summary.items} items "
                       f"({summary.duplicates} duplicates, {summary.rows_quarantined} quarantined -> "
                       f"{summary.quarantine_path})", err=True)
        try:
            if model is not None:
                try:
                    engine.load_model(model, adjacency_weight=adjacency_weight)
                except (FileNotFoundError, ValueError) as exc:
                    fail(str(exc))
            yield engine
        finally:
            engine.close()


def _service_settings(host: str, tls_cert: Path | None, tls_key: Path | None, token_file: Path | None, insecure: bool,
                      retention_days: float):
    """Who may call the on-site service (TLS and token beyond loopback) and how long its store keeps logs; a
    setting that cannot be met ends the command with one line."""
    from client.onsite.access import service_access
    from client.onsite.store import Retention

    try:
        return (service_access(host, token_file=token_file, tls_cert=tls_cert, tls_key=tls_key, insecure=insecure),
                Retention(days=retention_days))
    except (OSError, ValueError) as exc:
        fail(str(exc))


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def profile(
    model: Model, data: Data, fmt: Fmt,
    user: Annotated[str, typer.Option(help="The customer's user id.")],
    vector: Annotated[bool, typer.Option(help="Include the profile vector.")] = False,
    catalogue: CatalogueFile = None,
    store: Store = None,
) -> None:
    """Print one customer's profile as JSON: interests, price level, habits, propensity, value, risk."""
    from client.onsite.engine import UnknownUser

    with _engine(model, data, fmt, store, catalogue=catalogue) as engine:
        try:
            record, version = engine.profile(user)
        except UnknownUser as exc:
            fail(exc.args[0])
    if not vector:
        record.pop("vector", None)
    _echo_json({**record, "model_version": version})


def recommend(
    model: Model, data: Data, fmt: Fmt,
    user: Annotated[str, typer.Option(help="The customer's user id.")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many items.", min=1, max=1000)] = 10,
    category: Annotated[Optional[str], typer.Option(help="Only items of this category.")] = None,
    min_price: Annotated[Optional[float], typer.Option(help="Lowest price.")] = None,
    max_price: Annotated[Optional[float], typer.Option(help="Highest price.")] = None,
    include_purchased: Annotated[bool, typer.Option(help="Also recommend items the customer bought.")] = False,
    in_stock_only: Annotated[bool, typer.Option(help="Only items in stock (needs --catalogue with in_stock).")] = False,
    rerank: Annotated[Optional[str], typer.Option(help="Instead: re-rank these comma-separated item ids.")] = None,
    adjacency_weight: AdjacencyWeight = None,
    catalogue: CatalogueFile = None,
    store: Store = None,
) -> None:
    """Print top-k recommendations (or a re-ranked candidate list) for a customer as JSON, with reasons."""
    from client.onsite.engine import UnknownUser

    with _engine(model, data, fmt, store, catalogue=catalogue, adjacency_weight=adjacency_weight) as engine:
        try:
            if rerank:
                items, unknown, version = engine.rerank(user, [i.strip() for i in rerank.split(",") if i.strip()])
            else:
                unknown = []
                items, version = engine.recommend(user, k=k, category=category, min_price=min_price,
                                                  max_price=max_price, include_purchased=include_purchased,
                                                  in_stock_only=in_stock_only)
        except UnknownUser as exc:
            fail(exc.args[0])
    _echo_json({"user_id": user, "model_version": version, "unknown_items": unknown,
                "items": [{"item_id": s.item_id, "score": s.score, "category": s.category, "price": s.price,
                           "reasons": list(s.reasons)} for s in items]})


def segments(
    model: Model, data: Data, fmt: Fmt,
    plot: Annotated[Optional[Path], typer.Option(help="Write a 2-D map of the profile space coloured by segment.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    catalogue: CatalogueFile = None,
    store: Store = None,
) -> None:
    """Print the customer segments (size, top interests, value) and optionally plot the profile space."""
    with _engine(model, data, fmt, store, catalogue=catalogue) as engine:
        rows, version = engine.segments()
        if plot is not None:
            _plot_segments(engine, plot)
    if as_json:
        _echo_json({"model_version": version, "segments": rows})
        return
    typer.echo(f"model {version}")
    typer.echo(f"{'seg':>3}  {'size':>6}  {'share':>6}  {'spend':>9}  {'buys':>5}  {'recency':>7}  {'propensity':>10}  name")
    for r in rows:
        typer.echo(f"{r['segment']:>3}  {r['size']:>6}  {r['share']:>6.1%}  {r['mean_monetary']:>9.2f}  "
                   f"{r['mean_purchases']:>5.1f}  {r['mean_recency_days']:>7.1f}  {r.get('mean_propensity', 0):>10.3f}  {r['name']}")
    if plot is not None:
        typer.echo(f"wrote {plot}")


def _plot_segments(engine, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.decomposition import PCA

    serving = engine.current
    users = list(serving.users.values())
    vectors = np.stack([u.vector for u in users])
    labels = np.array([u.segment for u in users])
    xy = PCA(n_components=2, random_state=0).fit_transform(vectors)
    fig, ax = plt.subplots(figsize=(7, 6))
    for seg in serving.segments:
        mask = labels == seg["segment"]
        ax.scatter(xy[mask, 0], xy[mask, 1], s=8, alpha=0.7, label=f"{seg['segment']}: {seg['name']} ({seg['size']})")
    ax.set_xlabel("profile PC 1")
    ax.set_ylabel("profile PC 2")
    ax.set_title(f"Profile space by segment (model {serving.version})")
    ax.legend(fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def audience(
    model: Model, data: Data, fmt: Fmt,
    category: Annotated[str, typer.Option(help="The category the campaign sells.")],
    n: Annotated[int, typer.Option("-n", help="Audience size.", min=1)] = 100,
    catalogue: CatalogueFile = None,
    store: Store = None,
) -> None:
    """Print the N customers most likely to buy in a category soon (JSON)."""
    with _engine(model, data, fmt, store, catalogue=catalogue) as engine:
        try:
            users, version = engine.audience(category, n)
        except KeyError as exc:
            fail(exc.args[0])
    _echo_json({"category": category, "model_version": version,
                "users": [{"user_id": u, "score": s} for u, s in users]})


def risk(
    model: Model, data: Data, fmt: Fmt,
    top: Annotated[int, typer.Option(help="How many of the riskiest customers.", min=1)] = 20,
    min_score: Annotated[float, typer.Option(help="Only scores at or above this.")] = 0.0,
    user: Annotated[Optional[str], typer.Option(help="One customer instead.")] = None,
    catalogue: CatalogueFile = None,
    store: Store = None,
) -> None:
    """Print suspected click-farming bots and fake reviewers with their scores and reasons (JSON)."""
    from client.onsite.engine import UnknownUser

    with _engine(model, data, fmt, store, catalogue=catalogue) as engine:
        try:
            entries, version = engine.risk(user_id=user, top=top, min_score=min_score)
        except UnknownUser as exc:
            fail(exc.args[0])
    _echo_json({"model_version": version, "users": entries})



@merchant_app.command("serve")
def merchant_serve(
    model: Model, data: Data, fmt: Fmt,
    grpc_port: Annotated[int, typer.Option(help="Port of the on-site gRPC service.", envvar="FEDPROFILE_GRPC_PORT")] = 50051,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    store: Annotated[Path, typer.Option(help="SQLite store of events and profiles.", envvar="FEDPROFILE_STORE")] = Path("merchant.sqlite"),
    watch: Annotated[float, typer.Option(help="Seconds between checks for a newer model version (0: never).")] = 5.0,
    catalogue: CatalogueFile = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    token_file: TokenFile = None,
    insecure: Annotated[bool, typer.Option(help="Listen beyond loopback without TLS and token (trusted networks "
                                                "only).")] = False,
    retention_days: RetentionDays = 90.0,
    console_port: ConsolePort = None,
    console_host: ConsoleHost = "127.0.0.1",
    console_writable: ConsoleWritable = False,
    adjacency_weight: AdjacencyWeight = None,
) -> None:
    """Run the on-site service alone on a published model (no federation), reloading newer versions."""
    from client.console.app import TOKEN_FILE, ConsoleOptions
    from client.console.federation import federation_status
    from client.onsite.service import serve
    from shared_model.access import read_or_make_token

    access, retention = _service_settings(host, tls_cert, tls_key, token_file, insecure, retention_days)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    with _engine(model, data, fmt, store, quiet=False, catalogue=catalogue, retention=retention,
                 adjacency_weight=adjacency_weight) as engine:
        server, port = serve(engine, host=host, port=grpc_port, access=access)
        console = None
        if console_port is not None:
            options = ConsoleOptions(port=console_port, host=console_host, writable=console_writable,
                                     tls_cert=tls_cert, tls_key=tls_key, insecure=insecure)
            try:
                console = options.start(engine, token=read_or_make_token(store.resolve().parent / TOKEN_FILE),
                                        federation=lambda: federation_status(models=model, state_dir=None,
                                                                             serving=engine.current.version))
            except (OSError, ValueError, RuntimeError) as exc:
                server.stop(grace=0)
                fail(f"console: {exc}")
            typer.echo(f"console on {console.url} (token: {store.resolve().parent / TOKEN_FILE})", err=True)
        stop = threading.Event()
        watcher = engine.watch(model, interval=watch, stop=stop,  # newer versions with their own weights
                               on_new=lambda target: engine.load_model(target, adjacency_weight=adjacency_weight)) if watch > 0 else None
        typer.echo(f"serving model {engine.current.version} on {host}:{port} (store {store}); Ctrl-C stops", err=True)
        wait_for_signal()
        if console is not None:
            console.stop()
        stop.set()
        server.health.enter_graceful_shutdown()
        server.stop(grace=5).wait()
        if watcher is not None:  # a thread still inside torch when the interpreter exits aborts the process
            watcher.join(timeout=60)


@merchant_app.command("run")
def merchant_run(
    data: Data, fmt: Fmt,
    superlink: Annotated[str, typer.Option(help="The federation's SuperLink Fleet API, HOST:PORT.",
                                           envvar="FEDPROFILE_SUPERLINK")],
    state_dir: Annotated[Path, typer.Option(help="The merchant's own folder: privacy ledger, local weights, "
                                                 "received global models.", envvar="FEDPROFILE_STATE_DIR")],
    root_certificates: Annotated[Optional[Path], typer.Option(help="CA certificate (PEM) of the SuperLink's TLS.")] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS to the SuperLink, and the on-site service may listen "
                                                "beyond loopback without TLS and token (local experiments only).")] = False,
    auth_key: Annotated[Optional[Path], typer.Option(help="The merchant's private key (`fedprofile merchant keys`).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Merchant name in the federation's logs.")] = None,
    max_epsilon: Annotated[float, typer.Option(help="Privacy policy: epsilon per customer over every run, "
                                                    "whatever a run asks.")] = 8.0,
    max_delta: Annotated[float, typer.Option(help="Privacy policy: the largest delta.")] = 1e-5,
    max_sample_rate: Annotated[float, typer.Option(help="Privacy policy: the largest share of customers in one "
                                                        "DP step.")] = 1.0,
    max_steps: Annotated[int, typer.Option(help="Privacy policy: DP steps over every run.")] = 100_000,
    max_parameters: Annotated[int, typer.Option(help="Privacy policy: the largest shared model it trains.")] = 50_000_000,
    allow_no_dp: Annotated[bool, typer.Option("--allow-no-dp", help="Privacy policy: also train in runs without "
                                                                     "DP (off: such runs are refused).")] = False,
    grpc_port: Annotated[int, typer.Option(help="Port of the on-site gRPC service.", envvar="FEDPROFILE_GRPC_PORT")] = 50051,
    host: Annotated[str, typer.Option(help="Interface the on-site service listens on.")] = "127.0.0.1",
    clientapp_port: Annotated[int, typer.Option(help="Local port of the SuperNode's ClientApp API.")] = 9094,
    store: Annotated[Path, typer.Option(help="SQLite store of events and profiles.", envvar="FEDPROFILE_STORE")] = Path("merchant.sqlite"),
    model: Annotated[Optional[str], typer.Option(help="A model to serve until the federation sends one.")] = None,
    catalogue: CatalogueFile = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    token_file: TokenFile = None,
    retention_days: RetentionDays = 90.0,
    onsite_epochs: Annotated[int, typer.Option(help="Fine-tune each received global model on this merchant's own "
                                                    "customers for at most this many epochs (the best by validation "
                                                    "is served; it never leaves the merchant). 0: serve it as "
                                                    "received.")] = 30,
    alone_epochs: Annotated[int, typer.Option(help="Also train this merchant's own model from fresh weights for at "
                                                   "most this many epochs (again when its events change); it is "
                                                   "served when it beats both on validation. 0: not trained.")] = 50,
    onsite_blend: Annotated[bool, typer.Option(help="Blend what is served with this merchant's item adjacency (how "
                                                    "often two items came next to each other in its customers' "
                                                    "histories) where its validation customers are ranked better.")] = True,
    onsite_ensemble: Annotated[bool, typer.Option(help="Also try this merchant's own model and the federation's "
                                                       "together (their scores added, the weight chosen on "
                                                       "validation); served when it beats the rest.")] = True,
    round_worker: Annotated[bool, typer.Option(help="Keep a round worker warm (torch, data and round code loaded) "
                                                    "that answers the federation's messages; off: each message "
                                                    "loads everything in a fresh process, as Flower starts it.")] = True,
    train_threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads the round worker trains with "
                                                                     "(default: half the cores; serving keeps the "
                                                                     "rest).")] = None,
    console_port: ConsolePort = None,
    console_host: ConsoleHost = "127.0.0.1",
    console_writable: ConsoleWritable = False,
) -> None:
    """Run both jobs of a merchant: the Flower SuperNode that trains with the federation, and the on-site
    service, which serves each global model version the federation sends as soon as it arrives."""
    from client.console.app import ConsoleOptions
    from client.daemon import MerchantDaemon
    from client.onsite.personalise import OnsiteConfig
    from client.policy import PrivacyPolicy

    if insecure == (root_certificates is not None):
        fail("give either --root-certificates CA.pem (TLS) or --insecure")
    if min(onsite_epochs, alone_epochs) < 0:
        fail(f"--onsite-epochs and --alone-epochs must be 0 (off) or more, got {onsite_epochs} and {alone_epochs}")
    access, retention = _service_settings(host, tls_cert, tls_key, token_file, insecure, retention_days)
    try:
        policy = PrivacyPolicy(require_dp=not allow_no_dp, max_epsilon=max_epsilon, max_delta=max_delta,
                               max_sample_rate=max_sample_rate, max_steps=max_steps, max_parameters=max_parameters)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    daemon = MerchantDaemon(access=access, retention=retention, data=data, fmt=fmt, superlink=superlink, state_dir=state_dir,
                            root_certificates=root_certificates, auth_key=auth_key, name=name, policy=policy,
                            grpc_port=grpc_port, host=host, clientapp_port=clientapp_port, store=store, model=model,
                            catalogue=catalogue, onsite=OnsiteConfig(epochs=onsite_epochs, alone_epochs=alone_epochs,
                                                                     blend=onsite_blend, ensemble=onsite_ensemble),
                            round_worker=round_worker, train_threads=train_threads,
                            console=None if console_port is None else ConsoleOptions(
                                port=console_port, host=console_host, writable=console_writable, tls_cert=tls_cert,
                                tls_key=tls_key, insecure=insecure))
    try:
        daemon.start()
    except (OSError, ValueError, RuntimeError) as exc:
        fail(str(exc))
    typer.echo(f"merchant {daemon.name}: SuperNode -> {superlink}, on-site service on {host}:{daemon.port}", err=True)
    if daemon.console is not None:
        typer.echo(f"console on {daemon.console.url} (token: {state_dir / 'console-token'})", err=True)
    try:
        wait_for_signal()
    finally:
        daemon.stop()
