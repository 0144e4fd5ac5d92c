"""Distributed DP: one central DP-SGD step a round through the secure sum, with the merchants' apps in process."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import create_accountant

from client.client_app import app as client_app
from server.coordinator import run_federation
from server.distributed import DistributedTraining
from server.screening import MerchantRegistry
from shared_model.shared_weights import initial_shared_state
from simulations.inprocess import InProcessGrid
from tests.conftest import tiny_run


def _distributed(tmp_path, **changes):
    return tiny_run(tmp_path, **{"privacy": "distributed", "sample_rate": 0.3, "num_rounds": 2,
                                 "fraction_evaluate": 0.0, **changes})


def test_what_leaves_a_merchant_is_masked_and_its_epsilon_is_an_independent_accountants(tmp_path):
    run = _distributed(tmp_path)
    seen = []

    def spy(node, reply):
        if reply.metadata.message_type == "train.distributed":
            seen.append(reply)
        return reply

    result = run_federation(InProcessGrid(client_app, 3, tamper=spy), run)
    assert [row["aggregated"] for row in result.history] == [True, True]
    assert len(seen) == 6
    for reply in seen:  # a masked vector and data-independent figures; no loss, no count of sampled customers
        last = reply.metadata.group_id == str(run.num_rounds)
        assert set(reply.content.keys()) == {"arrays", "metrics"} | (set() if last else {"next"})
        if not last:  # the next round's public keys and the merchant's count of customers, as stage 1 sends them
            assert set(reply.content["next"].keys()) == {"pk-cipher", "pk-mask", "num-examples", "accounting-seconds"}
        assert list(reply.content["arrays"].keys()) == ["masked"]
        assert reply.content["arrays"]["masked"].numpy().dtype == np.uint64
        assert set(reply.content["metrics"].keys()) == {"num-examples", "epsilon", "delta", "steps", "train-seconds",
                                                        "mask-seconds"}
    accountant = create_accountant("prv")
    for _ in range(run.num_rounds):
        accountant.step(noise_multiplier=run.distributed_noise(), sample_rate=run.sample_rate)
    expected = accountant.get_epsilon(1e-5)  # 60 customers each: delta min(1e-5, 1/600)
    assert set(result.epsilon) == {"merchant-0", "merchant-1", "merchant-2"}
    for name, epsilon in result.epsilon.items():
        assert epsilon == pytest.approx(expected, rel=1e-9) and epsilon <= run.target_epsilon * 1.001


@pytest.mark.parametrize("keys_lost", [False, True])
def test_a_rounds_evaluation_rides_on_the_next_rounds_masked_step_or_has_its_own_stage(tmp_path, keys_lost):
    """evaluate-with-training: round 1's model is evaluated by round 2's training stage (no stage of its own);
    when round 2 is discarded at its keys (no training message goes out), by a stage of its own."""
    run = _distributed(tmp_path, fraction_evaluate=1.0)
    seen = []

    def spy(node, reply):
        kind, group = reply.metadata.message_type, reply.metadata.group_id
        seen.append((kind, group, set(reply.content.metric_records) if reply.has_content() else set()))
        if keys_lost and kind == "train.distributed" and group == "1":
            del reply.content["next"]  # round 2's keys, sent beside round 1's masked step, lost on the way
        return None if keys_lost and kind == "query.secagg_keys" and group == "2" else reply  # and when asked again

    result = run_federation(InProcessGrid(client_app, 3, tamper=spy), run)
    first, second = result.history
    assert first["evaluated-in"] == 2 and first["evaluated-merchants"] == 3 and "ndcg@10" in first
    assert second["evaluated-merchants"] == 3 and "evaluate-phase-seconds" in second
    evaluates = [group for kind, group, _ in seen if kind == "evaluate"]
    masked = [records for kind, group, records in seen if kind == "train.distributed" and group == "2"]
    if keys_lost:
        assert second["aggregated"] is False and masked == [] and len(evaluates) == 3 + 3
    else:
        assert masked == [{"metrics", "evaluation"}] * 3 and len(evaluates) == 3  # the last round's stage only


def _one_round(tmp_path, *, tamper=None, **changes):
    run = _distributed(tmp_path, **changes)
    arrays = {k: v.numpy() for k, v in initial_shared_state(run.model_config(), seed=run.seed).items()}
    training = DistributedTraining(run, arrays, sequential=True)
    grid = InProcessGrid(client_app, 3, tamper=tamper)
    secure = training.round(grid, 1, arrays, {**run.to_flat(), "run-id": "t"}, MerchantRegistry())
    return run, training, secure


@pytest.mark.parametrize("colluders", [0, 1])
def test_the_sums_noise_has_the_planned_standard_deviation_on_zero_gradients(tmp_path, colluders):
    # a sample rate so low that no customer is sampled: each merchant sends its noise share alone
    run, training, secure = _one_round(tmp_path, sample_rate=1e-4, colluders=colluders, max_grad_norm=0.7)
    assert secure.row["aggregated"]
    planned = run.distributed_noise() * run.max_grad_norm * np.sqrt(3 / (3 - colluders))
    observed = training.last_sum.std()
    # ~1e6 coordinates: the sample standard deviation is within 0.5% of the truth with overwhelming probability
    assert observed == pytest.approx(planned, rel=5e-3)
    assert abs(training.last_sum.mean()) < 5 * planned / np.sqrt(training.last_sum.size)


def _drop_node_3(node, reply):
    return None if node == 3 and reply.metadata.message_type == "train.distributed" else reply


def test_a_merchant_that_drops_after_sharing_is_unmasked_out_of_the_sum(tmp_path):
    run, training, secure = _one_round(tmp_path, tamper=_drop_node_3, min_survivors=2)
    assert secure.row["aggregated"] and secure.row["dropped"] == ["merchant-2"]
    assert secure.row["merchants-trained"] == ["merchant-0", "merchant-1"]
    # each survivor added sigma*C/sqrt(2): the recovered sum holds their noise, not the dropped one's masks
    assert training.last_sum.std() < 3 * run.distributed_noise() * run.max_grad_norm
    assert secure.arrays is not None and all(np.isfinite(v).all() for v in secure.arrays.values())


def test_a_round_below_the_minimum_is_discarded_and_still_paid_for(tmp_path):
    run, training, secure = _one_round(tmp_path, tamper=_drop_node_3)  # min-survivors 0: all three needed
    assert not secure.row["aggregated"] and "fewer than 3" in secure.row["discarded"]
    assert secure.arrays is None and not hasattr(training, "last_sum")
    assert set(secure.epsilon) == {"merchant-0", "merchant-1"} and min(secure.epsilon.values()) > 0


def test_adambc_takes_out_exactly_the_variance_the_sums_noise_has(tmp_path):
    # no customer sampled: the gradient is the noise alone, so its observed variance is what AdamBC must subtract
    run, training, secure = _one_round(tmp_path, sample_rate=1e-4, server_optimizer="adambc")
    assert secure.row["aggregated"]
    gradient = training.last_sum / (run.sample_rate * 3 * 60)
    subtracted = training.optimizer.param_groups[0]["noise_variance"]
    assert subtracted == pytest.approx(gradient.var(), rel=1e-2)


@pytest.mark.parametrize("min_survivors", [0, 2])
def test_after_the_first_round_a_secure_round_takes_one_message_stage_or_two_when_merchants_may_drop(
        tmp_path, min_survivors):
    """Round r + 1's keys travel beside round r's masked step. A sum of every merchant (min-survivors 0: all three)
    shares no secrets and has no unmask, so rounds 2 and 3 are their masked step alone; a sum that may lose a
    merchant (min-survivors 2) sends round r + 1's shares beside round r's unmask: a masked step and an unmask. Every
    round's sum is exactly the merchants' noise (no customer sampled), so each party answered from its own round's
    secrets."""
    run = _distributed(tmp_path, num_rounds=3, sample_rate=1e-4, min_survivors=min_survivors)
    seen = []

    def spy(node, reply):
        seen.append((reply.metadata.group_id, reply.metadata.message_type))
        return reply

    arrays = {k: v.numpy() for k, v in initial_shared_state(run.model_config(), seed=run.seed).items()}
    training = DistributedTraining(run, arrays, sequential=True)
    grid, registry = InProcessGrid(client_app, 3, tamper=spy), MerchantRegistry()
    planned = run.distributed_noise() * run.max_grad_norm * np.sqrt(3 / (min_survivors or 3))
    for server_round in (1, 2, 3):
        secure = training.round(grid, server_round, arrays, {**run.to_flat(), "run-id": "t"}, registry)
        assert secure.row["aggregated"] and secure.row["merchants-trained"] == ["merchant-0", "merchant-1",
                                                                                "merchant-2"]
        assert training.last_sum.std() == pytest.approx(planned, rel=5e-3)
        assert secure.row["secure-sum-seconds"] > 0  # the keys' accounting beside the last step is not taken off it
    stages = {group: sorted({kind for g, kind in seen if g == group}) for group in ("1", "2", "3")}
    if min_survivors:
        assert stages["1"] == ["query.secagg_keys", "query.secagg_shares", "query.secagg_unmask", "train.distributed"]
        assert stages["2"] == stages["3"] == ["query.secagg_unmask", "train.distributed"]
        assert len(seen) == 3 * 4 + 3 * 2 + 3 * 2
    else:
        assert stages["1"] == ["query.secagg_keys", "train.distributed"]
        assert stages["2"] == stages["3"] == ["train.distributed"]
        assert len(seen) == 3 * 2 + 3 + 3
    accountant = create_accountant("prv")
    for _ in range(3):
        accountant.step(noise_multiplier=run.distributed_noise(), sample_rate=run.sample_rate)
    assert all(e == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9) for e in secure.epsilon.values())


def test_a_merchant_that_missed_a_round_is_asked_for_the_next_rounds_keys_and_shares_alone(tmp_path):
    """Merchant 3's masked step of round 1 is lost, and with it its keys for round 2: they are asked again alone,
    beside round 1's unmask, round 2 gathers its shares itself, and merchant 3 takes part in round 2."""
    run = _distributed(tmp_path, min_survivors=2)
    seen = []

    def spy(node, reply):
        seen.append((node, reply.metadata.group_id, reply.metadata.message_type))
        return None if node == 3 and reply.metadata.group_id == "1" and \
            reply.metadata.message_type == "train.distributed" else reply

    result = run_federation(InProcessGrid(client_app, 3, tamper=spy), run)
    first, second = result.history
    assert first["aggregated"] and first["dropped"] == ["merchant-2"]
    assert second["aggregated"] and second["merchants-trained"] == ["merchant-0", "merchant-1", "merchant-2"]
    assert {(g, kind) for node, g, kind in seen if node == 3} == {
        ("1", "query.secagg_keys"), ("1", "query.secagg_shares"), ("1", "train.distributed"),
        ("2", "query.secagg_keys"), ("2", "query.secagg_shares"), ("2", "train.distributed"),
        ("2", "query.secagg_unmask")}
    assert {(g, kind) for node, g, kind in seen if node == 1} == {
        ("1", "query.secagg_keys"), ("1", "query.secagg_shares"), ("1", "train.distributed"),
        ("1", "query.secagg_unmask"), ("2", "query.secagg_shares"), ("2", "train.distributed"),
        ("2", "query.secagg_unmask")}


def test_a_merchant_whose_keys_were_lost_beside_a_step_is_asked_alone_before_the_next_sum_of_every_party(tmp_path):
    """A sum of every merchant has no unmask stage to ask again in: merchant 3's keys for round 2, lost beside its
    round-1 step, are asked in a stage of its own at the start of round 2, and it takes part in round 2."""
    from shared_model.secure_sum import NEXT

    run = _distributed(tmp_path)
    seen = []

    def spy(node, reply):
        seen.append((node, reply.metadata.group_id, reply.metadata.message_type))
        if node == 3 and reply.metadata.group_id == "1" and reply.metadata.message_type == "train.distributed":
            del reply.content[NEXT]
        return reply

    result = run_federation(InProcessGrid(client_app, 3, tamper=spy), run)
    assert all(row["aggregated"] and len(row["merchants-trained"]) == 3 for row in result.history)
    assert [(g, kind) for node, g, kind in seen if node == 3] == [
        ("1", "query.secagg_keys"), ("1", "train.distributed"), ("2", "query.secagg_keys"), ("2", "train.distributed")]
    assert [(g, kind) for node, g, kind in seen if node == 1] == [
        ("1", "query.secagg_keys"), ("1", "train.distributed"), ("2", "train.distributed")]


def test_a_sampled_round_asks_its_own_sample_for_keys_beside_the_previous_step(tmp_path):
    """fraction-train 0.5 of 4 merchants: each round's masked step goes to exactly its sample, the next round's
    keys beside it to the merchants in both samples, and alone to those only in the next."""
    import random

    run = _distributed(tmp_path, num_rounds=3, fraction_train=0.5, seed=3)  # samples {1, 2}, {2, 3}, {1, 3}
    seen = []

    def spy(node, reply):
        seen.append((node, reply.metadata.group_id, reply.metadata.message_type))
        return reply

    grid = InProcessGrid(client_app, 4, tamper=spy)
    result = run_federation(grid, run)
    assert [row["aggregated"] for row in result.history] == [True, True, True]
    nodes = sorted(grid.get_node_ids())
    samples = {r: set(random.Random(run.seed * 7919 + r).sample(nodes, 2)) for r in (1, 2, 3)}
    for r in (1, 2, 3):
        assert {node for node, g, kind in seen if g == str(r) and kind == "train.distributed"} == samples[r]
    for r in (2, 3):
        assert {node for node, g, kind in seen if g == str(r) and kind == "query.secagg_keys"} == \
            samples[r] - samples[r - 1]
        assert 0 < len(samples[r] & samples[r - 1]) < 2  # one merchant's keys beside its step, one's alone


def test_a_next_round_plan_for_another_round_is_refused_beside_the_unmask(tmp_path, monkeypatch):
    """The plan that rides on round 1's unmask must be round 2's: one naming round 5 gets no shares (a refusal in
    the `next` record), round 1 still unmasks, and round 2, without shares, is discarded."""
    from shared_model.secure_sum import NEXT

    run = _distributed(tmp_path, min_survivors=2)  # a sum that may lose a merchant: shares and an unmask
    arrays = {k: v.numpy() for k, v in initial_shared_state(run.model_config(), seed=run.seed).items()}
    training = DistributedTraining(run, arrays, sequential=True)
    answers = []
    exchange = training._exchange

    def skewed(grid, messages):
        for msg in messages:
            if msg.metadata.message_type == "query.secagg_unmask" and NEXT in msg.content.config_records:
                msg.content[NEXT]["server-round"] = 5
        replies = exchange(grid, messages)
        answers.extend(r.content[NEXT] for r in replies.values() if NEXT in r.content.config_records
                       and r.metadata.message_type == "query.secagg_unmask")
        return replies

    monkeypatch.setattr(training, "_exchange", skewed)
    grid, registry, settings = InProcessGrid(client_app, 3), MerchantRegistry(), {**run.to_flat(), "run-id": "t"}
    assert training.round(grid, 1, arrays, settings, registry).row["aggregated"]
    assert len(answers) == 3 and all("next round's" in str(a["refused"]) and "to" not in a for a in answers)
    second = training.round(grid, 2, arrays, settings, registry)
    assert not second.row["aggregated"] and "0 merchants shared keys" in second.row["discarded"]


def test_a_merchant_refuses_a_plan_whose_minimum_is_not_the_runs_before_it_pays(tmp_path, monkeypatch):
    """min-survivors 0: every merchant. A masked step whose plan lets one drop (2 of 3, which would have it mask for a
    sum that recovers) is refused by the merchant it was sent to, before its step is taken: it spends nothing, and
    the round, short of its vector, is discarded."""
    run = _distributed(tmp_path)
    arrays = {k: v.numpy() for k, v in initial_shared_state(run.model_config(), seed=run.seed).items()}
    training = DistributedTraining(run, arrays, sequential=True)
    exchange = training._exchange

    def lowered(grid, messages):
        for msg in messages:
            if msg.metadata.message_type == "train.distributed" and msg.metadata.dst_node_id == 1:
                msg.content["config"]["secagg.min-survivors"] = 2
        return exchange(grid, messages)

    monkeypatch.setattr(training, "_exchange", lowered)
    secure = training.round(InProcessGrid(client_app, 3), 1, arrays, {**run.to_flat(), "run-id": "t"},
                            MerchantRegistry())
    assert not secure.row["aggregated"] and "2 vectors arrived" in secure.row["discarded"]
    assert "is not the run's" in secure.row["refused"]["merchant-0"]
    assert set(secure.epsilon) == {"merchant-1", "merchant-2"}  # merchant-0 took no step


def test_a_merchants_own_policy_refuses_the_next_rounds_keys_beside_its_step(tmp_path):
    """Merchant 3's policy allows one DP step (policy-max-steps 1): it takes part in round 1, and the keys for round 2
    asked beside that step are refused by its policy, the reason in the `next` record; it is not asked again, round 2
    sums the other two, and merchant 3 has spent one step."""
    from shared_model.secure_sum import NEXT

    run = _distributed(tmp_path)
    configs = [{"partition-id": i, "num-partitions": 3, **({"policy-max-steps": 1} if i == 2 else {})}
               for i in range(3)]
    seen = []

    def spy(node, reply):
        seen.append((node, reply.metadata.group_id, reply.metadata.message_type))
        if node == 3 and reply.metadata.message_type == "train.distributed":
            seen.append((node, "next", str(reply.content[NEXT].get("refused", ""))))
        return reply

    result = run_federation(InProcessGrid(client_app, 3, tamper=spy, node_configs=configs), run)
    first, second = result.history
    assert first["aggregated"] and len(first["merchants-trained"]) == 3
    assert second["aggregated"] and second["merchants-trained"] == ["merchant-0", "merchant-1"]
    assert "max-steps 1" in second["refused"]["merchant-2"]
    third = [(g, kind) for node, g, kind in seen if node == 3]  # never asked again, nothing of round 2
    assert third[:2] == [("1", "query.secagg_keys"), ("1", "train.distributed")] and len(third) == 3
    assert third[2][0] == "next" and "max-steps 1" in third[2][1]
    accountant = create_accountant("prv")
    accountant.step(noise_multiplier=run.distributed_noise(), sample_rate=run.sample_rate)
    assert result.epsilon["merchant-2"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
