"""DP cost: users per second of DP-SGD (Opacus, ghost clipping) vs plain training, same model and batch.

Both are measured side by side in one run, alternating, on random sequences over a catalogue of each size
(every user fills the window), or, with --data, as `fedprofile train --data PATH --format F --epochs 1` with the
command's defaults, with and without --dp (real histories of every length). Repeat:
    python bench/dp_cost.py --items 12000 100000 --batch-size 256 --steps 6
    python bench/dp_cost.py --data ../shared/data/amazon-beauty --format amazon
    python bench/dp_cost.py --data ../shared/data/amazon-beauty --format amazon --device cuda   # on a GPU
    python bench/dp_cost.py --items 12000 --steps 4 --clipping one-pass two-pass --breakdown [--set fixed_item_vectors=true]
`--clipping one-pass two-pass` measures the clipped gradient formed from the first backward pass (book-keeping,
the default) beside Opacus' second pass; `--breakdown` splits a DP step's time into the first (per-customer
norms) pass, the second pass and the rest (forward, noise, optimizer); `--set` changes a ProfileConfig field.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shared_model.device import pick_device
from shared_model.features import build_sequences
from shared_model.model import ProfileConfig, ProfileTransformer
from shared_model.privacy import PrivacyConfig
from shared_model.training import TrainConfig, train


def synthetic_catalogue_log(num_items: int, num_users: int, length: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = num_users * length
    items = rng.zipf(1.2, n) % num_items
    items[:num_items] = np.arange(num_items)  # every catalogue item appears
    return pd.DataFrame({
        "user_id": np.repeat(np.arange(num_users), length).astype(str),
        "item_id": items.astype(str),
        "category_id": (items % 200).astype(str),
        "behavior": rng.choice([1, 1, 1, 2, 4], n).astype(np.int8),
        "timestamp": 1_511_568_000 + np.tile(np.arange(length), num_users) * 60,
        "price": rng.uniform(1, 100, n),
        "brand": (items % 500).astype(str),
    })


@contextlib.contextmanager
def backward_passes(seconds: dict[str, float]):
    """Time every autograd backward call, by kind: ghost clipping's first pass names the layer outputs it stops
    at (`inputs=`, shared_model/ghost_clipping.py); its second pass and plain training's name none."""
    real = torch.autograd.backward

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            kind = "norms pass" if kwargs.get("inputs") is not None else "clipped pass"
            seconds[kind] += time.perf_counter() - started

    torch.autograd.backward = timed
    try:
        yield
    finally:
        torch.autograd.backward = real


def users_per_second(data, config, *, dp: bool, batch_size: int, steps: int, device: torch.device,
                     one_pass: bool = True) -> float:
    users = batch_size * steps
    torch.manual_seed(0)
    model = ProfileTransformer(config, data.catalogue.descriptors)
    sub = type(data)(catalogue=data.catalogue, train=_head(data.train, users), valid=_head(data.valid, 8),
                     test=_head(data.test, 8), spec=data.spec, max_len=data.max_len)
    privacy = PrivacyConfig(target_epsilon=8.0, target_delta=1e-5, one_pass_clipping=one_pass) if dp else None
    result = train(model, sub, TrainConfig(epochs=1, batch_size=batch_size, negatives=1024, eval_every=0,
                                           keep_best=False, show_progress=False),
                   privacy=privacy, evaluate_test=False, device=device)
    return result.examples_per_second


def _head(seq, n):
    from shared_model.features import SequenceSet

    return SequenceSet(events={k: v[:n] for k, v in seq.events.items()}, genders=seq.genders[:n], ages=seq.ages[:n],
                       lengths=seq.lengths[:n], user_ids=seq.user_ids[:n],
                       target_items=None if seq.target_items is None else seq.target_items[:n],
                       target_categories=None if seq.target_categories is None else seq.target_categories[:n],
                       target_purchase=None if seq.target_purchase is None else seq.target_purchase[:n],
                       history=None if seq.history is None else seq.history[:n])


def command_users_per_second(data: str, fmt: str, *, dp: bool, device: torch.device) -> float:
    """Users per second of one epoch of `fedprofile train` with its defaults (and --dp), from its metrics.json."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "fedprofile", "train", "--data", data, "--format", fmt, "--epochs", "1",
                        "--out", out, "--device", str(device), "--dp" if dp else "--no-dp"], check=True,
                       stdout=subprocess.DEVNULL)
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    return float(metrics["examples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[12_000, 100_000])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/DP repetitions")
    parser.add_argument("--data", help="real data: time `fedprofile train` on it instead")
    parser.add_argument("--format", help="its format (with --data)")
    parser.add_argument("--clipping", nargs="+", choices=["one-pass", "two-pass"], default=["one-pass"],
                        help="ghost clipping's clipped gradient: formed in the first pass (the default), or by "
                             "Opacus' second backward pass; several are measured side by side")
    parser.add_argument("--breakdown", action="store_true", help="split DP steps' time into its two backward passes")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a ProfileConfig field for the synthetic catalogues (JSON value), repeatable")
    parser.add_argument("--device", default="cpu", help="cpu (the recorded figures), cuda, or auto (cuda when present)")
    args = parser.parse_args()
    device = pick_device(None if args.device == "auto" else args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {name}")
    if args.data:
        plain, private = [], []
        for _ in range(args.rounds):
            plain.append(command_users_per_second(args.data, args.format, dp=False, device=device))
            private.append(command_users_per_second(args.data, args.format, dp=True, device=device))
        p, d = max(plain), max(private)
        print(f"fedprofile train --epochs 1 on {args.data}: plain {p:.1f} users/s, --dp {d:.1f} users/s, "
              f"DP/plain {d / p:.2f} (best of {args.rounds}; each {plain}, {private})")
        print("repeat: python " + " ".join(sys.argv))
        return
    try:
        config = ProfileConfig(**{k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)})
    except (ValueError, TypeError) as error:
        parser.error(f"--set takes FIELD=VALUE with a ProfileConfig field and a JSON value: {error}")
    for num_items in args.items:
        length = config.max_len + 3
        users = max(args.batch_size * args.steps + 16, -(-num_items // length) + 16)  # every item appears
        log = synthetic_catalogue_log(num_items, users, length)
        data = build_sequences(log, pd.DataFrame(columns=["user_id", "gender", "age", "region"]), config.hash_spec,
                               max_len=config.max_len)
        plain: list[float] = []
        private: dict[str, list[float]] = {mode: [] for mode in args.clipping}
        passes: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):  # alternately, so that the machine's drift falls on every column alike
            plain.append(users_per_second(data, config, dp=False, batch_size=args.batch_size, steps=args.steps,
                                          device=device))
            for mode in args.clipping:
                passes[mode] = defaultdict(float)  # the last round's, for --breakdown
                with backward_passes(passes[mode]) if args.breakdown else contextlib.nullcontext():
                    private[mode].append(users_per_second(data, config, dp=True, batch_size=args.batch_size,
                                                          steps=args.steps, device=device,
                                                          one_pass=mode == "one-pass"))
        p = max(plain)
        print(f"catalogue {num_items:>7} items: plain {p:7.1f} users/s (best of {args.rounds}: {plain}; batch "
              f"{args.batch_size}, 1024 negatives)")
        for mode in args.clipping:
            d = max(private[mode])
            print(f"  DP-SGD, {mode} clipping: {d:7.1f} users/s, DP/plain {d / p:.2f} ({private[mode]})")
            if args.breakdown:  # the last round's DP call, per step
                step, plain_step = args.batch_size / private[mode][-1], args.batch_size / plain[-1]
                first, second = passes[mode]["norms pass"] / args.steps, passes[mode]["clipped pass"] / args.steps
                print(f"    a step of {args.batch_size}: plain {plain_step:.3f} s; DP {step:.3f} s = norms pass "
                      f"{first:.3f} + second pass {second:.3f} + forward, noise, optimizer, the rest "
                      f"{step - first - second:.3f}")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
