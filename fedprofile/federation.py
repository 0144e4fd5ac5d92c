"""A whole federation on one machine as separate processes: SuperLink, merchant daemons, a run, and checks."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.console.app import ADDRESS_FILE as CONSOLE_ADDRESS
from client.console.app import TOKEN_FILE as CONSOLE_TOKEN
from client.daemon import refused_by_superlink
from client.keys import make_merchant_keys
from client.onsite.fitter import global_part
from client.onsite.proto import merchant_pb2 as pb
from client.onsite.proto import merchant_pb2_grpc as pb_grpc
from server.console.app import create_app as create_console
from server.console.app import superlink_nodes
from server.keys import make_server_certificates
from server.superlink import (
    APP_DIR,
    CONNECTION,
    SuperLinkSettings,
    flwr,
    register_merchant,
    run_args,
    start_front,
    start_superlink,
)
from shared_model.access import read_or_make_token
from shared_model.console.server import ConsoleServer
from shared_model.data.synthetic import SyntheticConfig, generate, write
from shared_model.processes import env_with_our_bin, flower_binary, free_port

log = logging.getLogger("fedprofile.federation")


def _stop(process: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class LocalFederation:
    """`out/`: certs/, keys/NAME(.pub), data/merchant-N/, server/ (SuperLink database, logs, run folder),
    merchants/NAME/ (state folder, store), logs/, summary.json. Merchants past `merchants` are started with
    keys the server never registered: the SuperLink must refuse them."""

    def __init__(self, out: str | Path, *, merchants: int = 3, unregistered: int = 0, users: int = 150,
                 insecure: bool = False, onsite_fit: bool = True, onsite_epochs: int | None = None,
                 alone_epochs: int | None = None, round_worker: bool = True, console: bool = False):
        self.out = Path(out).resolve()
        self.round_worker = round_worker  # off: every message starts a cold ClientApp process that loads everything
        self.onsite_fit = onsite_fit  # off: each merchant serves the global versions as received
        # the fit's budget when on (None: `merchant run`'s own default)
        self.onsite_epochs, self.alone_epochs = onsite_epochs, alone_epochs
        self.n, self.unregistered, self.users, self.insecure = merchants, unregistered, users, insecure
        self.names = [f"shop-{i}" for i in range(merchants + unregistered)]
        self.registered = self.names[:merchants]
        self.superlink: subprocess.Popen | None = None
        self.daemons: dict[str, subprocess.Popen] = {}
        self.grpc_ports: dict[str, int] = {}
        # the SuperLink's ports, once started (a restarted server keeps them)
        self.port: int | None = None
        self.internal_port: int | None = None
        self.logs = self.out / "logs"
        self.console = console  # the coordinator's console here, each merchant's in its daemon
        self.coordinator_console = None

    # ---- set-up ---------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not self.insecure:
            make_server_certificates(self.out / "certs", ["localhost", "127.0.0.1"])
        shops = generate(SyntheticConfig(merchants=len(self.names), users_per_merchant=self.users,
                                         items_per_merchant=600, seed=11))
        write(shops, self.out / "data")
        for name in self.names:
            if not (self.out / "keys" / name).exists():
                make_merchant_keys(self.out / "keys", name)

    def start_server(self) -> None:
        self.port = self.port or free_port()  # a restarted server keeps its addresses
        self.internal_port = self.internal_port or free_port()
        self.settings = SuperLinkSettings(state_dir=self.out / "server", certs=None if self.insecure else self.out / "certs",
                                          insecure=self.insecure, host="127.0.0.1", port=self.port,
                                          internal_port=self.internal_port)
        self.flwr_home = self.settings.write_operator_config()
        self.superlink = start_superlink(self.settings, stdout=open(self.logs / "superlink.out", "ab"))
        self.front = start_front(self.settings)
        log.info("SuperLink on 127.0.0.1:%d (%s)", self.port, "insecure" if self.insecure else "TLS + authentication")
        if self.console and self.coordinator_console is None:
            app = create_console(self.out / "server" / "run", token=read_or_make_token(self.out / "server" / CONSOLE_TOKEN),
                                 nodes=superlink_nodes(self.flwr_home),
                                 superlink_log=self.out / "server" / "superlink.log")
            self.coordinator_console = ConsoleServer(app, port=0).start()  # port 0: bound at once, no race

    def register(self) -> None:
        if self.insecure:
            return
        for name in self.registered:
            register_merchant(self.flwr_home, self.out / "keys" / f"{name}.pub", name)
            log.info("registered %s", name)

    def merchant_command(self, name: str) -> list[str]:
        """`fedprofile merchant run` as this federation starts merchant `name` (its ports kept across restarts)."""
        index = self.names.index(name)
        grpc_port = self.grpc_ports.setdefault(name, free_port())
        state = self.out / "merchants" / name
        cmd = [sys.executable, "-m", "fedprofile", "merchant", "run", "--data", str(self.out / "data" / f"merchant-{index}"),
               "--format", "synthetic", "--superlink", f"127.0.0.1:{self.port}", "--state-dir", str(state),
               "--grpc-port", str(grpc_port), "--clientapp-port", str(free_port()), "--store", str(state / "store.sqlite"),
               "--name", name]
        if not self.onsite_fit:
            cmd += ["--onsite-epochs", "0", "--alone-epochs", "0", "--no-onsite-blend"]
        else:
            for flag, epochs in (("--onsite-epochs", self.onsite_epochs), ("--alone-epochs", self.alone_epochs)):
                if epochs is not None:
                    cmd += [flag, str(epochs)]
        cmd += [] if self.round_worker else ["--no-round-worker"]
        if self.console:  # port 0: a port picked here and bound later could be taken meanwhile (it was, once)
            cmd += ["--console-port", "0"]
        cmd += ["--insecure"] if self.insecure else ["--root-certificates", str(self.out / "certs" / "ca.crt"),
                                                     "--auth-key", str(self.out / "keys" / name)]
        return cmd

    def start_merchant(self, name: str) -> subprocess.Popen:
        (self.out / "merchants" / name).mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(self.merchant_command(name), stdout=open(self.logs / f"{name}.log", "ab"), stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": os.pathsep.join([str(APP_DIR), os.environ.get("PYTHONPATH", "")])},
                                   start_new_session=True)  # its SuperNode and ClientApp share its process group
        self.daemons[name] = process
        return process

    def wait_for_services(self, names, timeout: float = 180.0) -> None:
        """Until each merchant's on-site service answers health checks (it may still be NOT_SERVING)."""
        deadline = time.time() + timeout
        for name in names:
            channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_ports[name]}")
            while True:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    if self.daemons[name].poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"{name}'s service did not come up; see {self.logs / (name + '.log')}")
                    time.sleep(0.5)
            channel.close()

    def connected_nodes(self) -> int:
        done = flwr(["supernode", "list", CONNECTION, "--format", "json"], self.flwr_home, timeout=60)
        if done.returncode != 0:
            return 0
        try:
            nodes = json.loads(done.stdout).get("nodes", [])
        except json.JSONDecodeError:
            return 0
        return sum(1 for n in nodes if str(n.get("status", "")).lower() in ("online", "connected"))

    # ---- the run ----------------------------------------------------------------------------------------------

    def submit(self, *, rounds: int, epsilon: float, timeout: float, extra: dict | None = None) -> subprocess.Popen:
        values = {"num-rounds": rounds, "run-dir": str(self.out / "server" / "run"), "dp": "true",
                  "target-epsilon": epsilon, "min-replies": 2, "local-epochs": 1, **(extra or {})}
        return subprocess.Popen([flower_binary("flwr"), *run_args(values)], stdout=open(self.logs / "flwr-run.log", "ab"), stderr=subprocess.STDOUT,
                                env=env_with_our_bin({"FLWR_HOME": str(self.flwr_home)}))

    def checkpoint_state(self) -> dict:
        run = self.out / "server" / "run" / "checkpoints"
        pointer = run / "LATEST"
        if not pointer.exists():
            return {}
        folder = run / pointer.read_text().strip()
        return {"round": int(folder.name.split("-")[-1]), **json.loads((folder / "state.json").read_text())}

    def served_versions(self) -> dict[str, str]:
        out = {}
        for name in self.daemons:
            with grpc.insecure_channel(f"127.0.0.1:{self.grpc_ports[name]}") as channel:
                try:
                    out[name] = pb_grpc.MerchantProfilesStub(channel).RiskReport(pb.RiskRequest(top=1), timeout=10).model_version
                except grpc.RpcError as exc:
                    out[name] = f"none ({exc.code().name})"
        return out

    def fitted(self, name: str, version: str) -> bool:
        """Whether the merchant's daemon has finished with global `version`: it serves its on-site fit, or
        found the global model best."""
        log_file = self.logs / f"{name}.log"
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        return f"serving model {version}+local" in text or f"on-site fit of {version}: the global model stays" in text

    def refused(self) -> list[str]:
        """Merchants the SuperLink turned away: its log names their public key as unknown, and their own
        SuperNode log says it could not activate (both sides see it)."""
        server_log = (self.out / "server" / "superlink.log").read_text(errors="replace") \
            if (self.out / "server" / "superlink.log").exists() else ""
        server_log += (self.logs / "superlink.out").read_text(errors="replace") if (self.logs / "superlink.out").exists() else ""
        out = []
        for name in self.names:
            key = serialization.load_ssh_public_key((self.out / "keys" / f"{name}.pub").read_bytes())
            pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            body = "".join(pem.strip().splitlines()[1:-1])
            server_saw = any("No SuperNode found" in line and body[:40] in line.replace("\\n", "")
                             for line in server_log.splitlines())
            merchant_saw = refused_by_superlink(self.out / "merchants" / name / "supernode.log")
            if server_saw and merchant_saw:
                out.append(name)
        return out

    def run(self, *, rounds: int, epsilon: float = 8.0, timeout: float = 900.0, extra: dict | None = None) -> dict:
        started = time.time()
        self.prepare()
        self.start_server()
        self.register()
        for name in self.names:
            self.start_merchant(name)
        self.wait_for_services(self.names)
        deadline = time.time() + 120
        while self.connected_nodes() < self.n and time.time() < deadline:
            time.sleep(1.0)
        log.info("%d SuperNodes connected; submitting %d rounds", self.connected_nodes(), rounds)
        run = self.submit(rounds=rounds, epsilon=epsilon, timeout=timeout, extra=extra)
        try:
            run.wait(timeout=max(timeout - (time.time() - started), 60))
        except subprocess.TimeoutExpired:
            _stop(run)
        state = self.checkpoint_state()
        completed = state.get("round", 0)
        expected = f"v{completed:04d}@{state.get('run_id', '')}"
        deadline = time.time() + 240  # an on-site fit trains two models; on a loaded machine that takes minutes
        versions = self.served_versions()
        # each merchant serves the final global version, then (once its on-site fit is done) that fit
        while (any(global_part(versions[n]) != expected or (self.onsite_fit and not self.fitted(n, expected))
                   for n in self.registered)
               and time.time() < deadline):
            time.sleep(1.0)
            versions = self.served_versions()
        refused = self.refused()
        consoles = self.snapshot_consoles() if self.console else {}
        summary = {
            "merchants": [{"name": n, "model_version": versions.get(n), "global_version": global_part(versions.get(n, "")),
                           "epsilon": state.get("epsilon", {}).get(n), "registered": n in self.registered}
                          for n in self.names],
            "refused": refused,
            "rounds_completed": completed,
            "run_id": state.get("run_id"),
            "expected_model_version": expected,
            "tls": not self.insecure,
            "consoles": consoles,
            "seconds": round(time.time() - started, 1),
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def console_pages(self) -> dict[str, tuple[str, str, str]]:
        """(url, token file, the page to look at) of the coordinator's console and each registered merchant's."""
        pages = {}
        if self.coordinator_console is not None:
            pages["coordinator"] = (self.coordinator_console.url, str(self.out / "server" / CONSOLE_TOKEN), "/rounds")
        for name in self.registered:
            address = self.out / "merchants" / name / CONSOLE_ADDRESS
            if address.is_file():
                pages[name] = (address.read_text().strip(), str(self.out / "merchants" / name / CONSOLE_TOKEN),
                               "/federation")
        return pages

    def snapshot_consoles(self) -> dict[str, str]:
        """Save each console's page as the run ended to OUT/console/NAME.html; returns where each console is."""
        folder = self.out / "console"
        folder.mkdir(exist_ok=True)
        out = {}
        for name, (url, token_file, path) in self.console_pages().items():
            try:
                page = httpx.get(url + path, timeout=30,
                                 headers={"authorization": f"Bearer {Path(token_file).read_text().strip()}"})
                (folder / f"{name}.html").write_text(page.text)
            except (OSError, httpx.HTTPError) as exc:
                log.warning("could not read %s's console at %s: %s", name, url, exc)
            out[name] = url
        return out

    def kill_merchant(self, name: str) -> None:
        """SIGKILL the merchant's daemon, SuperNode and ClientApp at once (a crash, not a shutdown)."""
        _kill_group(self.daemons[name])

    def kill_server(self) -> None:
        """SIGKILL the SuperLink and the ServerApp it runs (and close the merchants' address)."""
        _kill_group(self.superlink)
        self.front.stop()

    def stop(self) -> None:
        if self.coordinator_console is not None:
            self.coordinator_console.stop()
            self.coordinator_console = None
        if getattr(self, "front", None) is not None:
            self.front.stop()
        for process in self.daemons.values():
            _stop(process)
            _kill_group(process)  # whatever it left behind
        _stop(self.superlink)
        _kill_group(self.superlink)


def _kill_group(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass

