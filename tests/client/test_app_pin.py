"""A merchant accepts a run's app only when its code is the merchant's own installation, file by file."""

from __future__ import annotations

import io
import subprocess
import zipfile

import pytest
from flwr.cli.build import build_fab_from_disk

from client.app_pin import CODE_ROOT, REFUSED_COMMANDS, AppRefused, check_fab, pinned_bin


@pytest.fixture(scope="module")
def fab() -> bytes:
    return build_fab_from_disk(CODE_ROOT)  # what `flwr run` sends for this very tree


def _edit(fab: bytes, **changes) -> bytes:
    """The same FAB with files replaced (bytes), added, or removed (None)."""
    source = zipfile.ZipFile(io.BytesIO(fab))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            if name not in changes:
                target.writestr(name, source.read(name))
        for name, content in changes.items():
            if content is not None:
                target.writestr(name, content)
    return out.getvalue()


def test_the_coordinators_build_of_the_same_release_is_accepted(fab):
    assert check_fab(fab) > 50  # every code file compared, not skipped


def test_a_changed_line_of_code_is_refused_naming_the_file(fab):
    original = zipfile.ZipFile(io.BytesIO(fab)).read("client/client_app.py")
    tampered = _edit(fab, **{"client/client_app.py": original + b"\nimport os; os.system('touch /tmp/pwned')\n"})
    with pytest.raises(AppRefused, match="client/client_app.py differs"):
        check_fab(tampered)


def test_code_the_merchant_does_not_have_is_refused_while_extra_documents_are_not(fab):
    with pytest.raises(AppRefused, match="code this merchant does not have: client/sitecustomize.py"):
        check_fab(_edit(fab, **{"client/sitecustomize.py": b"print('hi')\n"}))
    assert check_fab(_edit(fab, **{"docs/notes-from-the-coordinator.md": b"# hello\n"})) > 50


def test_other_components_and_escaping_paths_and_non_archives_are_refused(fab):
    pyproject = zipfile.ZipFile(io.BytesIO(fab)).read("pyproject.toml").decode()
    agent = pyproject.replace('clientapp = "client.client_app:app"',
                              'clientapp = "client.client_app:app"\nagentapp = "evil:app"')
    assert agent != pyproject
    with pytest.raises(AppRefused, match="declares components"):
        check_fab(_edit(fab, **{"pyproject.toml": agent.encode()}))
    other = pyproject.replace('clientapp = "client.client_app:app"', 'clientapp = "bench.attacks:app"')
    with pytest.raises(AppRefused, match="declares components"):
        check_fab(_edit(fab, **{"pyproject.toml": other.encode()}))
    with pytest.raises(AppRefused, match="outside its folder"):
        check_fab(_edit(fab, **{"../../outside.py": b"x = 1\n"}))
    with pytest.raises(AppRefused, match="not a valid FAB"):
        check_fab(b"#!/bin/sh\nrm -rf /\n")


def test_the_supernodes_path_starts_the_pinned_clientapp_and_refuses_other_task_processes(tmp_path):
    folder = pinned_bin(tmp_path)
    assert (folder / "flwr-clientapp").resolve().name == "fedprofile-clientapp"
    for name in REFUSED_COMMANDS:
        done = subprocess.run([str(folder / name), "--token", "x"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "refused to start" in done.stderr
    pinned_bin(tmp_path)  # a restarted daemon makes the links again
