"""The merchant runs only the app code it installed itself: each received FAB is checked file by file first."""

from __future__ import annotations

import io
import os
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

CODE_ROOT = Path(__file__).resolve().parents[1]  # the installed fedprofile: client/, shared_model/, pyproject.toml
CLIENTAPP_COMMAND = "flwr-clientapp"
# Flower starts a run's other task types by these names: a merchant runs none of them (an agent app, a
# connector or a model task would be code the merchant never pinned, next to its raw data).
REFUSED_COMMANDS = ("flwr-agentapp", "flwr-connector", "flwr-model", "flwr-serverapp", "flwr-simulation")
FLOWER_FILES = {"pyproject.toml", ".info/CONTENT"}  # written by `flwr build`: checked below, not compared


class AppRefused(Exception):
    """A run's app is not the code this merchant installed; the text says which file differs and how to fix."""


def check_fab(content: bytes, *, root: Path = CODE_ROOT) -> int:
    """Accept a FAB only when every Python file in it is byte-identical to this installation's file at the same
    path and its pyproject names the same Flower components; any other file in it must match ours where we
    have one (absent documentation or data files are not code and are allowed). Returns the number of files
    compared; raises AppRefused otherwise."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        names = archive.namelist()
    except zipfile.BadZipFile as exc:
        raise AppRefused(f"the run's app is not a valid FAB archive ({exc})") from None
    if "pyproject.toml" not in names:
        raise AppRefused("the run's app has no pyproject.toml")
    theirs = _components(archive.read("pyproject.toml"), "the run's pyproject.toml")
    ours = _components((root / "pyproject.toml").read_bytes(), str(root / "pyproject.toml"))
    if theirs != ours:
        raise AppRefused(f"the run's app declares components {theirs}, this merchant runs {ours}")
    compared = 0
    for name in names:
        if name in FLOWER_FILES or name.endswith("/"):
            continue
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise AppRefused(f"the run's app holds a file outside its folder: {name!r}")
        local = root.joinpath(*path.parts)
        if not local.is_file():
            if name.endswith(".py"):
                raise AppRefused(f"the run's app holds code this merchant does not have: {name}; "
                                 "install the same fedprofile release as the coordinator")
            continue
        if archive.read(name) != local.read_bytes():
            raise AppRefused(f"the run's {name} differs from this merchant's {local}; "
                             "install the same fedprofile release as the coordinator")
        compared += 1
    return compared


def _components(pyproject: bytes, where: str) -> dict:
    try:
        return dict(tomllib.loads(pyproject.decode("utf-8"))["tool"]["flwr"]["app"]["components"])
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise AppRefused(f"{where} has no readable [tool.flwr.app.components] ({exc})") from None


def clientapp_main() -> None:
    """`flwr-clientapp` for a merchant: Flower's own process, whose FAB installation first passes check_fab
    (a refused app ends as the task's error reply, and nothing of it is installed or imported)."""
    import flwr.supernode.runtime.run_clientapp as runtime
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    flower_install = runtime.install_from_fab

    def install_pinned(fab_file, *args, **kwargs):
        if not isinstance(fab_file, bytes):
            raise AppRefused("the run's app did not arrive as bytes")
        try:
            check_fab(fab_file)
        except AppRefused as exc:
            print(f"fedprofile: refused the run's app: {exc}", file=sys.stderr, flush=True)
            raise
        return flower_install(fab_file, *args, **kwargs)

    runtime.install_from_fab = install_pinned  # the one step Flower has no hook for; the rest is Flower's
    # dependencies a run asks for are never installed at a merchant
    sys.argv = [arg for arg in sys.argv if arg != "--allow-runtime-dependency-installation"]
    flwr_clientapp()


def refuse_main() -> None:
    """Any other Flower task process a run could ask this merchant's SuperNode to start."""
    print(f"fedprofile: a merchant runs only its pinned ClientApp; refused to start {Path(sys.argv[0]).name}",
          file=sys.stderr, flush=True)
    sys.exit(2)


def pinned_bin(state_dir: Path) -> Path:
    """A folder to put first on the SuperNode's PATH: Flower starts `flwr-clientapp` (and the other task
    processes) by name, and finds the pinned ones here."""
    folder = Path(state_dir) / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    scripts = Path(sys.executable).parent
    targets = {CLIENTAPP_COMMAND: scripts / "fedprofile-clientapp",
               **{name: scripts / "fedprofile-refuse-app" for name in REFUSED_COMMANDS}}
    for name, target in targets.items():
        if not target.exists():
            raise FileNotFoundError(f"{target} is missing: run `make install` (it installs fedprofile's commands)")
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target, link)
    return folder
