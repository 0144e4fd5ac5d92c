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
