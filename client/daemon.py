"""The merchant daemon: a Flower SuperNode (training with the federation) beside the on-site gRPC service."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

from client.app_pin import pinned_bin
from client.console.app import ADDRESS_FILE as CONSOLE_ADDRESS
from client.console.app import TOKEN_FILE as CONSOLE_TOKEN
from client.console.app import ConsoleOptions
from client.console.federation import federation_status
from client.onsite.access import ServiceAccess
from client.onsite.engine import open_engine
from client.onsite.fitter import ONSITE, OnsiteFitter
from client.onsite.personalise import OnsiteConfig
from client.onsite.service import serve
from client.onsite.store import Retention
from client.policy import PrivacyPolicy
from client.state import MODELS
from shared_model.access import read_or_make_token
from shared_model.checkpoint import resolve_model_folder
from shared_model.files import atomic_write
from shared_model.processes import config_string, env_with_our_bin

log = logging.getLogger("fedprofile.daemon")
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


def supernode_command(*, superlink: str, node_config: dict, root_certificates: Path | None, auth_key: Path | None,
                      clientapp_port: int, worker_secret: Path | None = None) -> list[str]:
    """The `flower-supernode` command line for this merchant (TLS unless no root certificates are given). With
    `worker_secret` it starts no ClientApp processes: the round worker holding that secret takes its tasks."""
    # Flower's own SuperNode, with a shorter idle poll (client/supernode.py); its Runtime API on loopback only
    cmd = [sys.executable, "-m", "client.supernode", "--superlink", superlink, "--node-config", config_string(node_config),
           "--host", "127.0.0.1", "--port", str(clientapp_port)]
    if worker_secret is not None:
        cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(worker_secret)]
    cmd += ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
    if auth_key:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    return cmd


class MerchantDaemon:
    """Starts the on-site service first (it serves the newest model on disk, or waits for the first one), then
    keeps a SuperNode running: if it exits, it is started again with exponential backoff, while the
    on-site service carries on answering. Each global version the SuperNode receives is served at once, then
    its on-site fit (client/onsite/fitter.py) replaces it.

    With `round_worker` (the default) a round worker (client/worker.py) is kept running beside them the same way:
    a process with torch, the merchant's data and the round code loaded, limited to `train_threads` torch
    threads, that takes the SuperNode's ClientApp tasks itself (no process per message). Training there never
    blocks serving, and a crash there costs one reply, not the service. Without it the SuperNode starts Flower's
    `flwr-clientapp` (pinned, client/app_pin.py) for every message."""

    def __init__(self, *, data: str, fmt: str, superlink: str, state_dir: Path, root_certificates: Path | None = None,
                 auth_key: Path | None = None, name: str | None = None, policy: PrivacyPolicy = PrivacyPolicy(), access: ServiceAccess = ServiceAccess(),
                 retention: Retention = Retention(),
                 grpc_port: int = 50051, host: str = "127.0.0.1", clientapp_port: int = 9094,
                 store: Path = Path("merchant.sqlite"), model: str | None = None, catalogue: Path | None = None,
                 onsite: OnsiteConfig = OnsiteConfig(),
                 watch_interval: float = 1.0, max_log_bytes: int = 50_000_000,
                 max_backoff: float = 60.0, round_worker: bool = True, train_threads: int | None = None,
                 console: ConsoleOptions | None = None):
        self.data, self.fmt, self.superlink = str(Path(data).resolve()), fmt, superlink
        self.state_dir = Path(state_dir).resolve()
        self.root_certificates, self.auth_key = root_certificates, auth_key
        self.name = name or Path(data).stem
        self.policy, self.access, self.retention = policy, access, retention
        self.grpc_port, self.host, self.clientapp_port = grpc_port, host, clientapp_port
        self.store_path, self.model, self.catalogue = Path(store), model, catalogue
        self.onsite = onsite  # how each received global version is fine-tuned on site (epochs 0: served as is)
        self.watch_interval, self.max_backoff, self.max_log_bytes = watch_interval, max_backoff, max_log_bytes
        self.round_worker = round_worker
        self.console_options, self.console = console, None
        self.train_threads = train_threads or default_train_threads()
        self.port: int | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._processes: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.policy.save(self.state_dir)  # what the ClientApp enforces on every message of every run
        self.engine, _ = open_engine(self.data, self.fmt, store=self.store_path,
                                     quarantine=self.state_dir / "quarantine.csv", catalogue=self.catalogue,
                                     retention=self.retention)
        models = self.state_dir / MODELS
        self.fitter = OnsiteFitter(self.engine, self.state_dir / ONSITE, self.onsite)
        if (models / "LATEST").exists():  # a restart serves what it served: the on-site fit of the newest version
            self.engine.load_model(self.fitter.fitted_for(resolve_model_folder(models)) or models)
        elif self.model:  # until the first version arrives: the operator's model (with its saved blend weight)
            self.engine.load_model(self.model)
        self.server, self.port = serve(self.engine, host=self.host, port=self.grpc_port, access=self.access)
        if self.console_options is not None:
            self.console = self.console_options.start(
                self.engine, token=read_or_make_token(self.state_dir / CONSOLE_TOKEN), federation=self._federation_status)
            # where it listens (a --console-port of 0 takes a free port only the console knows until now)
            atomic_write(self.state_dir / CONSOLE_ADDRESS, f"{self.console.url}\n".encode())
        self._watcher = self.fitter.watch(models, interval=self.watch_interval, stop=self._stop)
        node_config = {"data-path": self.data, "format": self.fmt, "state-dir": str(self.state_dir),
                       "merchant-name": self.name}
        secret = self._worker_secret() if self.round_worker else None
        if secret is not None:
            self._supervise("worker", [sys.executable, "-m", "client.worker", "--runtime-api-address",
                                       f"127.0.0.1:{self.clientapp_port}", "--secret-file", str(secret),
                                       "--threads", str(self.train_threads)], env=env_with_our_bin())
        self._supervise("supernode", supernode_command(
            superlink=self.superlink, root_certificates=self.root_certificates, auth_key=self.auth_key,
            clientapp_port=self.clientapp_port, node_config=node_config, worker_secret=secret),
            env=self._supernode_env())

    def _federation_status(self) -> dict:
        serving = self.engine.current.version if self.engine.current else None
        return federation_status(models=self.state_dir / MODELS, state_dir=self.state_dir, serving=serving)

    def _worker_secret(self) -> Path:
        """The secret the SuperNode asks of whoever takes its tasks (Flower's SuperExec authentication), in a
        folder only this user can enter; new at each start of the daemon."""
        folder = self.state_dir / "worker"
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
        key = folder / "secret"
        key.touch(mode=0o600)
        key.chmod(0o600)
        key.write_bytes(secrets.token_bytes(32))
        return key

    def _supervise(self, name: str, cmd: list[str], *, env: dict) -> None:
        threading.Thread(target=self._keep_running, args=(name, cmd, env), name=name, daemon=True).start()

    def _keep_running(self, name: str, cmd: list[str], env: dict) -> None:
        """Run `cmd` (logging to STATE/NAME.log) and start it again with exponential backoff whenever it exits."""
        delay = None
        while not self._stop.is_set():
            log.info("starting %s: %s", name, " ".join(cmd))
            with open_rotated(self.state_dir / f"{name}.log", max_bytes=self.max_log_bytes) as logs:
                started = time.monotonic()
                process = subprocess.Popen(cmd, stdout=logs, stderr=subprocess.STDOUT, env=env)
                self._processes[name] = process
            code = process.wait()
            if self._stop.is_set():
                break
            delay = restart_delay(delay, time.monotonic() - started, max_backoff=self.max_backoff)
            self.restarts += 1
            if name == "supernode" and refused_by_superlink(self.state_dir / "supernode.log"):
                log.error("the SuperLink refused this merchant: its public key is not registered there (Flower code "
                          "2004); send %s.pub to the coordinator to register", self.auth_key or "your key")
            log.warning("%s exited with %s; starting it again in %.0fs (on-site service keeps serving)", name, code,
                        delay)
            if self._stop.wait(delay):
                break

    def _supernode_env(self) -> dict:
        """Our bin folder first (Flower's helpers), and before it the pinned task processes: the SuperNode runs
        only the ClientApp code installed here (client/app_pin.py)."""
        env = env_with_our_bin()
        env["PATH"] = os.pathsep.join([str(pinned_bin(self.state_dir)), env["PATH"]])
        env.setdefault(TASK_POLL_ENV, "0.1")  # without the worker, Flower's launcher looks for tasks every 1 s
        return env

    def stop(self) -> None:
        self._stop.set()
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self._processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.console is not None:
            self.console.stop()
        self.server.stop(grace=2).wait()
        # a fit in progress finishes first: a thread still inside torch when the interpreter exits aborts it
        self._watcher.join(timeout=30)
        self.engine.close()


def default_train_threads() -> int:
    """Torch threads of the round worker unless told: half the cores, so that serving keeps the rest."""
    return max(1, (os.cpu_count() or 2) // 2)


def open_rotated(path: Path, *, max_bytes: int):
    """Open a log for appending; one over `max_bytes` is moved to `NAME.1` first (one old file is kept), so the
    SuperNode's log, reopened at each start, stays within twice that size."""
    if path.exists() and path.stat().st_size > max_bytes:
        path.replace(path.with_name(path.name + ".1"))
    return open(path, "ab")


def refused_by_superlink(supernode_log: Path) -> bool:
    """Whether the SuperNode's latest attempt ended with the SuperLink refusing its key (Flower code 2004)."""
    if not supernode_log.exists():
        return False
    with open(supernode_log, "rb") as handle:
        handle.seek(max(0, supernode_log.stat().st_size - 8192))
        tail = handle.read().decode(errors="replace")
    return "[code: 2004]" in tail or "Failed to activate SuperNode" in tail


STABLE_AFTER = 120.0  # seconds a process must have run for its next exit to count as a first failure again


def restart_delay(last: float | None, ran_for: float, *, max_backoff: float) -> float:
    """How long to wait before starting a process again that exited after `ran_for` seconds: 1 s after a run
    that was stable (a worker restarted once in a while by an expired task token must not wait a minute), else
    twice the last wait, at most `max_backoff`."""
    if last is None or ran_for >= STABLE_AFTER:
        return min(1.0, max_backoff)
    return min(last * 2, max_backoff)
