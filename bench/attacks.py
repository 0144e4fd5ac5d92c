"""One malicious merchant of five: NDCG@10 lost against the same federation with no attacker, under the
default defences (update-norm-bound 1, min-update-cosine 0) and with them off.

Five built-in synthetic shops, no DP, the run-config defaults otherwise (5 rounds x 4 local epochs, FedAvg),
run in process (the real ClientApp and coordinator, no Ray). Merchant 0 attacks every round:
  scale10   its update x10
  signflip  its update negated
  alie      "a little is enough" (Baruch et al. 2019): mean - z x std of the honest updates, coordinate-wise
            (an omniscient attacker who sees the others' updates; z = 0.25 for 5 merchants, 2 assumed malicious)
  backdoor  trains with every next-item target replaced by one of its items, then scales its update x5
            (model replacement, Bagdasaryan et al. 2020)
Repeat:
    python bench/attacks.py                                  # every attack, defences on (default) and off
    python bench/attacks.py --variants default --only alie   # one attack, one variant
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flwr.app import Array  # noqa: E402

from client.client_app import app as client_app  # noqa: E402
from server.coordinator import run_federation  # noqa: E402
from shared_model.checkpoint import model_for_catalogue  # noqa: E402
from shared_model.device import pick_device  # noqa: E402
from shared_model.merchant_data import simulated_merchants  # noqa: E402
from shared_model.merchant_round import local_round  # noqa: E402
from shared_model.run_config import RunConfig  # noqa: E402
from simulations.inprocess import InProcessGrid  # noqa: E402

ATTACKS = ("scale10", "signflip", "alie", "backdoor")
MERCHANTS = 5
ATTACKER = 1  # node id of merchant-0
ALIE_Z = 0.25  # Phi^-1((n - s) / n) with n = 5, s = floor(n / 2 + 1) - 1 = 2


class AttackGrid(InProcessGrid):
    """Every merchant trains honestly; then the attacker's train reply is replaced by its attack."""

    def __init__(self, run: RunConfig, attack: str | None):
        super().__init__(client_app, MERCHANTS)
        self.config, self.attack = run, attack

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        if self.attack is None or not messages or messages[0].metadata.message_type != "train":
            return replies
        sent = {k: v.numpy().astype(np.float64) for k, v in messages[0].content.array_records["arrays"].items()}
        by_node = {r.metadata.src_node_id: r for r in replies}
        deltas = {node: {k: r.content.array_records["arrays"][k].numpy().astype(np.float64) - sent[k] for k in sent}
                  for node, r in by_node.items() if "arrays" in r.content.array_records}
        own = deltas[ATTACKER]
        if self.attack == "scale10":
            bad = {k: 10.0 * v for k, v in own.items()}
        elif self.attack == "signflip":
            bad = {k: -v for k, v in own.items()}
        elif self.attack == "alie":
            honest = [d for node, d in deltas.items() if node != ATTACKER]
            bad = {k: np.mean([d[k] for d in honest], 0) - ALIE_Z * np.std([d[k] for d in honest], 0) for k in sent}
        else:
            bad = {k: MERCHANTS * v for k, v in self._backdoor(messages, sent).items()}
        arrays = by_node[ATTACKER].content.array_records["arrays"]
        for key, delta in bad.items():
            arrays[key] = Array((sent[key] + delta).astype(arrays[key].numpy().dtype))
        return replies

    def _backdoor(self, messages, sent) -> dict[str, np.ndarray]:
        """The attacker's own round on poisoned data: every training target is its most popular item."""
        merchant = simulated_merchants(self.config, MERCHANTS)[0]
        data = merchant.sequences
        targets = data.train.target_items.clone()
        target_item = int(torch.mode(targets[targets > 0]).values)
        targets[targets > 0] = target_item
        poisoned = replace(data, train=replace(data.train, target_items=targets))
        server_round = int(messages[0].content.config_records["config"]["server-round"])
        model = model_for_catalogue(self.config.model_config(), {k: torch.from_numpy(v.astype(np.float32))
                                                              for k, v in sent.items()}, data.catalogue)
        update = local_round(model, poisoned, self.config, ledger_state=None, server_round=server_round,
                             device=pick_device())
        return {k: v.numpy().astype(np.float64) - sent[k] for k, v in update.shared_state.items()}


def one_run(run: RunConfig, attack: str | None, out: Path) -> dict:
    started = time.perf_counter()
    result = run_federation(AttackGrid(run, attack), run.replace(run_dir=str(out)))
    clipped = [sorted(row.get("clipped", {})) for row in result.history]
    aside = [sorted(k for k, why in row.get("rejected", {}).items() if "points away" in why) for row in result.history]
    merchants = result.history[-1]["merchant-metrics"]  # the honest merchants' test users alone
    honest = {name: m for name, m in merchants.items() if not name.startswith("merchant-0")}
    users = sum(m["num-examples"] for m in honest.values())
    return {"ndcg@10": result.final["ndcg@10"], "hr@10": result.final["hr@10"], "seconds": time.perf_counter() - started,
            "honest_ndcg@10": sum(m["ndcg@10"] * m["num-examples"] for m in honest.values()) / users,
            "clipped": clipped, "set_aside": aside,
            "by_round": [round(row.get("ndcg@10", float("nan")), 4) for row in result.history]}


VARIANTS = {"default": {}, "off": {"update_norm_bound": 0.0, "min_update_cosine": -1.0},
            "bound3": {"update_norm_bound": 3.0}}  # the default clips updates to 1 x the median norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/attacks")
    parser.add_argument("--only", nargs="*", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--users", type=int, default=500, help="customers per shop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    # plain FedAvg rounds (each merchant's update is what an attacker forges): 5 rounds x 4 local epochs, as measured
    base = RunConfig(dp=False, privacy="local", num_rounds=5, local_epochs=4, synthetic_users=args.users,
                     seed=args.seed, min_replies=1)
    rows = {}
    for variant in args.variants:
        run = base.replace(**VARIANTS[variant])
        clean = rows[f"{variant}/none"] = one_run(run, None, out / variant / "none")
        print(f"[{variant}] no attacker: NDCG@10 {clean['ndcg@10']:.4f} (honest merchants' users alone "
              f"{clean['honest_ndcg@10']:.4f}; {clean['seconds']:.0f} s)", flush=True)
        for attack in args.only:
            row = rows[f"{variant}/{attack}"] = one_run(run, attack, out / variant / attack)
            row["loss"] = 1 - row["ndcg@10"] / clean["ndcg@10"]
            row["honest_loss"] = 1 - row["honest_ndcg@10"] / clean["honest_ndcg@10"]
            print(f"[{variant}] {attack:9s}: NDCG@10 {row['ndcg@10']:.4f}, loss {row['loss']:+.1%} (the honest "
                  f"merchants' users alone {row['honest_loss']:+.1%}) "
                  f"(by round {row['by_round']}; clipped {sum(map(len, row['clipped']))}, set aside "
                  f"{sum(map(len, row['set_aside']))} replies; {row['seconds']:.0f} s)", flush=True)
    summary = {"merchants": MERCHANTS, "attacker": "merchant-0", "users_per_shop": args.users, "seed": args.seed,
               "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "runs": rows,
               "command": "python bench/attacks.py " + " ".join(sys.argv[1:])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "attacks.json").write_text(json.dumps(summary, indent=1))
    print(f"written {out / 'attacks.json'}; repeat: {summary['command']}")


if __name__ == "__main__":
    main()
