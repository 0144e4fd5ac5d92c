"""The round loop with real ClientApps in process: what leaves a merchant, screening, quorum, privacy, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array

from client.client_app import app as client_app
from server.coordinator import run_federation
from server.store import RunStore
from shared_model.model import LOCAL_PARAMETER_PREFIXES, is_shared
from shared_model.privacy import PrivacyLedger
from simulations.inprocess import InProcessGrid
from tests.conftest import tiny_run


@pytest.mark.slow
def test_only_shared_parameters_leave_a_merchant(tmp_path):
    run = tiny_run(tmp_path, num_rounds=1, local_table=True, fraction_evaluate=0.0)
    seen = []

    def spy(node, reply):
        seen.append(reply)
        return reply

    result = run_federation(InProcessGrid(client_app, 2, tamper=spy), run)
    assert result.rounds_completed == 1
    for reply in seen:
        names = set(next(iter(reply.content.array_records.values())).keys())
        assert names and all(is_shared(n) for n in names)
        assert not any(n.startswith(LOCAL_PARAMETER_PREFIXES) for n in names)
        assert set(reply.content.metric_records["metrics"]) >= {"num-examples", "train-loss", "epsilon", "delta"}
    # the local residual tables exist, and stayed on the merchants' disks
    local = torch.load(next((tmp_path / "run" / "merchants").glob("*/merchant-0/local-weights.pt")), weights_only=True)
    assert local and all(n.startswith(LOCAL_PARAMETER_PREFIXES) for n in local)


def _poison(node_to_break, value=float("nan")):
    def tamper(node, reply):
        if node == node_to_break and reply.metadata.message_type == "train":
            arrays = next(iter(reply.content.array_records.values()))
            name = next(iter(arrays.keys()))
            broken = arrays[name].numpy().copy()
            broken.flat[0] = value
            arrays[name] = Array(broken)
        return reply

    return tamper


def test_a_nan_update_is_rejected_and_never_averaged(tmp_path):
    run = tiny_run(tmp_path, num_rounds=1, min_replies=1, dp=False)
    result = run_federation(InProcessGrid(client_app, 2, tamper=_poison(2)), run)
    row = result.history[0]
    assert row["aggregated"] and row["merchants-trained"] == ["merchant-0"]
    assert "NaN or infinite" in row["rejected"]["merchant-1"]
    checkpoint = RunStore(run.run_path).latest()
    assert all(np.isfinite(v).all() for v in checkpoint.arrays.values())


def test_evaluate_every_skips_the_evaluate_stage_between_and_always_evaluates_the_last_round(tmp_path):
    run = tiny_run(tmp_path, num_rounds=3, dp=False, local_epochs=1, evaluate_every=2, evaluate_with_training=False)
    sent = []

    def spy(node, reply):
        sent.append(reply.metadata.message_type)
        return reply

    result = run_federation(InProcessGrid(client_app, 2, tamper=spy), run)
    assert [("ndcg@10" in row, "evaluate-phase-seconds" in row) for row in result.history] == \
        [(False, False), (True, True), (True, True)]
    assert sent.count("evaluate") == 2 * 2 and sent.count("train") == 3 * 2  # rounds 2 and 3, two merchants each
    assert result.final["ndcg@10"] == result.history[-1]["ndcg@10"]
    with pytest.raises(ValueError, match="evaluate-every must be at least 1"):
        tiny_run(tmp_path, evaluate_every=0)


@pytest.mark.parametrize("average", [0.0, 0.5])
def test_an_evaluation_riding_on_the_next_training_measures_what_its_own_stage_would(tmp_path, average):
    """evaluate-with-training: rounds 1 and 2's models are evaluated by rounds 2 and 3's training messages (one
    message stage a round fewer), the last round's by a stage of its own; every figure equals the separate stage's
    on the same run, so the merchants measured the model published, not their own update. With a weight average
    the published weights travel beside the weights to train; without one they are the same and go once."""
    sent: dict[bool, list] = {True: [], False: []}
    history = {}
    for folded in (True, False):
        run = tiny_run(tmp_path / str(folded), num_rounds=3, dp=False, local_epochs=1, published_average=average,
                       evaluate_with_training=folded)

        def spy(node, reply, folded=folded):
            sent[folded].append((reply.metadata.message_type, set(reply.content.metric_records)))
            return reply

        result = run_federation(InProcessGrid(client_app, 2, tamper=spy), run)
        history[folded] = result.history
    kinds = [kind for kind, _ in sent[True]]
    assert kinds.count("train") == 3 * 2 and kinds.count("evaluate") == 2  # only the last round has its stage
    assert [kind for kind, _ in sent[False]].count("evaluate") == 3 * 2
    folded, staged = history[True], history[False]
    assert [row.get("evaluated-in") for row in folded] == [2, 3, None]
    assert ["evaluate-phase-seconds" in row for row in folded] == [False, False, True]
    assert [row["model-evaluated"]["round"] for row in folded[1:]] == [1, 2]
    for ours, theirs in zip(folded, staged, strict=True):
        assert ours["evaluated-merchants"] == 2
        for key in ("hr@10", "ndcg@10", "mrr", "valid-ndcg@10"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-9), (ours["round"], key)
    # a train reply carries the figures of the model it was asked about, beside its own training metrics
    assert [records for kind, records in sent[True] if kind == "train"] == \
        [{"metrics"}] * 2 + [{"metrics", "evaluation"}] * 4
    manifest = json.loads((RunStore(tmp_path / "True" / "run").latest_model() / "manifest.json").read_text())
    assert manifest["metrics_round"] == 3 and manifest["metrics"]["ndcg@10"] == folded[-1]["ndcg@10"]


def test_a_resumed_run_evaluates_the_model_its_last_round_left_unevaluated(tmp_path):
    """The coordinator stopped after round 1, whose evaluation was to ride on round 2's training: the resumed run's
    round 2 carries it, so no round is left without its figures."""
    run = tiny_run(tmp_path, num_rounds=2, dp=False, local_epochs=1)
    run_federation(InProcessGrid(client_app, 2), run.replace(num_rounds=1))
    assert "ndcg@10" in RunStore(run.run_path).latest().state["history"][0]  # the last round: a stage of its own
    first = tiny_run(tmp_path / "b", num_rounds=2, dp=False, local_epochs=1)
    trained = []

    def stop_after_round_1(node, reply):
        if reply.metadata.message_type == "train":
            trained.append(node)
            if len(trained) == 3:  # round 1's two replies came back and were checkpointed; round 2's first did not
                raise _Crash("coordinator killed in round 2")
        return reply

    with pytest.raises(_Crash):
        run_federation(InProcessGrid(client_app, 2, tamper=stop_after_round_1), first)
    assert "ndcg@10" not in RunStore(first.run_path).latest().state["history"][0]
    result = run_federation(InProcessGrid(client_app, 2), first.replace(resume=True))
    assert result.history[0]["evaluated-in"] == 2 and result.history[0]["evaluated-merchants"] == 2
    assert "ndcg@10" in result.history[1]


def test_a_round_below_quorum_is_not_aggregated(tmp_path):
    run = tiny_run(tmp_path, num_rounds=1, min_replies=2, dp=False)
    drop_one = lambda node, reply: None if node == 2 and reply.metadata.message_type == "train" else reply  # noqa: E731
    result = run_federation(InProcessGrid(client_app, 2, tamper=drop_one), run)
    assert result.history[0]["aggregated"] is False
    from shared_model.shared_weights import initial_shared_state

    initial = initial_shared_state(run.model_config(), seed=run.seed)
    published = RunStore(run.run_path).latest().arrays
    assert all(np.array_equal(published[k], v.numpy()) for k, v in initial.items())


@pytest.mark.slow
def test_epsilon_accumulates_over_rounds_and_never_passes_the_target(tmp_path):
    run = tiny_run(tmp_path, num_rounds=2, target_epsilon=4.0, fraction_evaluate=0.0)
    result = run_federation(InProcessGrid(client_app, 2), run)
    first, second = (row["epsilon"] for row in result.history)
    for merchant in ("merchant-0", "merchant-1"):
        assert 0 < first[merchant] < second[merchant] <= 4.0 * (1 + 1e-3)
        assert second[merchant] == pytest.approx(4.0, rel=0.02)  # the noise was planned to land on the target
    # a third round (the run extended past its plan) would pass the target: every merchant refuses it
    extended = run.replace(num_rounds=3, resume=True)
    result = run_federation(InProcessGrid(client_app, 2), extended)
    third = result.history[-1]
    assert third["round"] == 3 and third["aggregated"] is False
    assert set(third["refused"]) == {"merchant-0", "merchant-1"}
    assert "would spend epsilon" in third["refused"]["merchant-0"]
    assert all(eps <= 4.0 * (1 + 1e-3) for eps in result.epsilon.values())
    assert result.epsilon == second


class _Crash(RuntimeError):
    pass


@pytest.mark.slow
def test_a_restarted_server_resumes_and_no_merchant_pays_twice_for_a_round(tmp_path):
    run = tiny_run(tmp_path, num_rounds=2)

    trained = []

    def crash_after_training_round_2(node, reply):
        if reply.metadata.message_type == "train":
            trained.append(node)
        elif len(trained) == 4:  # both merchants trained round 2; the coordinator dies before its checkpoint
            raise _Crash("coordinator killed between training and checkpoint")
        return reply

    with pytest.raises(_Crash):
        run_federation(InProcessGrid(client_app, 2, tamper=crash_after_training_round_2), run)
    store = RunStore(run.run_path)
    assert store.latest().round == 1
    run_id = store.latest().state["run_id"]
    ledgers = {p.parent.name: PrivacyLedger.from_state_dict(json.loads(p.read_text())["ledger"])
               for p in (run.run_path / "merchants" / run_id).glob("*/privacy-ledger.json")}
    steps_after_two_rounds = {name: ledger.steps_taken() for name, ledger in ledgers.items()}

    # restart: fresh processes (new grid, empty node state); round 2 is sent again
    result = run_federation(InProcessGrid(client_app, 2), run.replace(resume=True))
    assert result.resumed_from == 1 and result.rounds_completed == 2 and result.run_id == run_id
    assert [row["round"] for row in result.history] == [1, 2]
    for name, ledger in ledgers.items():
        again = PrivacyLedger.from_state_dict(
            json.loads((run.run_path / "merchants" / run_id / name / "privacy-ledger.json").read_text())["ledger"])
        assert again.steps_taken() == steps_after_two_rounds[name]  # the replayed round spent nothing
        assert result.epsilon[name] == pytest.approx(again.epsilon())
    assert json.loads((store.latest_model() / "manifest.json").read_text())["round"] == 2


@pytest.mark.parametrize("strategy", ["fedavgm", "fedadam", "fedprox", "fedmedian", "fedtrimmedavg", "krum"])
def test_every_strategy_aggregates(tmp_path, strategy):
    run = tiny_run(tmp_path, num_rounds=1, dp=False, strategy=strategy, fraction_evaluate=0.0, min_replies=2,
                   server_momentum=0.5)
    result = run_federation(InProcessGrid(client_app, 3), run)
    assert result.history[0]["aggregated"]
    checkpoint = RunStore(run.run_path).latest()
    assert all(np.isfinite(v).all() for v in checkpoint.arrays.values())
    if strategy == "fedadam":  # the server optimiser's moments are checkpointed for a resume
        assert any(k.startswith("m_t/") for k in checkpoint.strategy_state)
    if strategy == "fedavgm":  # so is the momentum over rounds, one array per shared weight
        assert len([k for k in checkpoint.strategy_state if k.startswith("momentum_vector/")]) == len(checkpoint.arrays)


def test_server_momentum_carries_over_a_resume(tmp_path):
    """A resumed FedAvgM run takes the same second step as an uninterrupted one: the momentum was checkpointed."""
    straight = tiny_run(tmp_path / "straight", num_rounds=2, dp=False, strategy="fedavgm", server_momentum=0.9,
                        fraction_evaluate=0.0)
    run_federation(InProcessGrid(client_app, 2), straight)
    halves = tiny_run(tmp_path / "halves", num_rounds=1, dp=False, strategy="fedavgm", server_momentum=0.9,
                      fraction_evaluate=0.0)
    run_federation(InProcessGrid(client_app, 2), halves)
    run_federation(InProcessGrid(client_app, 2), halves.replace(num_rounds=2, resume=True))
    resumed, uninterrupted = RunStore(halves.run_path).latest(), RunStore(straight.run_path).latest()
    assert resumed.round == uninterrupted.round == 2
    for name, value in uninterrupted.arrays.items():
        np.testing.assert_allclose(resumed.arrays[name], value, rtol=1e-5, atol=1e-6)
    # without the momentum the second step differs: the check above can fail
    forgetful = tiny_run(tmp_path / "forgetful", num_rounds=2, dp=False, strategy="fedavg", fraction_evaluate=0.0)
    run_federation(InProcessGrid(client_app, 2), forgetful)
    assert any(not np.allclose(RunStore(forgetful.run_path).latest().arrays[n], v, rtol=1e-5, atol=1e-6)
               for n, v in uninterrupted.arrays.items())


@pytest.mark.parametrize("strategy, expected_mu", [("fedavg", 0.0), ("fedprox", 0.5)])
def test_only_fedprox_adds_the_proximal_term(tmp_path, monkeypatch, strategy, expected_mu):
    import client.rounds as module

    seen = []
    real = module.local_round

    def spy(*args, **kwargs):
        seen.append(kwargs["proximal_mu"])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "local_round", spy)
    run = tiny_run(tmp_path, num_rounds=1, dp=False, strategy=strategy, proximal_mu=0.5, fraction_evaluate=0.0)
    run_federation(InProcessGrid(client_app, 2), run)
    assert seen == [expected_mu, expected_mu]


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm", "fedprox"])
def test_sparse_rows_averages_a_table_row_over_the_merchants_that_changed_it(tmp_path, strategy):
    name = "input_items.hash_a.weight"
    returned = {}

    def node_2_changes_no_row_of_the_table(node, reply):
        if reply.metadata.message_type == "train":
            arrays = next(iter(reply.content.array_records.values()))
            if node == 2:
                sent = next(iter(grid.last_sent.content.array_records.values()))[name].numpy()
                arrays[name] = Array(sent.copy())
            returned[node] = arrays[name].numpy().copy()
        return reply

    def first_round_table(sparse_rows):
        run = tiny_run(tmp_path / str(sparse_rows), num_rounds=1, dp=False, strategy=strategy, fraction_evaluate=0.0,
                       sparse_rows=sparse_rows, server_momentum=0.5, proximal_mu=0.01)
        run_federation(grid, run)
        return RunStore(run.run_path).latest().arrays[name]

    grid = InProcessGrid(client_app, 2, tamper=node_2_changes_no_row_of_the_table)
    rowwise = first_round_table(True)
    np.testing.assert_allclose(rowwise, returned[1], rtol=1e-6, atol=1e-7)  # merchant 1's rows, undiluted
    grid = InProcessGrid(client_app, 2, tamper=node_2_changes_no_row_of_the_table)
    plain = first_round_table(False)
    changed = (returned[1] != returned[2]).any(axis=1)
    assert changed.any()
    # plain averaging moves those rows only part of the way (merchant 1's share of the examples)
    assert not np.allclose(plain[changed], returned[1][changed], rtol=1e-6, atol=1e-7)


def test_a_reply_whose_arrays_do_not_unpack_is_left_out():
    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    from server.exchange import _unpacked
    from shared_model.packing import PACKED, pack

    good = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3, np.float32))})})
    pack(good)
    assert _unpacked(Message(content=good, message_type="train", dst_node_id=1))
    assert list(good.array_records["arrays"].keys()) == ["w"]
    bad = RecordDict({"arrays": ArrayRecord({PACKED: Array(np.zeros(8, np.uint8))})})
    assert not _unpacked(Message(content=bad, message_type="train", dst_node_id=1))
