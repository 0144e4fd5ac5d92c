"""The coordinator's side of a distributed-DP round: the secure sum's four messages, then one server optimizer step."""

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
from shared_model.secure_sum import SecureSumError, SumPlan, decode, unmasked_sum

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
        """The four stages; `evaluation` ((round, published record or None), shared_model/evaluation_request.py)
        rides on the training stage's messages (its replies come back in `evaluation_replies`)."""
        run, out, started = self.run, SecureRound(None), time.perf_counter()
        group = str(server_round)
        config = {**settings, "server-round": server_round}
        nodes = sorted(grid.get_node_ids())
        if run.fraction_train < 1:
            nodes = sorted(random.Random(run.seed * 7919 + server_round).sample(
                nodes, max(1, round(run.fraction_train * len(nodes)))))
        # 1. keys (and each merchant's count of customers: the gradient's denominator; counts are not private)
        replies = self._send(grid, nodes, "query.secagg_keys", config, group)
        keys, counts, accounting = {}, {}, []
        for node, reply in replies.items():
            try:
                secagg = reply.content["secagg"]
                count = int(reply.content["metrics"]["num-examples"])
                accounting.append(float(reply.content["metrics"].get("accounting-seconds", 0.0)))
                keys[node] = (bytes(secagg["pk-cipher"]), bytes(secagg["pk-mask"]))
            except (KeyError, TypeError, ValueError):
                out.row.setdefault("refused", {})[registry.label(reply)] = _why(reply)
                continue
            if not 1 <= count <= run.max_examples:
                out.row.setdefault("rejected", {})[registry.label(reply)] = f"declared {count} customers"
                keys.pop(node)
                continue
            counts[node] = count
            registry.label(reply)
        parties = sorted(keys)
        needed = max(2, run.min_replies, run.min_survivors)
        if len(parties) < needed:
            return self._discard(out, f"{len(parties)} merchants sent keys, the round needs {needed}", started)
        min_survivors = run.min_survivors or len(parties)
        share = noise_share(run.distributed_noise(), min_survivors=min_survivors, colluders=run.colluders)
        plan = SumPlan(parties=tuple(parties), threshold=max(len(parties) // 2 + 1, run.colluders + 1),
                       min_survivors=min_survivors, length=self.length,
                       bound=value_bound(max_grad_norm=run.max_grad_norm, max_users=max(counts.values()), share=share))
        keyed = {**config, **plan.to_config(), "secagg.pk-cipher": [keys[p][0] for p in parties],
                 "secagg.pk-mask": [keys[p][1] for p in parties]}
        # 2. encrypted shares, routed
        replies = self._send(grid, parties, "query.secagg_shares", keyed, group)
        routed: dict[int, dict[int, bytes]] = {p: {} for p in parties}
        sharers = []
        for node, reply in replies.items():
            try:
                secagg = reply.content["secagg"]
                to, ciphertexts = [int(t) for t in secagg["to"]], [bytes(c) for c in secagg["ciphertext"]]
            except (KeyError, TypeError, ValueError):
                continue
            if sorted(to) != [p for p in parties if p != node] or len(ciphertexts) != len(to):
                continue
            for dst, ciphertext in zip(to, ciphertexts):
                routed[dst][node] = ciphertext
            sharers.append(node)
        sharers.sort()
        if len(sharers) < plan.min_survivors:
            return self._discard(out, f"{len(sharers)} merchants shared keys, fewer than {plan.min_survivors}", started)
        out.row["secure-sum-seconds"] = time.perf_counter() - started  # stages 1 and 2, less accounting below
        # 3. masked noised gradient sums
        train_started = time.perf_counter()
        messages = {}
        for node in sharers:
            senders = [s for s in sharers if s != node]
            content = {**keyed, "secagg.sharers": sharers, "secagg.from": senders,
                       "secagg.ciphertext": [routed[node][s] for s in senders]}
            messages[node] = RecordDict({"arrays": array_record(arrays), "config": ConfigRecord(content)})
        replies = self._send(grid, sharers, "train.distributed", None, group, contents=messages, evaluation=evaluation)
        out.evaluation_replies = list(replies.values())
        masked, merchant_seconds, mask_seconds = {}, [], []
        for node, reply in replies.items():
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
        out.row["accounting-seconds"] = sum(accounting) if self.sequential else max(accounting, default=0.0)
        survivors = sorted(masked)
        out.row["merchants-trained"] = [registry.labels[n] for n in survivors]
        if len(survivors) < plan.min_survivors:  # the merchants that sent have paid; nothing is unmasked
            return self._discard(out, f"{len(survivors)} vectors arrived, fewer than {plan.min_survivors}", started)
        # 4. unmask
        unmask_started = time.perf_counter()
        dropped = [p for p in sharers if p not in masked]
        replies = self._send(grid, survivors, "query.secagg_unmask",
                             {**keyed, "secagg.survivors": survivors, "secagg.dropped": dropped}, group)
        shares = {}
        for node, reply in replies.items():
            try:
                secagg = reply.content["secagg"]
                about, values = [int(a) for a in secagg["about"]], [bytes(v) for v in secagg["share"]]
            except (KeyError, TypeError, ValueError):
                continue
            if about == sharers and len(values) == len(about):
                shares[node] = dict(zip(about, values))
        try:
            total = unmasked_sum(plan, masked=masked, shares=shares, sharers=sharers,
                                 public_keys={p: keys[p] for p in parties})
        except (SecureSumError, ValueError) as exc:
            return self._discard(out, str(exc), started)
        out.row["secure-sum-seconds"] += time.perf_counter() - unmask_started - out.row["accounting-seconds"]
        # one DP-SGD step on the noised mean gradient (the expected batch: rate x customers in the sum)
        self.last_sum = decode(total, plan)  # all the coordinator learns of the merchants' data this round
        expected_batch = run.sample_rate * sum(counts[n] for n in survivors)
        gradient = self.last_sum / expected_batch
        if isinstance(self.optimizer, AdamBC):  # each survivor added N(0, (share x C)^2) per coordinate
            self.optimizer.set_noise_variance(len(survivors) * (share * run.max_grad_norm / expected_batch) ** 2)
        out.arrays = self._step(gradient)
        out.row.update(aggregated=True, dropped=[registry.labels[n] for n in dropped],
                       **{"noise-share": share, "sum-bound": plan.bound, "resolution": plan.resolution})
        out.row["seconds-secure-round"] = time.perf_counter() - started
        return out

    def _step(self, gradient: np.ndarray) -> dict[str, np.ndarray]:
        offset = 0
        for name, param in zip(self.names, self.params):
            size = param.numel()
            param.grad = torch.from_numpy(gradient[offset:offset + size].astype(np.float32)).view_as(param)
            offset += size
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {name: param.detach().numpy().copy() for name, param in zip(self.names, self.params)}

    def _send(self, grid, nodes, message_type: str, config: dict | None, group: str, *,
              contents: dict[int, RecordDict] | None = None,
              evaluation: tuple | None = None) -> dict[int, Message]:
        messages = [Message(content=contents[n] if contents else RecordDict({"config": ConfigRecord(config)}),
                            dst_node_id=n, message_type=message_type, group_id=group) for n in nodes]
        if evaluation is not None:
            ask_evaluation(messages, model_round=evaluation[0], published=evaluation[1])
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


def _why(reply: Message) -> str:
    try:
        return str(reply.content["merchant"]["refused"])[:300] or "no keys"
    except (KeyError, TypeError):
        return "malformed reply"

