"""The coordinator's Flower SuperLink: its command line, the operator's `flwr` connection, and merchant registration."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from server.fleet_front import FleetFront, start_fleet_front
from server.keys import CA_CERT, SERVER_CERT, SERVER_KEY
from shared_model.processes import config_string, env_with_our_bin, flower_binary

CONNECTION = "fedprofile"  # the name of the SuperLink connection in the operator's flwr config
APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app: pyproject.toml with [tool.flwr.app]


@dataclass(frozen=True)
class SuperLinkSettings:
    """How the SuperLink runs. TLS and merchant authentication are on unless `insecure` is asked for
    explicitly (then both are off: Flower authenticates SuperNodes only over TLS)."""

    state_dir: Path
    certs: Path | None = None
    insecure: bool = False
    host: str = "0.0.0.0"
    port: int = 9091  # the merchants' address: the Fleet API alone (server/fleet_front.py)
    internal_port: int = 0  # the SuperLink itself, every API, on 127.0.0.1 only (0: port + 1)

    def __post_init__(self):
        if self.insecure and self.certs is not None:
            raise ValueError("--insecure and --certs contradict each other; give one")
        if not self.insecure:
            if self.certs is None:
                raise ValueError("TLS needs --certs DIR (make it with `fedprofile server keys --host NAME`); "
                                 "--insecure runs without TLS and without merchant authentication")
            missing = [n for n in (CA_CERT, SERVER_CERT, SERVER_KEY) if not (Path(self.certs) / n).exists()]
            if missing:
                raise ValueError(f"{self.certs}: missing {', '.join(missing)}; run `fedprofile server keys` first")

    @property
    def internal(self) -> int:
        return self.internal_port or self.port + 1

    @property
    def database(self) -> Path:
        return Path(self.state_dir) / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        return Path(self.state_dir) / "flwr"

    def command(self) -> list[str]:
        # The SuperLink listens on loopback only: its control API shares the port with the Fleet API, and only
        # the operator on this host may drive it; merchants reach the Fleet API through the front.
        cmd = [flower_binary("flower-superlink"), "--database", str(self.database), "--host", "127.0.0.1",
               "--port", str(self.internal), "--log-file", str(Path(self.state_dir) / "superlink.log"),
               # the ServerApp runs in this environment: no downloading of the app's dependencies at run time
               "--disable-runtime-dependency-installation"]
        if self.insecure:
            return cmd + ["--insecure"]
        certs = Path(self.certs)
        return cmd + ["--ssl-ca-certfile", str(certs / CA_CERT), "--ssl-certfile", str(certs / SERVER_CERT),
                      "--ssl-keyfile", str(certs / SERVER_KEY), "--enable-supernode-auth"]

    def write_operator_config(self, address: str | None = None) -> Path:
        """A `flwr` config (FLWR_HOME) with one connection, `fedprofile`, to this SuperLink, for `flwr run`
        and `flwr supernode register`."""
        address = address or f"127.0.0.1:{self.internal}"
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{address}"']
        if self.insecure:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{(Path(self.certs) / CA_CERT).resolve()}"')
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")
        return self.flwr_home


def wait_for_port(host: str, port: int, *, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited with {process.returncode} before listening on {host}:{port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def flwr(args: list[str], flwr_home: Path, *, timeout: float | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the `flwr` CLI against the operator config in `flwr_home`."""
    return subprocess.run([flower_binary("flwr"), *args], env=env_with_our_bin({"FLWR_HOME": str(flwr_home)}),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def register_merchant(flwr_home: Path, public_key: Path, name: str) -> str:
    """Register a merchant's SuperNode public key with the SuperLink (only registered SuperNodes may join). A key
    the SuperLink's database holds already counts as registered: a federation started again on the same state
    folder registers its merchants again."""
    done = flwr(["supernode", "register", str(public_key), CONNECTION, "--name", name], flwr_home, timeout=60)
    if done.returncode != 0:
        if "Public key already in use" in done.stdout + done.stderr:
            return "already registered"
        raise RuntimeError(f"registering {name} ({public_key}) failed: {done.stdout[-800:]} {done.stderr[-800:]}")
    return done.stdout.strip()


def start_superlink(settings: SuperLinkSettings, *, stdout=None) -> subprocess.Popen:
    """Start the SuperLink in its own process group (stopping the group stops the ServerApp it runs too) and
    wait until it listens; a SuperLink that exits or never listens is killed and reported."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(settings.command(), stdout=stdout, stderr=subprocess.STDOUT if stdout else None,
                               env=env_with_our_bin(), start_new_session=True)
    try:
        wait_for_port("127.0.0.1", settings.internal, process=process)
    except (RuntimeError, TimeoutError) as exc:
        process.kill()
        raise RuntimeError(f"SuperLink did not start: {exc}; see {Path(settings.state_dir) / 'superlink.log'}") from exc
    return process


def start_front(settings: SuperLinkSettings) -> FleetFront:
    """The merchants' address (settings.host:settings.port) in this process: the Fleet API alone, forwarded to
    the SuperLink on 127.0.0.1, with the SuperLink's certificate."""
    return start_fleet_front(host=settings.host, port=settings.port, upstream=f"127.0.0.1:{settings.internal}",
                             certs=None if settings.insecure else Path(settings.certs))


def run_args(run_config: dict, *, stream: bool = True) -> list[str]:
    """`flwr` arguments that run the fedprofile app on the operator's `fedprofile` connection."""
    return ["run", str(APP_DIR), CONNECTION, "--run-config", config_string(run_config)] + (["--stream"] if stream else [])
