"""A merchant keeps each round's secure-sum secrets apart: a round's messages are answered from that round's party."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from client.policy import PrivacyPolicy
from client.secure_round import STATE_SECAGG, ledger_for, offer_keys, share_secrets
from shared_model.secure_sum import SecureSumError, SumPlan
from tests.conftest import tiny_run


def test_each_round_has_its_own_party_and_at_most_two_are_held(tmp_path):
    """The next round's keys are made while a round is still to be unmasked: both parties are held, each under its
    round, and a third drops the oldest. A message of a round whose party is gone is refused, never answered from
    another round's secrets."""
    run = tiny_run(tmp_path, privacy="distributed", sample_rate=0.3)
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={}, node_config={})
    policy = PrivacyPolicy.for_node({"partition-id": 0, "num-partitions": 2}, run)
    ledger = ledger_for(None, run, policy, num_users=60)

    def held():
        return sorted(key for key in context.state.keys() if key.startswith(STATE_SECAGG))

    keys = {r: offer_keys(context, server_round=r, run=run, policy=policy, num_users=60, ledger=ledger) for r in (1, 2)}
    assert keys[1]["pk-cipher"] != keys[2]["pk-cipher"] and keys[1]["pk-mask"] != keys[2]["pk-mask"]
    assert held() == [f"{STATE_SECAGG}.1", f"{STATE_SECAGG}.2"]
    theirs = [offer_keys(Context(run_id=1, node_id=node, state=RecordDict(), run_config={}, node_config={}),
                         server_round=2, run=run, policy=policy, num_users=60, ledger=ledger) for node in (8, 9)]
    plan = SumPlan(parties=(7, 8, 9), threshold=2, min_survivors=2, bound=1.0, length=4)  # one may drop: shares

    def config(server_round: int) -> dict:
        every = [keys[server_round], *theirs]
        return {**plan.to_config(), "server-round": server_round,
                "secagg.pk-cipher": [k["pk-cipher"] for k in every], "secagg.pk-mask": [k["pk-mask"] for k in every]}

    assert list(share_secrets(context, config(2))["to"]) == [8, 9]
    offer_keys(context, server_round=3, run=run, policy=policy, num_users=60, ledger=ledger)
    assert held() == [f"{STATE_SECAGG}.2", f"{STATE_SECAGG}.3"]
    with pytest.raises(SecureSumError, match="no secure sum of round 1"):
        share_secrets(context, config(1))
