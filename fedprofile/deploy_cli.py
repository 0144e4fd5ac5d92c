"""`fedprofile server ...`, `fedprofile merchant keys` and `fedprofile federation local`: a real deployment."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedprofile.console import fail, parse_sets, wait_for_signal

server_app = typer.Typer(help="Run the coordinating server: a Flower SuperLink with TLS and merchant authentication.",
                         no_args_is_help=True)
federation_app = typer.Typer(help="Whole federations on one machine, as separate processes.", no_args_is_help=True)

StateDir = Annotated[Path, typer.Option(help="The server's folder: SuperLink database, logs, runs, operator config.",
                                        envvar="FEDPROFILE_SERVER_DIR")]



@server_app.command("keys")
def server_keys(
    host: Annotated[list[str], typer.Option(help="Host name or IP address merchants connect to (repeatable).")],
    out: Annotated[Path, typer.Option(help="Folder for ca.crt, ca.key, server.pem, server.key.")] = Path("certs"),
    days: Annotated[int, typer.Option(help="Validity of the server certificate in days.", min=1)] = 365,
) -> None:
    """Create the federation's CA (once) and the SuperLink certificate for the given host names."""
    from server.keys import make_server_certificates

    paths = make_server_certificates(out, host, days=days)
    typer.echo(f"CA certificate (give to merchants): {paths['ca']}")
    typer.echo(f"server certificate for {', '.join(host)}: {paths['certificate']} (key {paths['key']}, keep private)")


def _settings(state_dir: Path, certs: Optional[Path], insecure: bool, host: str, port: int, internal_port: int = 0):
    from server.superlink import SuperLinkSettings

    try:
        return SuperLinkSettings(state_dir=state_dir.resolve(), certs=certs.resolve() if certs else None,
                                 insecure=insecure, host=host, port=port, internal_port=internal_port)
    except ValueError as exc:
        fail(str(exc))


@server_app.command("run")
def server_run(
    state_dir: StateDir,
    certs: Annotated[Optional[Path], typer.Option(help="Folder from `fedprofile server keys` (TLS on).")] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS and no merchant authentication (local experiments).")] = False,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="The merchants' port: the Fleet API alone.", envvar="FEDPROFILE_PORT")] = 9091,
    internal_port: Annotated[int, typer.Option(help="The SuperLink's own port on 127.0.0.1 (all its APIs, for the "
                                                    "operator's `flwr`; default PORT + 1).")] = 0,
    address: Annotated[Optional[str], typer.Option(help="Address operators use for `flwr` (default "
                                                        "127.0.0.1:INTERNAL_PORT).")] = None,
    console_port: Annotated[Optional[int], typer.Option(help="Serve the coordinator's console (rounds, merchants "
                                                             "connected and refused, quality, epsilon) on this port; "
                                                             "off unless given; 0: a free port.")] = None,
    console_host: Annotated[str, typer.Option(help="Interface the console listens on (beyond loopback: TLS from "
                                                   "--certs, or --insecure).")] = "127.0.0.1",
) -> None:
    """Start the SuperLink (persistent database in STATE_DIR; TLS and SuperNode authentication unless --insecure)
    and write the operator's `flwr` connection; stops on Ctrl-C."""
    from server.console.app import TOKEN_FILE, create_app, superlink_nodes
    from server.superlink import APP_DIR, start_front, start_superlink
    from shared_model.access import read_or_make_token
    from shared_model.console.server import ConsoleServer

    settings = _settings(state_dir, certs, insecure, host, port, internal_port)
    flwr_home = settings.write_operator_config(address)
    try:
        process = start_superlink(settings)
        front = start_front(settings)
    except (OSError, RuntimeError) as exc:
        fail(str(exc))
    console = None
    if console_port is not None:
        try:
            app = create_app(state_dir / "run", token=read_or_make_token(state_dir / TOKEN_FILE),
                             nodes=superlink_nodes(flwr_home), superlink_log=settings.state_dir / "superlink.log",
                             secure_cookie=certs is not None)
            console = ConsoleServer(app, host=console_host, port=console_port, insecure=insecure,
                                    tls_cert=certs / "server.pem" if certs else None,
                                    tls_key=certs / "server.key" if certs else None).start()
        except (OSError, ValueError, RuntimeError) as exc:
            front.stop()
            process.terminate()
            fail(f"console: {exc}")
        typer.echo(f"console on {console.url} (token: {state_dir / TOKEN_FILE})", err=True)
    typer.echo(f"merchants' address {host}:{port} (the Fleet API alone; "
               f"{'INSECURE' if insecure else 'TLS, merchant authentication on'}); SuperLink on "
               f"127.0.0.1:{settings.internal} for the operator; database {settings.database}", err=True)
    typer.echo(f"register merchants: fedprofile server register --state-dir {state_dir} MERCHANT.pub --name NAME", err=True)
    typer.echo(f"start a run:        fedprofile server submit --state-dir {state_dir} [--set num-rounds=5 ...]", err=True)
    typer.echo(f"(or FLWR_HOME={flwr_home} flwr run {APP_DIR} fedprofile)", err=True)
    stopped = wait_for_signal(while_=lambda: process.poll() is None)
    if console is not None:
        console.stop()
    front.stop()
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)
    raise typer.Exit(0 if stopped else (process.returncode or 1))


@server_app.command("register")
def server_register(
    state_dir: StateDir,
    public_key: Annotated[Path, typer.Argument(help="The merchant's public key (from `fedprofile merchant keys`).")],
    name: Annotated[str, typer.Option(help="The merchant's name.")],
) -> None:
    """Register a merchant's public key with the running SuperLink; only registered merchants may join."""
    from server.superlink import register_merchant

    try:
        typer.echo(register_merchant(state_dir / "flwr", public_key, name))
    except RuntimeError as exc:
        fail(str(exc))


@server_app.command("submit")
def server_submit(
    state_dir: StateDir,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Run-config key=value (see pyproject.toml).")] = None,
    stream: Annotated[bool, typer.Option(help="Follow the run's log until it ends.")] = True,
) -> None:
    """Submit a federated training run (the fedprofile Flower app) to the running SuperLink."""
    from server.superlink import flwr, run_args

    values = {"run-dir": str((state_dir / "run").resolve()), **parse_sets(set_)}
    done = flwr(run_args(values, stream=stream), state_dir / "flwr")
    typer.echo(done.stdout)
    if done.returncode != 0:
        fail(f"flwr run failed: {done.stderr[-2000:]}")


def merchant_keys(
    out: Annotated[Path, typer.Option(help="Folder for the key pair.")] = Path("keys"),
    name: Annotated[str, typer.Option(help="File name of the key (NAME and NAME.pub).")] = "merchant",
) -> None:
    """Make the merchant's SuperNode key pair; send NAME.pub to the coordinator, keep NAME private."""
    from client.keys import make_merchant_keys

    try:
        paths = make_merchant_keys(out, name)
    except FileExistsError as exc:
        fail(str(exc))
    typer.echo(f"private key (keep it here; `fedprofile merchant run --auth-key {paths['private']}`): {paths['private']}")
    typer.echo(f"public key (send to the coordinator to register): {paths['public']}")


@federation_app.command("local")
def federation_local(
    out: Annotated[Path, typer.Option(help="Folder for everything: certs, keys, data, logs, summary.json.")],
    merchants: Annotated[int, typer.Option(help="Registered merchants.", min=2)] = 3,
    rounds: Annotated[int, typer.Option(help="Federated rounds.", min=1)] = 2,
    unregistered: Annotated[int, typer.Option(help="Extra merchants whose keys are not registered.", min=0)] = 0,
    users: Annotated[int, typer.Option(help="Customers per synthetic merchant.", min=20)] = 150,
    insecure: Annotated[bool, typer.Option(help="No TLS and no authentication (then nobody is refused).")] = False,
    epsilon: Annotated[float, typer.Option(help="Target epsilon per merchant.")] = 8.0,
    timeout: Annotated[float, typer.Option(help="Seconds before giving up on the run.")] = 900.0,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Further run-config key=value.")] = None,
    round_worker: Annotated[bool, typer.Option(help="Each merchant keeps a warm round worker (off: a cold process "
                                                    "per message).")] = True,
    console: Annotated[bool, typer.Option(help="Start the coordinator's console and each merchant's; their pages "
                                               "as the run ended go to OUT/console/.")] = False,
    onsite_epochs: Annotated[Optional[int], typer.Option(
        help="Each merchant fine-tunes the final global model for at most this many epochs (default: `merchant run "
             "--onsite-epochs`'s).", min=0)] = None,
    alone_epochs: Annotated[Optional[int], typer.Option(
        help="Each merchant trains its own model for at most this many epochs (default: `merchant run "
             "--alone-epochs`'s).", min=0)] = None,
    stay: Annotated[bool, typer.Option(help="After the run, keep everything up (with the consoles) until Ctrl-C.")] = False,
) -> None:
    """Start a SuperLink and merchant daemons as separate processes on 127.0.0.1 (TLS and authentication on),
    run a federated training with DP, check through gRPC which model each merchant serves, stop everything
    and write OUT/summary.json."""
    from fedprofile.federation import LocalFederation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    extra = parse_sets(set_)
    federation = LocalFederation(out, merchants=merchants, unregistered=unregistered, users=users, insecure=insecure,
                                  onsite_epochs=onsite_epochs, alone_epochs=alone_epochs, round_worker=round_worker,
                                  console=console or stay)
    try:
        summary = federation.run(rounds=rounds, epsilon=epsilon, timeout=timeout, extra=extra)
        if stay:
            for name, (url, token_file, path) in federation.console_pages().items():
                typer.echo(f"{name} console: {url}{path} (token: {token_file})", err=True)
            typer.echo("the federation stays up; Ctrl-C stops it", err=True)
            wait_for_signal()
    finally:
        federation.stop()
    typer.echo(json.dumps(summary, indent=2))
    if summary["rounds_completed"] < rounds:
        fail(f"only {summary['rounds_completed']} of {rounds} rounds completed; logs in {out}")
