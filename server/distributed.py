"""The coordinator's side of a distributed-DP round: the secure sum's messages, then one server optimizer step."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from server.adam_bc import AdamBC
from server.aggregation import array_record
from server.exchange import send_and_receive
from server.screening import MerchantRegistry
from shared_model.distributed_step import noise_share, value_bound
from shared_model.evaluation_request import ask_evaluation
from shared_model.run_config import RunConfig
from shared_model.secure_sum import NEXT, SecureSumError, SumPlan, decode, unmasked_sum

log = logging.getLogger("fedprofile.server")


@dataclass
class SecureRound:
    """What one round's secure sum produced: the new weights (None when the round was discarded) and its figures."""

    arrays: dict[str, np.ndarray] | None
    row: dict = field(default_factory=dict)
    evaluation_replies: list[Message] = field(default_factory=list)  # the training stage's (an evaluation asked)
    epsilon: dict[str, float] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=dict)


class DistributedTraining:
    """Server-side DP-SGD on the merchants' secure sum: gradient = sum / (sample rate x customers of the
    merchants in the sum), then Adam (or DP-AdamBC, `server-optimizer`) at `server-lr` (post-processing: it sees only
    the noised sum). `state_arrays()` keeps Adam's moments in the checkpoint, so a resumed run takes the same steps."""

    def __init__(self, run: RunConfig, arrays: dict[str, np.ndarray], *, sequential: bool = False):
        self.run, self.sequential = run, sequential  # sequential: a grid that runs merchants one after another
        self.names = list(arrays)
        self.shapes = {k: tuple(v.shape) for k, v in arrays.items()}
        self.length = int(sum(math.prod(s) for s in self.shapes.values()))
        self.params = [torch.nn.Parameter(torch.from_numpy(np.array(arrays[k], dtype=np.float32))) for k in self.names]
        self.optimizer = AdamBC(self.params, lr=run.server_lr, noise_variance=0.0) \
            if run.server_optimizer == "adambc" else torch.optim.Adam(self.params, lr=run.server_lr)
        self._next: _Setup | None = None  # the next round's keys and shares, gathered beside this round's stages

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Adam's moments and step count as arrays (`distributed-adam/...`), for the round's checkpoint."""
        out = {}
        for name, param in zip(self.names, self.params):
            state = self.optimizer.state.get(param)
            if state:
                out[f"distributed-adam/{name}/m"] = state["exp_avg"].numpy().copy()
                out[f"distributed-adam/{name}/v"] = state["exp_avg_sq"].numpy().copy()
                out[f"distributed-adam/{name}/step"] = np.asarray(float(state["step"]))
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for name, param in zip(self.names, self.params):
            if f"distributed-adam/{name}/m" in arrays:
                self.optimizer.state[param] = {
                    "step": torch.tensor(float(arrays[f"distributed-adam/{name}/step"])),
                    "exp_avg": torch.from_numpy(np.array(arrays[f"distributed-adam/{name}/m"], dtype=np.float32)),
                    "exp_avg_sq": torch.from_numpy(np.array(arrays[f"distributed-adam/{name}/v"], dtype=np.float32))}

    # ---- one round ----------------------------------------------------------------------------------------------

    def round(self, grid, server_round: int, arrays: dict[str, np.ndarray], settings: dict,
              registry: MerchantRegistry, *, evaluation: tuple | None = None) -> SecureRound:
        """One secure sum and step: keys, shares, masked step, unmask. Beside this round's masked step and unmask go
        the next round's keys and shares (its stages 1 and 2), so after the first round a round takes two message
        stages; a merchant left out of this round's step is asked for the next round's keys and shares alone. A sum
        that needs every merchant's vector (min-survivors 0, the default, or as many as sent keys) shares no secrets
        and has no unmask (`SumPlan.recovers`): after the first round such a round is its masked step alone.
        `evaluation` ((round, published record or None), shared_model/evaluation_request.py) rides on the masked
        step's messages (their replies come back in `evaluation_replies`)."""
        run, out, started = self.run, SecureRound(None), time.perf_counter()
        group = str(server_round)
        config = {**settings, "server-round": server_round}
        setup = self._next if self._next is not None and self._next.round == server_round else None
        self._next = None
        if setup is None:  # 1. keys (and each merchant's count of customers: the gradient's denominator)
            setup = _Setup(server_round, config, self.length)
        pipelined = len(setup.accounting)  # the keys' accounting done beside the last round's step, not in this one
        if setup.plan is None:  # merchants whose keys were lost beside the last round's step are asked in a stage
            absent = [n for n in self._nodes(grid, server_round) if n not in setup.answered]
            replies = self._send(grid, absent, "query.secagg_keys", config, group) if absent else {}
            for node, reply in replies.items():
                self._add_keys(setup, node, reply, registry)
        for kind, labels in setup.row.items():
            out.row.setdefault(kind, {}).update(labels)
        why = setup.plan_from_keys(run) if setup.plan is None else None
        if why:
            return self._discard(out, why, started)
        plan = setup.plan
        if setup.sharers is None:  # 2. encrypted shares, routed (a sum of every party has none: plan_from_keys)
            setup.start_shares()
            for node, reply in self._send(grid, sorted(setup.keys), "query.secagg_shares", setup.keyed,
                                          group).items():
                setup.add_shares(node, _record(reply, "secagg"))
        sharers = setup.sharers
        if len(sharers) < plan.min_survivors:
            return self._discard(out, f"{len(sharers)} merchants shared keys, fewer than {plan.min_survivors}", started)
        out.row["secure-sum-seconds"] = time.perf_counter() - started  # stages 1 and 2, less accounting below
        # 3. masked noised gradient sums; beside them the next round's keys
        following = _Setup(server_round + 1, {**settings, "server-round": server_round + 1}, self.length) \
            if server_round < run.num_rounds else None
        next_nodes = set(self._nodes(grid, server_round + 1)) if following else set()
        self._next = following
        train_started = time.perf_counter()
        masked_messages = []
        for node in sharers:
            senders = [s for s in sharers if s != node] if plan.recovers else []  # whose shares it receives
            content = {**setup.keyed, "secagg.sharers": sharers, "secagg.from": senders,
                       "secagg.ciphertext": [setup.routed[node][s] for s in senders],
                       "secagg.next-keys": node in next_nodes}
            masked_messages.append(Message(RecordDict({"arrays": array_record(arrays), "config": ConfigRecord(content)}),
                                           dst_node_id=node, message_type="train.distributed", group_id=group))
        if evaluation is not None:
            ask_evaluation(masked_messages, model_round=evaluation[0], published=evaluation[1])
        replies = self._exchange(grid, masked_messages + self._alone(
            sorted(next_nodes - set(sharers)), "query.secagg_keys", following))
        masked, merchant_seconds, mask_seconds = {}, [], []
        for node, reply in replies.items():
            if reply.metadata.message_type == "query.secagg_keys":
                self._add_keys(following, node, reply, registry)
                continue
            out.evaluation_replies.append(reply)
            if following is not None and NEXT in reply.content.config_records:
                self._add_keys(following, node, reply, registry, record=NEXT)
            try:
                vector = reply.content["arrays"]["masked"].numpy()
                metrics = reply.content["metrics"]
                label = registry.label(reply)
                out.epsilon[label], out.delta[label] = float(metrics["epsilon"]), float(metrics["delta"])
                merchant_seconds.append(float(metrics["train-seconds"]))
                mask_seconds.append(float(metrics.get("mask-seconds", 0.0)))
            except (KeyError, TypeError, ValueError):
                out.row.setdefault("refused", {})[registry.label(reply)] = _why(reply)
                continue
            if vector.dtype != np.uint64 or vector.shape != (self.length,):
                out.row.setdefault("rejected", {})[registry.label(reply)] = "masked vector of the wrong type or size"
                continue
            masked[node] = vector
        out.row["train-phase-seconds"] = time.perf_counter() - train_started
        out.row["merchant-step-seconds"] = max(merchant_seconds, default=0.0)
        # the protocol's own work in this stage: masking (merchants work side by side in a deployment)
        out.row["secure-sum-seconds"] += max(mask_seconds, default=0.0)
        # stage 1's wall time holds each merchant's privacy accounting, which any DP mode does
        out.row["accounting-seconds"] = self._wall(setup.accounting)
        in_stage = self._wall(setup.accounting[pipelined:])  # the part that this round's own keys stage waited for
        survivors = sorted(masked)
        out.row["merchants-trained"] = [registry.labels[n] for n in survivors]
        if len(survivors) < plan.min_survivors:  # the merchants that sent have paid; nothing is unmasked
            return self._discard(out, f"{len(survivors)} vectors arrived, fewer than {plan.min_survivors}", started)
        dropped = [p for p in sharers if p not in masked]
        unmask_started = time.perf_counter()
        try:
            if plan.recovers:  # 4. unmask (and the next round's shares beside it)
                missing = sorted(next_nodes - following.answered) if following else []
                shares = self._unmask(grid, group, setup, following, survivors, dropped, missing, registry)
            else:  # every merchant's vector is in: the pairwise masks cancel, there is nothing to unmask
                shares = {}
            total = unmasked_sum(plan, masked=masked, shares=shares, sharers=sharers,
                                 public_keys={p: setup.keys[p] for p in setup.parties})
        except (SecureSumError, ValueError) as exc:
            return self._discard(out, str(exc), started)
        out.row["secure-sum-seconds"] += time.perf_counter() - unmask_started - in_stage
        # one DP-SGD step on the noised mean gradient (the expected batch: rate x customers in the sum)
        self.last_sum = decode(total, plan)  # all the coordinator learns of the merchants' data this round
        expected_batch = run.sample_rate * sum(setup.counts[n] for n in survivors)
        gradient = self.last_sum / expected_batch
        share = setup.share
        if isinstance(self.optimizer, AdamBC):  # each survivor added N(0, (share x C)^2) per coordinate
            self.optimizer.set_noise_variance(len(survivors) * (share * run.max_grad_norm / expected_batch) ** 2)
        out.arrays = self._step(gradient)
        out.row.update(aggregated=True, dropped=[registry.labels[n] for n in dropped],
                       **{"noise-share": share, "sum-bound": plan.bound, "resolution": plan.resolution})
        out.row["seconds-secure-round"] = time.perf_counter() - started
        return out

    def _wall(self, seconds: list[float]) -> float:
        """The wall time of work the merchants did each on their own: side by side in a deployment."""
        return sum(seconds) if self.sequential else max(seconds, default=0.0)

    def _unmask(self, grid, group: str, setup: "_Setup", following: "_Setup | None", survivors: list[int],
                dropped: list[int], missing: list[int], registry: MerchantRegistry) -> dict[int, dict[int, bytes]]:
        """Stage 4: each survivor's shares that unmask the sum (`shares[answering][about]`). Beside it the next round's
        shares, to the merchants that sent it keys. A merchant whose answer about the next round's keys did not come
        (`missing`: lost, or its step refused) is asked again alone; the next round then plans with its keys too and
        gathers its shares itself (three stages instead of two), so a merchant that missed a stage is not left out."""
        run, sharers = self.run, setup.sharers
        upcoming = following is not None and not missing and not following.plan_from_keys(run) \
            and following.plan.recovers  # a next sum of every party has no shares to gather
        if upcoming:
            following.start_shares()
        messages = []
        for node in survivors:
            content = {"config": ConfigRecord({**setup.keyed, "secagg.survivors": survivors, "secagg.dropped": dropped})}
            if upcoming and node in following.keys:
                content[NEXT] = ConfigRecord(following.keyed)
            messages.append(Message(RecordDict(content), dst_node_id=node, message_type="query.secagg_unmask",
                                    group_id=group))
        alone = sorted(set(following.keys) - set(survivors)) if upcoming else []
        shares = {}
        for node, reply in self._exchange(grid, messages + self._alone(alone, "query.secagg_shares", following)
                                          + self._alone(missing, "query.secagg_keys", following)).items():
            if reply.metadata.message_type == "query.secagg_shares":
                following.add_shares(node, _record(reply, "secagg"))
                continue
            if reply.metadata.message_type == "query.secagg_keys":
                self._add_keys(following, node, reply, registry)
                continue
            if upcoming and node in following.keys:
                following.add_shares(node, _record(reply, NEXT))
            try:
                secagg = reply.content["secagg"]
                about, values = [int(a) for a in secagg["about"]], [bytes(v) for v in secagg["share"]]
            except (KeyError, TypeError, ValueError):
                continue
            if about == sharers and len(values) == len(about):
                shares[node] = dict(zip(about, values))
        return shares

    def _nodes(self, grid, server_round: int) -> list[int]:
        """The merchants a round asks: all, or its sample (`fraction-train`, the same whichever round asks)."""
        nodes = sorted(grid.get_node_ids())
        if self.run.fraction_train < 1:
            nodes = sorted(random.Random(self.run.seed * 7919 + server_round).sample(
                nodes, max(1, round(self.run.fraction_train * len(nodes)))))
        return nodes

    def _add_keys(self, setup: "_Setup", node: int, reply: Message, registry: MerchantRegistry, *,
                  record: str = "secagg") -> None:
        """A merchant's public keys and customers for `setup`'s round: stage 1's reply (`secagg` and `metrics`), or
        the `next` record beside a masked step; a refusal or an impossible count is noted in the round's row."""
        setup.answered.add(node)
        try:
            keys = reply.content[record]
            counted = keys if record == NEXT else reply.content["metrics"]
            count = int(counted["num-examples"])
            accounting = float(counted.get("accounting-seconds", 0.0))
            public = (bytes(keys["pk-cipher"]), bytes(keys["pk-mask"]))
        except (KeyError, TypeError, ValueError):
            why = str(_record(reply, NEXT).get("refused", "no keys"))[:300] if record == NEXT else _why(reply)
            setup.row.setdefault("refused", {})[registry.label(reply)] = why
            return
        if not 1 <= count <= self.run.max_examples:
            setup.row.setdefault("rejected", {})[registry.label(reply)] = f"declared {count} customers"
            return
        setup.keys[node], setup.counts[node] = public, count
        setup.accounting.append(accounting)
        registry.label(reply)

    def _alone(self, nodes: list[int], message_type: str, setup: "_Setup | None") -> list[Message]:
        """The next round's stage for merchants that take no part in this round's stage (their own message)."""
        if not nodes or setup is None:
            return []
        config = setup.keyed if message_type == "query.secagg_shares" else setup.config
        return [Message(RecordDict({"config": ConfigRecord(config)}), dst_node_id=n, message_type=message_type,
                        group_id=str(setup.round)) for n in nodes]

    def _step(self, gradient: np.ndarray) -> dict[str, np.ndarray]:
        offset = 0
        for name, param in zip(self.names, self.params):
            size = param.numel()
            param.grad = torch.from_numpy(gradient[offset:offset + size].astype(np.float32)).view_as(param)
            offset += size
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {name: param.detach().numpy().copy() for name, param in zip(self.names, self.params)}

    def _send(self, grid, nodes, message_type: str, config: dict, group: str) -> dict[int, Message]:
        return self._exchange(grid, [Message(content=RecordDict({"config": ConfigRecord(config)}), dst_node_id=n,
                                             message_type=message_type, group_id=group) for n in nodes])

    def _exchange(self, grid, messages: list[Message]) -> dict[int, Message]:
        """Each merchant's reply (one message each), leaving out errors and empty replies."""
        replies = {}
        for reply in send_and_receive(grid, messages, timeout=self.run.round_timeout):
            if not reply.has_error() and reply.has_content():
                replies[int(reply.metadata.src_node_id)] = reply
        return replies

    @staticmethod
    def _discard(out: SecureRound, why: str, started: float) -> SecureRound:
        log.warning("secure round discarded: %s; the global model is unchanged", why)
        out.row.update(aggregated=False, discarded=why, **{"seconds-secure-round": time.perf_counter() - started})
        return out


@dataclass
class _Setup:
    """A round's secure sum up to its masked step: the parties' keys and customers (stage 1), then the plan and the
    shares routed to each party (stage 2), made in the round itself or beside the previous round's stages."""

    round: int
    config: dict  # the run's settings and this round's number
    length: int  # of the summed vector
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    accounting: list[float] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)  # merchants asked for keys that answered, with keys or a refusal
    row: dict = field(default_factory=dict)  # merchants refused or rejected at the keys, for the round's row
    plan: SumPlan | None = None
    share: float = 0.0
    keyed: dict = field(default_factory=dict)
    routed: dict[int, dict[int, bytes]] = field(default_factory=dict)
    sharers: list[int] | None = None

    @property
    def parties(self) -> list[int]:
        return sorted(self.keys)

    def plan_from_keys(self, run: RunConfig) -> str | None:
        """Set the plan from the keys that came, or say why the round cannot go on."""
        parties = self.parties
        needed = max(2, run.min_replies, run.min_survivors)
        if len(parties) < needed:
            return f"{len(parties)} merchants sent keys, the round needs {needed}"
        min_survivors = run.min_survivors or len(parties)
        self.share = noise_share(run.distributed_noise(), min_survivors=min_survivors, colluders=run.colluders)
        self.plan = SumPlan(parties=tuple(parties), threshold=max(len(parties) // 2 + 1, run.colluders + 1),
                            min_survivors=min_survivors, length=self.length,
                            bound=value_bound(max_grad_norm=run.max_grad_norm, max_users=max(self.counts.values()),
                                              share=self.share))
        self.keyed = {**self.config, **self.plan.to_config(), "secagg.pk-cipher": [self.keys[p][0] for p in parties],
                      "secagg.pk-mask": [self.keys[p][1] for p in parties]}
        if not self.plan.recovers:  # a sum of every party: no secrets shared, every party masks with every other
            self.routed, self.sharers = {p: {} for p in parties}, parties
        return None

    def start_shares(self) -> None:
        self.routed, self.sharers = {p: {} for p in self.parties}, []

    def add_shares(self, node: int, secagg) -> None:
        """One merchant's encrypted shares, routed, when they are addressed to exactly the other parties."""
        try:
            to, ciphertexts = [int(t) for t in secagg["to"]], [bytes(c) for c in secagg["ciphertext"]]
        except (KeyError, TypeError, ValueError):
            return
        if node not in self.routed or sorted(to) != [p for p in self.parties if p != node] or len(ciphertexts) != len(to):
            return
        for dst, ciphertext in zip(to, ciphertexts):
            self.routed[dst][node] = ciphertext
        self.sharers.append(node)
        self.sharers.sort()


def _record(reply: Message, name: str):
    """A reply's config record by name, or an empty one."""
    try:
        return reply.content[name]
    except (KeyError, TypeError):
        return {}


def _why(reply: Message) -> str:
    try:
        return str(reply.content["merchant"]["refused"])[:300] or "no keys"
    except (KeyError, TypeError):
        return "malformed reply"

