"""What a merchant does with each message of a round: plain PyTorch calls behind a policy, a ledger and a state."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.policy import PolicyRefusal, PrivacyPolicy
from client.secure_round import (
    keys_reply,
    ledger_for,
    masked_reply,
    offer_keys,
    share_secrets,
    shares_reply,
    unmask_reply,
)
from client.state import MerchantState, keep_global_model, log_sent
from shared_model.checkpoint import model_for_catalogue
from shared_model.device import pick_device
from shared_model.evaluation_request import EVALUATION, FOLDS_EVALUATION, asked_evaluation
from shared_model.merchant_data import load_merchant, simulated_merchants
from shared_model.merchant_round import local_evaluate, local_round
from shared_model.packing import PackingError, pack, unpack
from shared_model.privacy import PrivacyBudgetExhausted, PrivacyLedger
from shared_model.run_config import RunConfig
from shared_model.secure_sum import NEXT, SecureSumError

log = logging.getLogger("fedprofile.merchant")

# Keys of `context.state`
STATE_PRIVACY = "fedprofile.privacy"
STATE_LOCAL = "fedprofile.local"
STATE_OPTIMIZER = "fedprofile.optimizer"


def train(msg: Message, context: Context) -> Message:
    try:
        run, server_round, run_id = _settings(msg)
    except ValueError as exc:  # a run config out of bounds is refused, not trained
        return _refuse(msg, _name(context), str(exc), train=True)
    if run.distributed_dp:  # its training goes through the secure sum, never as a plain update
        return _refuse(msg, _name(context), "this run has privacy = distributed: its rounds are secure sums, not "
                       "plain updates", train=True)
    merchant = _merchant(context, run)
    state = _load_state(context, run, run_id, merchant.name)
    stored = state.stored_update(run_id, server_round)
    if stored is not None:  # this round was paid for already (the server restarted): send the same update again
        return _train_reply(msg, merchant.name, stored["shared_state"], stored["metrics"], refused=stored.get("refused"))
    policy = PrivacyPolicy.for_node(context.node_config, run)
    ledger = PrivacyLedger.from_state_dict(state.ledger) if state.ledger else None
    try:  # the merchant's own policy decides, whatever the run config says
        policy.check(run, num_users=len(merchant.sequences.train), steps_taken=ledger.steps_taken() if ledger else 0)
        model = _model(run, merchant, state, msg.content["arrays"])
    except PolicyRefusal as exc:
        return _refuse(msg, merchant.name, str(exc), train=True, num_examples=len(merchant.sequences.train),
                       ledger=ledger)
    update = local_round(model, merchant.sequences, run, ledger_state=state.ledger, server_round=server_round,
                         epsilon_cap=policy.max_epsilon, delta_cap=policy.max_delta,
                         proximal_mu=run.proximal_mu if run.strategy == "fedprox" else 0.0,
                         optimizer_state=_optimizer_state(context), device=pick_device())
    metrics = _metrics(num_examples=update.num_examples, loss=update.loss, epsilon=update.epsilon,
                       delta=update.delta, steps=update.steps, seconds=update.seconds, refused=update.refused is not None)
    if update.refused:
        log.warning("%s refused round %d of run %s: %s", merchant.name, server_round, run_id, update.refused)
    state.record(run_id, server_round, ledger=update.ledger_state, local=update.local_state,
                 reply={"shared_state": update.shared_state, "metrics": metrics, "refused": update.refused})
    _save_state(context, state)
    if update.optimizer_state:
        context.state[STATE_OPTIMIZER] = ArrayRecord(update.optimizer_state)
    return _train_reply(msg, merchant.name, update.shared_state, metrics, refused=update.refused)


def evaluate(msg: Message, context: Context) -> Message:
    try:
        run, server_round, run_id = _settings(msg)
    except ValueError as exc:
        return _refuse(msg, _name(context), str(exc), train=False)
    merchant = _merchant(context, run)
    try:
        metrics, keep = _evaluation(context, run, merchant, msg.content["arrays"], server_round, run_id)
    except PolicyRefusal as exc:
        return _refuse(msg, merchant.name, str(exc), train=False)
    keep()
    return Message(RecordDict({"metrics": metrics, "merchant": ConfigRecord({"name": merchant.name})}), reply_to=msg)


def _evaluation(context: Context, run: RunConfig, merchant, arrays: ArrayRecord, model_round: int,
                run_id: str) -> tuple[MetricRecord, Callable[[], None]]:
    """The metrics of a received global model on this merchant's own test users (its policy checks the model
    first), and `keep()`: in a deployment, hand that version to the merchant's own service, which serves it next."""
    state = _load_state(context, run, run_id, merchant.name)
    PrivacyPolicy.for_node(context.node_config, run).check_model(run)
    model = _model(run, merchant, state, arrays)
    metrics = local_evaluate(model, merchant.sequences, device=pick_device())
    users = int(metrics.pop("users"))

    def keep() -> None:
        if "state-dir" in context.node_config:  # deployment: the merchant's own service serves this version next
            keep_global_model(Path(str(context.node_config["state-dir"])), model, model_round, run_id,
                              item_ids=merchant.sequences.catalogue.item_ids)

    return MetricRecord({"num-examples": users, **metrics}), keep


def _folded_evaluation(msg: Message, context: Context) -> tuple[MetricRecord, Callable[[], None]] | None:
    """A training message that also asks for the evaluation of an earlier round's model (`evaluate-with-training`):
    its metrics, computed before training (the model is the one received, never this merchant's update), and the
    `keep` of `_evaluation`; None when the message asks for none or the merchant's policy refuses the model (said
    in the log)."""
    asked = asked_evaluation(msg.content)
    if asked is None:
        return None
    model_round, arrays = asked
    try:
        run, _, run_id = _settings(msg)
    except (KeyError, ValueError):  # the training handler refuses a bad config with its reason
        return None
    merchant = _merchant(context, run)
    try:
        return _evaluation(context, run, merchant, arrays, model_round, run_id)
    except PolicyRefusal as exc:
        log.warning("%s did not evaluate the model of round %d: %s", merchant.name, model_round, exc)
        return None


def secagg_keys(msg: Message, context: Context) -> Message:
    """Distributed DP, stage 1 of a round: the policy and budget are checked, then two public keys go out."""
    try:
        run, server_round, run_id = _settings(msg)
    except ValueError as exc:
        return _refuse(msg, _name(context), str(exc), train=False)
    merchant, state, policy = _round_parts(context, run, run_id)
    num_users = len(merchant.sequences.train)
    try:
        ledger = _unpaid_ledger(run, server_round, run_id, state, policy, num_users)
        return keys_reply(msg, context, name=merchant.name, run=run, policy=policy, num_users=num_users,
                          ledger=ledger)
    except (PolicyRefusal, PrivacyBudgetExhausted, SecureSumError) as exc:
        return _refuse(msg, merchant.name, str(exc), train=False)


def secagg_shares(msg: Message, context: Context) -> Message:
    """Stage 2: shares of the merchant's secrets, encrypted to each other merchant."""
    try:
        return shares_reply(msg, context)
    except SecureSumError as exc:
        return _refuse(msg, _name(context), str(exc), train=False)


def train_distributed(msg: Message, context: Context) -> Message:
    """Stage 3: one central DP-SGD step's share (clipped, noised, masked); the ledger pays before it leaves."""
    try:
        run, server_round, run_id = _settings(msg)
    except ValueError as exc:
        return _refuse(msg, _name(context), str(exc), train=False)
    merchant, state, policy = _round_parts(context, run, run_id)
    ledger = None
    try:
        ledger = _unpaid_ledger(run, server_round, run_id, state, policy, len(merchant.sequences.train))
        ledger.check_budget(1, sample_rate=run.sample_rate)
        model = _model(run, merchant, state, msg.content["arrays"])
        reply, ledger = masked_reply(msg, context, model=model, data=merchant.sequences, run=run, policy=policy,
                                     ledger=ledger, device=pick_device())
    except (PolicyRefusal, PrivacyBudgetExhausted, SecureSumError) as exc:
        if ledger is not None and ledger.steps_taken() > (PrivacyLedger.from_state_dict(state.ledger).steps_taken()
                                                          if state.ledger else 0):
            _pay(context, state, run_id, server_round, ledger)  # the step was taken: it stays paid for
        return _refuse(msg, merchant.name, str(exc), train=False)
    _pay(context, state, run_id, server_round, ledger)
    log.info("%s sent its masked share of round %d (epsilon %.3f)", merchant.name, server_round, ledger.epsilon())
    if msg.content["config"].get("secagg.next-keys"):  # the next round's stage 1, asked beside this step
        try:
            next_ledger = _unpaid_ledger(run, server_round + 1, run_id, state, policy, len(merchant.sequences.train))
            reply.content[NEXT] = ConfigRecord(offer_keys(
                context, server_round=server_round + 1, run=run, policy=policy,
                num_users=len(merchant.sequences.train), ledger=next_ledger))
        except (PolicyRefusal, PrivacyBudgetExhausted, SecureSumError) as exc:
            log.warning("%s sent no keys for round %d: %s", merchant.name, server_round + 1, exc)
            reply.content[NEXT] = ConfigRecord({"refused": str(exc)[:300]})
    return reply


def secagg_unmask(msg: Message, context: Context) -> Message:
    """Stage 4: the shares that unmask the sum of the merchants whose vectors arrived; beside them, when asked,
    the next round's stage 2 (its plan and keys in the `next` record)."""
    try:
        reply = unmask_reply(msg, context)
    except SecureSumError as exc:
        return _refuse(msg, _name(context), str(exc), train=False)
    if NEXT in msg.content.config_records:
        upcoming = msg.content[NEXT]
        try:
            if int(upcoming["server-round"]) != int(msg.content["config"]["server-round"]) + 1:
                raise SecureSumError("the plan beside an unmask must be the next round's")
            reply.content[NEXT] = ConfigRecord(share_secrets(context, upcoming))
        except (KeyError, TypeError, ValueError) as exc:  # SecureSumError is a ValueError
            log.warning("%s sent no shares for the next round: %s", _name(context), exc)
            reply.content[NEXT] = ConfigRecord({"refused": str(exc)[:300]})
    return reply


def _round_parts(context: Context, run: RunConfig, run_id: str):
    """The merchant, its state and its policy, as a distributed round's keys and training stages both need."""
    merchant = _merchant(context, run)
    return merchant, _load_state(context, run, run_id, merchant.name), PrivacyPolicy.for_node(context.node_config, run)


def _unpaid_ledger(run: RunConfig, server_round: int, run_id: str, state: MerchantState, policy: PrivacyPolicy,
                   num_users: int) -> PrivacyLedger:
    """The ledger set for this run's distributed steps; a round already paid for, or a run in another mode, is
    refused (a second noised sample of one round would add up)."""
    if not run.distributed_dp:
        raise PolicyRefusal(f"a secure-sum round was asked for in a run with privacy = {run.privacy}, "
                            f"dp = {str(run.dp).lower()}")
    if state.already_paid(run_id, server_round):
        raise PolicyRefusal(f"this merchant already took part in round {server_round} of run {run_id}")
    return ledger_for(state.ledger, run, policy, num_users=num_users)


def _pay(context: Context, state: MerchantState, run_id: str, server_round: int, ledger: PrivacyLedger) -> None:
    state.record(run_id, server_round, ledger=ledger.state_dict(), local=state.local, reply=None)
    _save_state(context, state)


def _refuse(msg: Message, name: str, reason: str, *, train: bool, num_examples: int = 0,
            ledger: PrivacyLedger | None = None) -> Message:
    """A refusal, logged and sent with its reason and nothing trained: a train reply carries the figures the
    merchant has spent so far; an evaluate reply carries no metrics, so the coordinator leaves it out."""
    log.warning("%s refused a %s message: %s", name, "train" if train else "evaluate", reason)
    if train:
        metrics = _metrics(num_examples=num_examples, epsilon=ledger.epsilon() if ledger else 0.0,
                           delta=ledger.target_delta if ledger else 0.0, refused=True)
        return _train_reply(msg, name, None, metrics, refused=reason)
    return Message(RecordDict({"merchant": ConfigRecord({"name": name, "refused": reason})}), reply_to=msg)


def _name(context: Context) -> str:
    return str(context.node_config.get("merchant-name", f"node-{context.node_id}"))


def _settings(msg: Message) -> tuple[RunConfig, int, str]:
    config = msg.content["config"]
    values = {k: v for k, v in config.items() if k != "run-id"}
    return RunConfig.from_flat(values), int(config["server-round"]), str(config.get("run-id", ""))


def _merchant(context: Context, run: RunConfig):
    """Deployment: the merchant's own files (node config `data-path`, `format`); simulation: partition
    `partition-id` of the run's data set."""
    node = context.node_config
    if "data-path" in node:
        return load_merchant(str(node["data-path"]), str(node.get("format", "events")), run,
                             cache_dir=node.get("state-dir"),
                             name=str(node.get("merchant-name", Path(str(node["data-path"])).stem)))
    merchants = simulated_merchants(run, int(node["num-partitions"]))
    return merchants[int(node["partition-id"])]


def _state_folder(context: Context, run: RunConfig, run_id: str, name: str) -> Path | None:
    if "state-dir" in context.node_config:
        return Path(str(context.node_config["state-dir"]))
    if "partition-id" in context.node_config:  # simulation: each simulated merchant's "disk" lives in the run folder
        return run.run_path / "merchants" / run_id / name
    return None


def _load_state(context: Context, run: RunConfig, run_id: str, name: str) -> MerchantState:
    memory = None
    if STATE_PRIVACY in context.state:
        saved = context.state[STATE_PRIVACY]
        memory = {"ledger": json.loads(str(saved["ledger"])), "rounds": json.loads(str(saved["rounds"])),
                  "local": context.state[STATE_LOCAL].to_torch_state_dict() if STATE_LOCAL in context.state else {}}
    return MerchantState.load(_state_folder(context, run, run_id, name), memory)


def _save_state(context: Context, state: MerchantState) -> None:
    context.state[STATE_PRIVACY] = ConfigRecord({"ledger": json.dumps(state.ledger), "rounds": json.dumps(state.rounds)})
    if state.local:
        context.state[STATE_LOCAL] = ArrayRecord(state.local)


def _optimizer_state(context: Context):
    """The merchant's optimizer moments from its previous round (`keep-optimizer-state`), in memory only."""
    return context.state[STATE_OPTIMIZER].to_torch_state_dict() if STATE_OPTIMIZER in context.state else None


def _model(run: RunConfig, merchant, state: MerchantState, arrays: ArrayRecord):
    """The received global weights over this merchant's catalogue; weights that are not all finite, or not
    the run's names and shapes, are refused (a NaN model would score every metric 1.0 and be served)."""
    shared = arrays.to_torch_state_dict()
    bad = sorted(name for name, tensor in shared.items()
                 if not (tensor.is_floating_point() and bool(torch.isfinite(tensor).all())))
    if bad:
        raise PolicyRefusal(f"the global weights hold non-finite or non-float values in {bad[:3]}"
                            + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))
    catalogue = merchant.sequences.catalogue
    try:
        return model_for_catalogue(run.model_config(local_items=catalogue.num_items + 1), shared, catalogue,
                                   state.local)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise PolicyRefusal(f"the global weights do not fit the run's model: {str(exc)[:300]}") from None


def _metrics(*, num_examples: int, epsilon: float, delta: float, refused: bool, loss: float = float("nan"),
             steps: int = 0, seconds: float = 0.0) -> dict:
    """A train reply's metrics: always these seven keys, every value a finite number."""
    return {"num-examples": num_examples, "train-loss": loss if math.isfinite(loss) else 0.0, "epsilon": epsilon,
            "delta": delta, "steps": steps, "train-seconds": seconds, "refused": int(refused)}


def _train_reply(msg: Message, name: str, shared_state, metrics: dict, *, refused: str | None) -> Message:
    content = {"metrics": MetricRecord(metrics), "merchant": ConfigRecord({"name": name, "refused": refused or ""})}
    if shared_state is not None:  # only the shared weights leave the merchant; local ones never do
        content["arrays"] = ArrayRecord(shared_state)
    return Message(RecordDict(content), reply_to=msg)


HANDLERS = {"train": train, "evaluate": evaluate, "query.secagg_keys": secagg_keys,
            "query.secagg_shares": secagg_shares, "train.distributed": train_distributed,
            "query.secagg_unmask": secagg_unmask}


def handle(msg: Message, context: Context) -> Message:
    """The reply to `msg`: one code path for a simulated merchant, a cold ClientApp and the warm round worker. A
    message whose arrays came packed (a deployment: shared_model/packing.py) is answered packed."""
    handler = HANDLERS.get(msg.metadata.message_type)
    if handler is None:
        return _refuse(msg, _name(context), f"unknown message type {msg.metadata.message_type!r}", train=False)
    try:
        packed = unpack(msg.content)
    except PackingError as exc:
        return _refuse(msg, _name(context), f"the message's arrays do not unpack: {exc}",
                       train=msg.metadata.message_type == "train")
    # the received model is evaluated before training touches anything (the weights to train may be that model)
    folded = _folded_evaluation(msg, context) if msg.metadata.message_type in FOLDS_EVALUATION else None
    reply = handler(msg, context)
    if folded is not None:
        evaluation, keep = folded
        if reply.has_content():
            reply.content[EVALUATION] = evaluation
        keep()  # after training: the service's swap to that version runs while the reply travels, not beside it
    if "state-dir" in context.node_config and reply.has_content():
        log_sent(Path(str(context.node_config["state-dir"])), _sent_counts(msg, reply))
    if packed and reply.has_content():
        pack(reply.content)
    return reply


def _sent_counts(msg: Message, reply: Message) -> dict:
    """What a reply carries out of the merchant, as counts: numbers in its arrays, named figures in its metrics,
    and its size in bytes (arrays, figures, and the bytes and text of its config records: key shares, names)."""
    arrays = [array for record in reply.content.array_records.values() for array in record.values()]
    metrics = [value for record in reply.content.metric_records.values() for value in record.values()]
    configs = [value for record in reply.content.config_records.values() for value in record.values()]
    size = sum(len(array.data) for array in arrays) + 8 * len(metrics) + sum(
        len(item) for value in configs for item in (value if isinstance(value, list) else [value])
        if isinstance(item, (bytes, str)))
    config = msg.content.config_records.get("config")
    server_round = config.get("server-round") if config is not None else None
    return {"at": time.time(), "run_id": str(config.get("run-id", "")) if config is not None else "",
            "round": int(server_round) if server_round is not None else msg.metadata.group_id,
            "message": msg.metadata.message_type, "array_values": int(sum(math.prod(a.shape) for a in arrays)),
            "metrics": len(metrics), "bytes": int(size), "customers": int(_customers(reply)),
            "refused": any(record.get("refused") for record in (*reply.content.metric_records.values(),
                                                                  *reply.content.config_records.values()))}


def _customers(reply: Message) -> float:
    """The customers a reply speaks for: its own record's count (an evaluation beside a training reply counts
    test users, not the customers trained)."""
    records = reply.content.metric_records
    record = records.get("metrics") or records.get(EVALUATION)
    return record.get("num-examples", 0) if record is not None else 0
