"""The ClientApp as a deployed merchant runs it: its own event file, its own state folder, its own ceiling."""

from __future__ import annotations

import json

import pytest

from client.client_app import app as client_app
from client.rounds import STATE_OPTIMIZER
from server.coordinator import run_federation
from shared_model.data.synthetic import SyntheticConfig, generate, write
from simulations.inprocess import InProcessGrid
from tests.conftest import tiny_run


@pytest.mark.slow
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
    grid = InProcessGrid(client_app, 2, node_configs=nodes)
    result = run_federation(grid, run)
    assert set(result.epsilon) == {"shop-a", "shop-b"}
    assert result.epsilon["shop-a"] <= 6.0 * 1.001 and result.epsilon["shop-a"] > 5.0
    assert result.epsilon["shop-b"] <= 2.0 * 1.001  # its own ceiling, not the run's target
    for folder, name in (("a-state", "shop-a"), ("b-state", "shop-b")):
        saved = json.loads((tmp_path / folder / "privacy-ledger.json").read_text())
        assert [r[1] for r in saved["rounds"]] == [1, 2]
        assert saved["ledger"]["target_epsilon"] == (6.0 if name == "shop-a" else 2.0)
    # keep-optimizer-state is off: no optimizer moments are kept between rounds
    assert all(STATE_OPTIMIZER not in context.state for context in grid.contexts.values())


@pytest.mark.slow
def test_a_deployed_merchant_keeps_each_global_model_for_its_service(tmp_path):
    """Each evaluate message's global model lands in state-dir/models (with LATEST), the local residual rows
    beside it keyed by item id; the on-site engine serves it with those rows in place."""
    import torch

    from client.onsite.engine import OnsiteEngine
    from client.onsite.store import SQLiteStore
    from shared_model.data.loaders import load_events

    shops = write(generate(SyntheticConfig(merchants=2, users_per_merchant=50, items_per_merchant=300, seed=4)),
                  tmp_path / "shops")
    nodes = [{"data-path": str(shops / f"merchant-{i}" / "events.csv"), "format": "events",
              "merchant-name": f"shop-{i}", "state-dir": str(tmp_path / f"state-{i}")} for i in range(2)]
    result = run_federation(InProcessGrid(client_app, 2, node_configs=nodes), tiny_run(tmp_path, local_table=True))
    models = tmp_path / "state-0" / "models"
    assert (models / "LATEST").read_text() == "v0002"
    assert json.loads((models / "v0002" / "manifest.json").read_text())["run_id"] == result.run_id
    saved = torch.load(models / "v0002" / "local.pt", weights_only=True)
    assert any(v.abs().sum() > 0 for v in saved["state"].values())  # trained residuals, not zeros
    log = load_events(shops / "merchant-0" / "events.csv", "events")
    store = SQLiteStore(tmp_path / "s.sqlite")
    engine = OnsiteEngine.from_log(store, log)
    assert engine.load_model(models) == f"v0002@{result.run_id}"
    served = dict(engine.current.model.named_parameters())
    name = next(iter(saved["state"]))
    item = saved["item_ids"][5]
    row = int(engine.current.catalogue.index_of([item])[0])
    assert torch.allclose(served[name][row], saved["state"][name][5])
    store.close()


@pytest.mark.slow
def test_a_merchant_keeps_its_optimizer_moments_between_rounds_and_never_sends_them(tmp_path):
    """keep-optimizer-state: each merchant's Adam carries on over rounds (its step count is every step it took
    under DP, as its ledger counts them); the moments stay in the node's context.state, out of every reply.
    (Without the setting nothing is kept: the deployed-merchant test above checks that.)"""
    from shared_model.model import is_shared

    replies = []

    def spy(node, reply):
        replies.append((node, reply))
        return reply

    grid = InProcessGrid(client_app, 2, tamper=spy)
    run_federation(grid, tiny_run(tmp_path, num_rounds=2, keep_optimizer_state=True, fraction_evaluate=0.0))
    for node, context in grid.contexts.items():
        moments = context.state[STATE_OPTIMIZER].to_torch_state_dict()
        trained = [r for n, r in replies if n == node and r.metadata.message_type == "train"]
        assert len(trained) == 2
        steps_over_both_rounds = int(trained[-1].content.metric_records["metrics"]["steps"])  # the ledger's count
        assert {float(v) for k, v in moments.items() if k.endswith(".step")} == {float(steps_over_both_rounds)}
        for reply in trained:
            assert all(is_shared(name) for name in reply.content.array_records["arrays"].keys())
            assert not any(name.endswith(("exp_avg", "exp_avg_sq", "step"))
                           for name in reply.content.array_records["arrays"].keys())


@pytest.mark.slow
def test_what_a_merchant_sends_does_not_depend_on_its_onsite_model(tmp_path, monkeypatch):
    """The sensitivity argument (docs/privacy.md): a merchant's on-site model is trained without DP, so nothing it
    sends may depend on it. Two identical federations, one of whose merchants fits and keeps an on-site model
    after round 1 (as its daemon does): round 2's train replies are bit for bit the same. DP noise is seeded
    here only to make the two runs comparable."""
    import torch

    import shared_model.dp_engine
    from client.onsite.engine import open_engine
    from client.onsite.fitter import OnsiteFitter
    from client.onsite.personalise import OnsiteConfig

    monkeypatch.setattr(shared_model.dp_engine, "secret_generator", lambda seed=None, device="cpu": torch.Generator(device=device).manual_seed(7))
    shops = write(generate(SyntheticConfig(merchants=2, users_per_merchant=60, items_per_merchant=300, seed=4)),
                  tmp_path / "shops")

    def federation(name: str, *, fit_on_site: bool) -> dict:
        nodes = [{"data-path": str(shops / f"merchant-{i}" / "events.csv"), "format": "events",
                  "merchant-name": f"shop-{i}", "state-dir": str(tmp_path / name / f"state-{i}")} for i in range(2)]
        sent, fits, tried = {}, [], {}

        def watch(node, reply):
            if reply.metadata.message_type == "train":
                sent[(node, len([k for k in sent if k[0] == node]) + 1)] = {
                    k: v.numpy().copy() for k, v in reply.content.array_records["arrays"].items()}
            elif fit_on_site and node == 1 and not fits:  # round 1's evaluate has just kept the global model
                state = tmp_path / name / "state-0"
                engine, _ = open_engine(nodes[0]["data-path"], "events", store=state / "store.sqlite",
                                        quarantine=state / "quarantine.csv")
                fitter = OnsiteFitter(engine, state / "onsite", OnsiteConfig(epochs=3, lr=1e-2, batch_size=32,
                                                                             negatives=32, patience=3, alone_epochs=3))
                fits.append(fitter.step(state / "models"))
                tried.update(fitter.fits[-1])
                engine.close()
            return reply

        run = tiny_run(tmp_path / name, num_rounds=2, fraction_evaluate=1.0)
        run_federation(InProcessGrid(client_app, 2, tamper=watch, node_configs=nodes), run)
        if fit_on_site:
            assert fits and fits[0].endswith("+local1")  # the on-site model exists and was served
            # every kind of local part was trained and weighed: fine-tuned, the merchant's own, the two together
            assert {"fine-tuned-valid-ndcg@10", "alone-valid-ndcg@10", "ensemble-valid-ndcg@10"} <= set(tried)
            assert (tmp_path / name / "state-0" / "onsite" / "LATEST").exists()
        return sent

    plain, with_onsite = federation("plain", fit_on_site=False), federation("onsite", fit_on_site=True)
    assert set(plain) == set(with_onsite) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    for key in plain:
        assert plain[key].keys() == with_onsite[key].keys()
        assert all((plain[key][name] == with_onsite[key][name]).all() for name in plain[key]), key


@pytest.mark.parametrize("privacy", ["local", "distributed"])
def test_packed_arrays_are_answered_packed_and_train_the_same(tmp_path, privacy):
    """What a deployment's coordinator sends (server/exchange.py packs every model into one flat array): the
    merchant unpacks, trains and packs its reply; the federation ends where an unpacked one does."""
    import copy

    from shared_model.packing import PACKED, pack, unpack

    seen = []

    class PackingGrid(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            for msg in messages:  # each its own copy, as the transport gives each merchant
                msg.content = copy.deepcopy(msg.content)
                pack(msg.content)
            replies = list(super().send_and_receive(messages, timeout=timeout))
            for reply in replies:
                if reply.has_content() and reply.content.array_records:
                    seen.append([list(r.keys()) for r in reply.content.array_records.values()])
                    unpack(reply.content)
            return replies

    run = tiny_run(tmp_path, num_rounds=2, local_epochs=1, privacy=privacy)
    packed = run_federation(PackingGrid(client_app, 2), run)
    plain = run_federation(InProcessGrid(client_app, 2), run.replace(run_dir=str(tmp_path / "plain")))
    assert seen and all(keys == [[PACKED]] for keys in seen)  # every reply with arrays came back as one array
    assert packed.rounds_completed == plain.rounds_completed == 2
    assert packed.epsilon == pytest.approx(plain.epsilon)
    # every merchant's evaluation came back and counted (NDCG itself can be 0 on a noisy 2-round DP run)
    assert packed.history[-1]["evaluated-merchants"] == 2
    assert all(row.get("aggregated", True) for row in packed.history)  # (a distributed round needs every vector)
