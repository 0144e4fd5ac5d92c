"""The ClientApp as a deployed merchant runs it: its own event file, its own state folder, its own ceiling."""

from __future__ import annotations

import json

from client.client_app import app as client_app
from server.coordinator import run_federation
from shared_model.synthetic import SyntheticConfig, generate, write
from tests.conftest import tiny_run
from tests.fake_grid import InProcessGrid


def test_deployed_merchants_read_their_files_and_keep_their_ledger_on_disk(tmp_path):
    shops = write(generate(SyntheticConfig(merchants=2, users_per_merchant=50, items_per_merchant=300, seed=4)),
                  tmp_path / "shops")
    nodes = [
        {"data-path": str(shops / "merchant-0" / "events.csv"), "format": "events", "merchant-name": "shop-a",
         "state-dir": str(tmp_path / "a-state")},
        {"data-path": str(shops / "merchant-1" / "events.csv"), "format": "events", "merchant-name": "shop-b",
         "state-dir": str(tmp_path / "b-state"), "max-epsilon": 2.0},  # this merchant allows less than the run
    ]
    run = tiny_run(tmp_path, num_rounds=2, target_epsilon=6.0)
    result = run_federation(InProcessGrid(client_app, 2, node_configs=nodes), run)
    assert set(result.epsilon) == {"shop-a", "shop-b"}
    assert result.epsilon["shop-a"] <= 6.0 * 1.001 and result.epsilon["shop-a"] > 5.0
    assert result.epsilon["shop-b"] <= 2.0 * 1.001  # its own ceiling, not the run's target
    for folder, name in (("a-state", "shop-a"), ("b-state", "shop-b")):
        saved = json.loads((tmp_path / folder / "privacy-ledger.json").read_text())
        assert [r[1] for r in saved["rounds"]] == [1, 2]
        assert saved["ledger"]["target_epsilon"] == (6.0 if name == "shop-a" else 2.0)
