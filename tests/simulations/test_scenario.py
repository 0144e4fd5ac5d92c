"""Scenario files parse into valid run configs and cover what the federation issue asks to compare."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "simulations" / "scenarios"


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_scenario_file_is_valid(path):
    name, variants = load_scenario(path)
    assert name and variants and len({v.name for v in variants}) == len(variants)


def test_the_scenarios_cover_dp_epsilon_merchants_and_skew():
    variants = {p.stem: load_scenario(p)[1] for p in SCENARIOS.glob("*.toml")}
    assert {v.run.dp for v in variants["dp_on_off"]} == {True, False}
    assert [v.run.target_epsilon for v in variants["epsilon_sweep"]] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert [v.merchants for v in variants["merchants"]] == [2, 5, 10, 20, 50]
    assert {v.run.partitioning for v in variants["iid_vs_noniid"]} == {"iid", "dirichlet"}
    assert any(v.centralized for v in variants["dp_on_off"])


def test_a_bad_variant_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[variant]]\nname = "oops"\nstrategy = "fedsgd"\n')
    with pytest.raises(ValueError, match="variant 'oops'.*fedsgd"):
        load_scenario(bad)


@pytest.mark.ray
def test_a_scenario_runs_every_variant_and_summarises(tmp_path):
    import json
    import subprocess
    import sys

    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        'name = "tiny"\nmerchants = 2\n[base]\nnum-rounds = 1\nlocal-epochs = 1\nsynthetic-users = 60\nmax-len = 20\n'
        'd-model = 16\nprofile-dim = 16\nitem-buckets = 1024\nn-layers = 1\nbatch-size = 32\nnegatives = 32\n'
        '[[variant]]\nname = "no-dp"\ndp = false\n[[variant]]\nname = "dp-eps4"\ntarget-epsilon = 4.0\n')
    done = subprocess.run([sys.executable, "-m", "fedprofile", "scenario", str(scenario), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rows = {row["variant"]: row for row in summary["variants"]}
    assert set(rows) == {"no-dp", "dp-eps4"}
    assert rows["no-dp"]["max_epsilon"] == 0.0 and 0 < rows["dp-eps4"]["max_epsilon"] <= 4.0 * 1.001
    assert (tmp_path / "out" / "dp-eps4" / "report.md").exists() and (tmp_path / "out" / "summary.md").exists()
