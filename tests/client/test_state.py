"""What a merchant keeps between rounds survives a restart."""

from __future__ import annotations

import torch

from client.state import MerchantState


def test_ledger_local_weights_and_last_update_survive_a_restart(tmp_path):
    state = MerchantState.load(tmp_path / "m0")
    assert state.ledger is None and not state.already_paid("run", 1)
    update = {"shared_state": {"w": torch.ones(2)}, "metrics": {"epsilon": 1.0}}
    state.record("run", 1, ledger={"noise_multiplier": 1.1}, local={"input_items.local.weight": torch.zeros(3, 2)},
                 reply=update)
    again = MerchantState.load(tmp_path / "m0")
    assert again.ledger == {"noise_multiplier": 1.1} and again.already_paid("run", 1)
    torch.testing.assert_close(again.local["input_items.local.weight"], torch.zeros(3, 2))
    assert again.stored_update("run", 1)["metrics"] == {"epsilon": 1.0}
    assert again.stored_update("run", 2) is None and again.stored_update("other-run", 1) is None


def test_without_a_folder_state_lives_in_memory_only(tmp_path):
    state = MerchantState.load(None, {"ledger": {"x": 1}, "rounds": [["r", 1]], "local": {}})
    assert state.ledger == {"x": 1} and state.already_paid("r", 1)
    state.record("r", 2, ledger={"x": 2}, local={}, reply=None)
    assert state.stored_update("r", 2) is None and not list(tmp_path.iterdir())


def test_a_planted_last_update_is_refused_unread(tmp_path):
    import pickle

    import pytest

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    folder = tmp_path / "m0"
    folder.mkdir()
    torch.save({"run_id": "run", "round": 1, "shared_state": Payload()}, folder / MerchantState.LAST)
    with pytest.raises(pickle.UnpicklingError):
        MerchantState.load(folder).stored_update("run", 1)
    assert not marker.exists()
