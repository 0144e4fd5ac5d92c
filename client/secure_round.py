"""The merchant's side of a distributed-DP round: the secure sum's messages, its noise share and its ledger."""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.policy import PolicyRefusal, PrivacyPolicy
from shared_model.distributed_step import noise_share, noised_gradient_sum
from shared_model.privacy import PrivacyLedger
from shared_model.run_config import RunConfig
from shared_model.secure_sum import Party, SecureSumError, SumPlan, encode

log = logging.getLogger("fedprofile.merchant")
STATE_SECAGG = "fedprofile.secagg"  # + ".<round>": a round's party secrets, memory only, never on disk


def public_keys(config) -> dict[int, tuple[bytes, bytes]]:
    plan_parties = [int(p) for p in config["secagg.parties"]]
    cipher, mask = list(config["secagg.pk-cipher"]), list(config["secagg.pk-mask"])
    if not (len(plan_parties) == len(cipher) == len(mask)):
        raise SecureSumError("the public keys do not line up with the plan's parties")
    return {p: (bytes(c), bytes(m)) for p, c, m in zip(plan_parties, cipher, mask)}


def ledger_for(state_ledger: dict | None, run: RunConfig, policy: PrivacyPolicy, *, num_users: int) -> PrivacyLedger:
    """The merchant's one ledger (every run, both modes), set to account this run's distributed steps: the
    noise of the whole sum (sigma) at the merchant's own sample rate, against its own ceilings."""
    privacy = run.privacy_config(num_users=num_users, epsilon_cap=policy.max_epsilon, delta_cap=policy.max_delta)
    sigma = run.distributed_noise()
    if state_ledger:
        ledger = PrivacyLedger.from_state_dict(state_ledger)
        ledger.tighten(epsilon=privacy.target_epsilon, delta=privacy.target_delta)
    else:
        ledger = PrivacyLedger(privacy.target_epsilon, privacy.target_delta, run.sample_rate, sigma, run.num_rounds)
    ledger.noise_multiplier, ledger.sample_rate = sigma, run.sample_rate
    return ledger


def keys_reply(msg: Message, context: Context, *, name: str, run: RunConfig, policy: PrivacyPolicy, num_users: int,
               ledger: PrivacyLedger) -> Message:
    """Stage 1: check the policy and the budget for one more step, then send two fresh public keys. A merchant
    out of budget refuses here, before the others pay for a round it could make fall short."""
    keys = offer_keys(context, server_round=int(msg.content["config"]["server-round"]), run=run, policy=policy,
                      num_users=num_users, ledger=ledger)
    return Message(RecordDict({"secagg": ConfigRecord({"pk-cipher": keys["pk-cipher"], "pk-mask": keys["pk-mask"]}),
                               "metrics": MetricRecord({"num-examples": num_users,
                                                        "accounting-seconds": keys["accounting-seconds"]}),
                               "merchant": ConfigRecord({"name": name})}), reply_to=msg)


def offer_keys(context: Context, *, server_round: int, run: RunConfig, policy: PrivacyPolicy, num_users: int,
               ledger: PrivacyLedger) -> dict:
    """Stage 1's work, alone or beside the previous round's masked step: the policy and the budget for one more
    step checked, then a fresh party for `server_round` (its public keys, the customers and the check's time)."""
    started = time.perf_counter()
    policy.check(run, num_users=num_users, steps_taken=ledger.steps_taken())
    ledger.check_budget(1, sample_rate=run.sample_rate)
    accounting = time.perf_counter() - started
    party = Party(node_id=context.node_id)
    cipher_pk, mask_pk = party.keys()
    _keep(context, server_round, party, new=True)
    return {"pk-cipher": cipher_pk, "pk-mask": mask_pk, "num-examples": num_users, "accounting-seconds": accounting}


def shares_reply(msg: Message, context: Context) -> Message:
    """Stage 2: shares of its two secrets, each encrypted to the party it is for."""
    return Message(RecordDict({"secagg": ConfigRecord(share_secrets(context, msg.content["config"]))}), reply_to=msg)


def share_secrets(context: Context, config) -> dict:
    """Stage 2's work, alone or beside the previous round's unmask: `config` is the round's plan and keys."""
    plan, keys = SumPlan.from_config(config), public_keys(config)
    server_round = int(config["server-round"])
    party = _party(context, server_round)
    encrypted = party.share(plan, keys)
    _keep(context, server_round, party)
    others = sorted(encrypted)
    return {"to": others, "ciphertext": [encrypted[o] for o in others]}


def masked_reply(msg: Message, context: Context, *, model, data, run: RunConfig, policy: PrivacyPolicy,
                 ledger: PrivacyLedger, device) -> tuple[Message, PrivacyLedger]:
    """Stage 3: one DP step's noised gradient sum, paid for in the ledger before it is masked and sent."""
    config = msg.content["config"]
    plan, keys = SumPlan.from_config(config), public_keys(config)
    sharers = [int(p) for p in config["secagg.sharers"]]
    policy.check_distributed(run, steps_taken=ledger.steps_taken(), min_survivors=plan.min_survivors)
    # the plan's minimum is the run's, every party when the run says 0: a coordinator cannot lower it for one merchant
    if context.node_id not in plan.parties or plan.min_survivors != (run.min_survivors or len(plan.parties)):
        raise PolicyRefusal(f"the round's plan (min survivors {plan.min_survivors} of {len(plan.parties)}) is not the "
                            f"run's (min-survivors {run.min_survivors}; 0: every merchant)")
    # the share is set by the sum's guaranteed size: any min_survivors - colluders honest shares make sigma
    share = noise_share(run.distributed_noise(), min_survivors=plan.min_survivors, colluders=run.colluders)
    received = {int(src): bytes(ct) for src, ct in zip(config["secagg.from"], config["secagg.ciphertext"])}
    server_round = int(config["server-round"])
    party = _party(context, server_round)
    party.ready(plan, public_keys=keys)  # before the step is taken and paid for
    shapes = {name: tuple(array.shape) for name, array in msg.content["arrays"].items()}
    result = noised_gradient_sum(model, data, run, shapes, share=share, device=device)
    # counted before anything leaves: a round the coordinator later discards has still used these customers
    ledger.spend(1, noise_multiplier=run.distributed_noise(), sample_rate=run.sample_rate)
    mask_started = time.perf_counter()
    if plan.recovers:
        masked = party.mask(encode(result.vector, plan), plan, received=received, sharers=sharers, public_keys=keys)
        _keep(context, server_round, party)
    else:  # a sum of every party: pairwise masks only, and nothing of this round's secrets is asked for again
        masked = party.mask_whole(encode(result.vector, plan), plan, public_keys=keys)
        del context.state[f"{STATE_SECAGG}.{server_round}"]
    mask_seconds = time.perf_counter() - mask_started
    metrics = {"num-examples": len(data.train), "epsilon": ledger.epsilon(), "delta": ledger.target_delta,
               "steps": ledger.steps_taken(), "train-seconds": result.seconds,
               "mask-seconds": mask_seconds}
    reply = Message(RecordDict({"arrays": ArrayRecord({"masked": Array(np.asarray(masked))}),
                                "metrics": MetricRecord(metrics)}), reply_to=msg)
    return reply, ledger


def unmask_reply(msg: Message, context: Context) -> Message:
    """Stage 4: the shares that remove the survivors' self masks and the dropped parties' pairwise masks."""
    config = msg.content["config"]
    plan, keys = SumPlan.from_config(config), public_keys(config)
    server_round = int(config["server-round"])
    party = _party(context, server_round)
    shares = party.unmask(plan, survivors=[int(p) for p in config["secagg.survivors"]],
                          dropped=[int(p) for p in config["secagg.dropped"]], public_keys=keys)
    _keep(context, server_round, party)  # `answered` persists: no second answer
    about = sorted(shares)
    return Message(RecordDict({"secagg": ConfigRecord({"about": about, "share": [shares[a] for a in about]})}),
                   reply_to=msg)


def _keep(context: Context, server_round: int, party: Party, *, new: bool = False) -> None:
    """Store a round's party. A new one drops the parties of rounds before the one in progress: at most the round
    being unmasked and the next one, set up beside it, hold secrets at a time."""
    if new:
        for key in [k for k in context.state.keys() if k.startswith(STATE_SECAGG + ".")]:
            if int(key.rsplit(".", 1)[1]) < server_round - 1:
                del context.state[key]
    context.state[f"{STATE_SECAGG}.{server_round}"] = ConfigRecord(party.state_dict())


def _party(context: Context, server_round: int) -> Party:
    key = f"{STATE_SECAGG}.{server_round}"
    if key not in context.state:
        raise SecureSumError(f"no secure sum of round {server_round} in progress on this merchant (its keys were "
                             "not asked for)")
    return Party.from_state_dict({k: bytes(v) for k, v in context.state[key].items()})
