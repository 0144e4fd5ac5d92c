"""The merchant's privacy policy against a coordinator that asks for more: each probe is a message a
coordinator could send to a deployed merchant's ClientApp, and the merchant's own policy decides."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app as client_app
from client.policy import POLICY_FILE, PolicyRefusal, PrivacyPolicy, shared_parameter_count
from client.state import sent_log
from shared_model.data.synthetic import SyntheticConfig, generate, write
from shared_model.evaluation_request import ask_evaluation
from shared_model.privacy import PrivacyLedger
from shared_model.run_config import RunConfig
from shared_model.shared_weights import initial_shared_state
from tests.conftest import tiny_run


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    write(generate(SyntheticConfig(merchants=1, users_per_merchant=60, items_per_merchant=300, seed=4)), root)
    return root / "merchant-0" / "events.csv"


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # set by Flower in a ServerApp


class Merchant:
    """One deployed merchant (its own file and state folder) driven message by message, as a coordinator would."""

    def __init__(self, shop, state_dir, policy: PrivacyPolicy | None = None):
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        if policy is not None:
            policy.save(state_dir)
        self.context = Context(run_id=1, node_id=1, state=RecordDict(), run_config={}, node_config={
            "data-path": str(shop), "format": "events", "merchant-name": "shop", "state-dir": str(state_dir)})

    def send(self, kind: str, run: RunConfig, server_round: int, *, run_id: str = "run-a", arrays=None) -> Message:
        arrays = arrays if arrays is not None else initial_shared_state(run.model_config())
        msg = Message(RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord(
            {**run.to_flat(), "server-round": server_round, "run-id": run_id})}), message_type=kind, dst_node_id=1)
        msg.metadata.__dict__["_message_id"] = f"{run_id}-{kind}-{server_round}"
        return client_app(msg, self.context)

    def ledger(self) -> PrivacyLedger:
        import json

        return PrivacyLedger.from_state_dict(json.loads((self.state_dir / "privacy-ledger.json").read_text())["ledger"])


def _refusal(reply: Message) -> str:
    return str(reply.content.config_records["merchant"]["refused"])


def _epsilon(reply: Message) -> float:
    return float(reply.content.metric_records["metrics"]["epsilon"])


def test_a_run_without_dp_is_refused_and_nothing_is_sent(shop, tmp_path, caplog):
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy(max_epsilon=2.0))
    with caplog.at_level(logging.WARNING, logger="fedprofile.merchant"):
        reply = merchant.send("train", tiny_run(tmp_path, dp=False), 1)
    assert "trains only with DP" in _refusal(reply) and "dp = false" in _refusal(reply)
    assert not reply.content.array_records  # no unnoised weights leave
    assert int(reply.content.metric_records["metrics"]["refused"]) == 1 and _epsilon(reply) == 0.0
    assert "trains only with DP" in caplog.text
    allowing = Merchant(shop, tmp_path / "open", PrivacyPolicy(require_dp=False))
    assert allowing.send("train", tiny_run(tmp_path, dp=False), 1).content.array_records  # the merchant's choice


@pytest.mark.slow  # several DP rounds
def test_the_merchant_ceiling_caps_the_run_target(shop, tmp_path):
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy(max_epsilon=2.0))
    run = tiny_run(tmp_path, target_epsilon=16.0, num_rounds=2)
    assert 0 < _epsilon(merchant.send("train", run, 1)) <= _epsilon(merchant.send("train", run, 2)) <= 2.0 * 1.001
    assert merchant.ledger().target_epsilon == 2.0


@pytest.mark.slow  # several DP rounds
def test_a_batch_size_raised_mid_run_is_projected_at_the_rate_it_uses(shop, tmp_path):
    """Before: the merchant projected the next round at the planned sample rate, trained at the larger one and
    passed its target. Now the last round, sent with 6 times the batch, is checked at the rate it would use."""
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy(max_epsilon=8.0))
    run = tiny_run(tmp_path, num_rounds=4, local_epochs=1, batch_size=8, target_epsilon=8.0)
    for server_round in (1, 2, 3):
        merchant.send("train", run, server_round)
    spent = merchant.ledger().epsilon()
    planned_rate = merchant.ledger().sample_rate
    assert merchant.ledger().epsilon_after(8, sample_rate=planned_rate) <= 8.0 * 1.001  # the old check passed
    reply = merchant.send("train", run.replace(batch_size=48), 4)
    assert "would spend epsilon" in _refusal(reply) and not reply.content.array_records
    assert merchant.ledger().epsilon() == pytest.approx(spent)
    assert _epsilon(merchant.send("train", run, 4)) <= 8.0 * 1.001  # at the planned batch it finishes the plan


def test_a_sample_rate_above_the_policy_is_refused(shop, tmp_path):
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy(max_sample_rate=0.2))
    reply = merchant.send("train", tiny_run(tmp_path, batch_size=32), 1)
    assert "max-sample-rate 0.2" in _refusal(reply) and not reply.content.array_records


@pytest.mark.slow  # several DP rounds
def test_a_lowered_ceiling_applies_to_the_stored_ledger_at_once(shop, tmp_path):
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy(max_epsilon=8.0))
    run = tiny_run(tmp_path, num_rounds=4, local_epochs=1)
    spent = _epsilon(merchant.send("train", run, 1))
    PrivacyPolicy(max_epsilon=spent * 1.2).save(merchant.state_dir)  # the operator lowers it between rounds
    reply = merchant.send("train", run, 2)
    assert "would spend epsilon" in _refusal(reply)
    assert merchant.ledger().target_epsilon == pytest.approx(spent * 1.2)
    assert merchant.ledger().epsilon() == pytest.approx(spent)


@pytest.mark.slow  # several DP rounds
def test_a_customers_budget_spans_runs(shop, tmp_path):
    """The same customers train every run: a second run continues the first one's ledger, so together they
    never pass the merchant's ceiling."""
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy(max_epsilon=4.0))
    run = tiny_run(tmp_path, num_rounds=2, target_epsilon=4.0)
    for server_round in (1, 2):
        merchant.send("train", run, server_round, run_id="run-a")
    spent = merchant.ledger().epsilon()
    assert spent > 3.5
    reply = merchant.send("train", run, 1, run_id="run-b")
    assert "would spend epsilon" in _refusal(reply)
    assert merchant.ledger().epsilon() == pytest.approx(spent)


def test_too_many_steps_are_refused(shop, tmp_path):
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy(max_steps=3))
    reply = merchant.send("train", tiny_run(tmp_path, batch_size=16, local_epochs=1), 1)
    assert "max-steps 3" in _refusal(reply)


def test_a_model_larger_than_the_policy_accepts_is_refused_before_it_is_built(shop, tmp_path):
    run = tiny_run(tmp_path, item_buckets=1 << 20, d_model=512, n_heads=8, profile_dim=64)
    assert shared_parameter_count(run) > 100_000_000
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy(max_parameters=10_000_000))
    for kind in ("train", "evaluate"):
        reply = merchant.send(kind, run, 1, arrays={"w": torch.zeros(1)})
        assert "max-parameters 10,000,000" in _refusal(reply)
        assert "metrics" not in reply.content.metric_records or kind == "train"


def test_non_finite_global_weights_are_refused_for_training_and_serving(shop, tmp_path):
    run = tiny_run(tmp_path)
    poisoned = {k: v.clone() for k, v in initial_shared_state(run.model_config()).items()}
    name = next(iter(poisoned))
    poisoned[name].view(-1)[0] = float("nan")
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy())
    for kind in ("train", "evaluate"):
        reply = merchant.send(kind, run, 1, arrays=poisoned)
        assert "non-finite" in _refusal(reply) and name in _refusal(reply)
    assert not (merchant.state_dir / "models").exists()  # nothing kept for the service to serve


def test_a_model_to_evaluate_with_training_is_checked_as_an_evaluate_messages_would_be(shop, tmp_path):
    """A training message that also asks for the evaluation of an earlier model (evaluate-with-training): the
    merchant evaluates the model it was sent, never its own update, keeps it for its service, and sends the
    figures beside its training reply; a poisoned model to evaluate is refused (no figures, nothing kept) while the
    training goes on from the good weights."""
    run = tiny_run(tmp_path, local_epochs=1)
    good = initial_shared_state(run.model_config())
    poisoned = {k: v.clone() for k, v in good.items()}
    poisoned[next(iter(poisoned))].view(-1)[0] = float("nan")
    for label, published in (("good", good), ("poisoned", poisoned)):
        merchant = Merchant(shop, tmp_path / label, PrivacyPolicy())
        msg = Message(RecordDict({"arrays": ArrayRecord(good), "config": ConfigRecord(
            {**run.to_flat(), "server-round": 2, "run-id": "run-a"})}), message_type="train", dst_node_id=1)
        ask_evaluation([msg], model_round=1, published=ArrayRecord(published))
        msg.metadata.__dict__["_message_id"] = f"{label}-train-2"
        reply = client_app(msg, merchant.context)
        assert "arrays" in reply.content.array_records and not _refusal(reply)  # it trained either way
        kept = merchant.state_dir / "models"
        if label == "good":
            evaluation = reply.content.metric_records["evaluation"]
            assert evaluation["num-examples"] > 0 and 0 <= evaluation["ndcg@10"] <= 1
            assert (kept / "LATEST").read_text() == "v0001"  # the evaluated model's round, served next
            sent = sent_log(merchant.state_dir)[-1]  # the console's account: the customers trained, both figure sets
            assert sent["customers"] == 60 and sent["metrics"] == len(reply.content["metrics"]) + len(evaluation) == 14
        else:
            assert "evaluation" not in reply.content.metric_records and not kept.exists()


def test_the_policy_is_validated_saved_and_read_back(tmp_path):
    policy = PrivacyPolicy(require_dp=True, max_epsilon=3.0, max_delta=1e-6, max_sample_rate=0.1, max_steps=500,
                           max_parameters=1_000_000)
    policy.save(tmp_path)
    assert PrivacyPolicy.load(tmp_path) == policy
    assert (tmp_path / POLICY_FILE).is_file()
    assert PrivacyPolicy.for_node({"state-dir": str(tmp_path), "max-epsilon": 99.0}, RunConfig()) == policy
    assert PrivacyPolicy.for_node({"policy-max-epsilon": "2.5", "policy-require-dp": "false"},
                                  RunConfig()).max_epsilon == 2.5
    with pytest.raises(ValueError, match="max-delta must be in \\(0, 1\\)"):
        PrivacyPolicy(max_delta=0.5 * 4)
    with pytest.raises(ValueError, match="unknown privacy policy settings \\['max_epsilons'\\]"):
        PrivacyPolicy.from_mapping({"max_epsilons": 1.0})
    with pytest.raises(PolicyRefusal, match="dp = false"):
        PrivacyPolicy().check(RunConfig(dp=False), num_users=100)
    assert PrivacyPolicy.simulated(RunConfig(dp=False)).require_dp is False  # one person plays every merchant
    np.testing.assert_allclose(PrivacyPolicy().delta(RunConfig(), num_users=1_000), 1e-5)
    np.testing.assert_allclose(PrivacyPolicy(max_delta=1e-6).delta(RunConfig(target_delta=1e-4), num_users=10), 1e-6)


def test_a_run_config_out_of_bounds_is_refused_with_its_reason(shop, tmp_path):
    """Before: item-buckets 2^34 and d-model 4096 were accepted and a merchant tried to build the model."""
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy())
    # the metadata tables' sizes came to the run config later: bounded the same way
    for key in ("item-buckets", "category-buckets", "brand-buckets", "token-buckets"):
        for kind in ("train", "evaluate"):
            msg = Message(RecordDict({"arrays": ArrayRecord({"w": torch.zeros(1)}), "config": ConfigRecord(
                {**tiny_run(tmp_path).to_flat(), key: 1 << 34, "server-round": 1, "run-id": "r"})}),
                message_type=kind, dst_node_id=1)
            msg.metadata.__dict__["_message_id"] = f"bounds-{key}-{kind}"
            reply = client_app(msg, merchant.context)
            assert f"{key} must be at most 16777216" in _refusal(reply)
            assert not reply.content.array_records


def test_the_plain_recipes_scoring_is_refused_under_dp_before_any_training(shop, tmp_path):
    """A coordinator asking for a loss with no per-customer term to clip, or for one item table on both sides (which
    ghost clipping cannot bound), gets a refusal and no weights: DP-SGD's clipping is not the coordinator's to undo."""
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy())
    for key, value, reason in (("loss-average", "positions", "set loss-average = users"),
                               ("tie-item-tables", True, "set tie-item-tables = false")):
        msg = Message(RecordDict({"arrays": ArrayRecord({"w": torch.zeros(1)}), "config": ConfigRecord(
            {**tiny_run(tmp_path).to_flat(), key: value, "server-round": 1, "run-id": "r"})}),
            message_type="train", dst_node_id=1)
        msg.metadata.__dict__["_message_id"] = f"recipe-{key}"
        reply = client_app(msg, merchant.context)
        assert reason in _refusal(reply) and not reply.content.array_records


def test_distributed_dp_is_the_merchants_choice_and_so_are_its_colluders(shop, tmp_path):
    run = tiny_run(tmp_path, privacy="distributed", sample_rate=0.1)
    declining = Merchant(shop, tmp_path / "declines", PrivacyPolicy(accept_distributed=False))
    reply = declining.send("query.secagg_keys", run, 1)
    assert "accept-distributed = false" in _refusal(reply) and "secagg" not in reply.content.config_records
    wary = Merchant(shop, tmp_path / "wary", PrivacyPolicy(assumed_colluders=2))
    assert "colluders = 2" in _refusal(wary.send("query.secagg_keys", run, 1))
    assert "secagg" in wary.send("query.secagg_keys", run.replace(colluders=2), 1).content.config_records
    # a plain train message in a distributed run is refused: its training goes through the secure sum only
    reply = Merchant(shop, tmp_path / "plain").send("train", run, 1)
    assert "privacy = distributed" in _refusal(reply) and not reply.content.array_records


def test_a_distributed_round_out_of_budget_is_refused_before_keys_go_out(shop, tmp_path):
    run = tiny_run(tmp_path, privacy="distributed", sample_rate=0.1, num_rounds=2)
    merchant = Merchant(shop, tmp_path / "state", PrivacyPolicy(max_epsilon=8.0))
    merchant.state_dir.joinpath(POLICY_FILE).unlink()
    PrivacyPolicy(max_epsilon=0.5).save(merchant.state_dir)  # sigma was solved for 8 over 2 steps
    reply = merchant.send("query.secagg_keys", run, 1)
    assert "would spend epsilon" in _refusal(reply) and "secagg" not in reply.content.config_records
