"""Many merchants on Flower's simulation engine: round time, Flower's share of it, and memory per merchant.

Issue 19, item 5. Small synthetic shops (40 customers each, a narrow model, local DP-SGD, no evaluation rounds)
so that what grows with the merchant count is the engine's, not the model's. Per count: the mean of rounds
2..R, the merchants' own training (each reports its train-seconds; Ray runs as many at once as its CPU shares allow), and
Flower's share = 1 - (sum of training / merchants at once) / round seconds; memory is the proportional set size (PSS: shared
pages split between the processes that share them) of this process and every process under it (Ray's raylet,
workers and actors), from /proc, sampled every half second, before the simulation starts and at its peak:
the growth of the peak from the fewest merchants to the most, per added merchant, is what one more simulated
merchant costs (Ray's own processes and its actors are there at any count; Linux only). Repeat:
    python bench/simulation_scale.py --merchants 8 32 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_model.run_config import RunConfig  # noqa: E402
from simulations.simulate import backend_config, run_simulation  # noqa: E402


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_pss() -> int:
    """Bytes of this process and all its descendants, each shared page split between its sharers."""
    total = 0
    for pid in _descendants(os.getpid()):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total


class PeakMemory:
    def __init__(self, every: float = 0.5):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss())
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(count: int, rounds: int, out: Path) -> dict:
    run = RunConfig(privacy="local", num_rounds=rounds, synthetic_users=40, max_len=20, d_model=32, profile_dim=32,
                    n_heads=1, n_layers=1, item_buckets=4096, negatives=64, batch_size=32, local_epochs=1,
                    fraction_evaluate=0.0, min_replies=2, run_dir=str(out / f"merchants-{count}"))
    before = tree_pss()
    started = time.perf_counter()
    with PeakMemory() as memory:
        result = run_simulation(run, count)
    wall = time.perf_counter() - started
    later = result.history[1:] or result.history
    # Ray runs as many merchants at once as its cores hold merchants' CPU shares (simulations/simulate.py)
    cores = max(1, (os.cpu_count() or 1) // backend_config(count)["client_resources"]["num_cpus"])
    round_seconds = sum(r["seconds"] for r in later) / len(later)
    training = sum(sum(r.get("local-train-seconds", {}).values()) for r in later) / len(later)
    return {"merchants": count, "round_seconds": round_seconds, "training_seconds_sum": training,
            "flower_share": max(0.0, 1 - training / cores / round_seconds), "at_once": cores,
            "trained": [len(r.get("merchants-trained", [])) for r in result.history],
            "memory_before_mb": before / 2**20, "memory_peak_mb": memory.peak / 2**20,
            "memory_per_merchant_mb": (memory.peak - before) / 2**20 / count, "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/simulation-scale")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    rows = []
    for count in args.merchants:
        row = measure(count, args.rounds, out)
        rows.append(row)
        print(f"{count:>3} merchants: round {row['round_seconds']:.1f} s, merchants' training {row['training_seconds_sum']:.1f} "
              f"s summed, {row['at_once']} at once, Flower's share {row['flower_share']:.0%}; memory "
              f"{row['memory_before_mb']:.0f} -> peak {row['memory_peak_mb']:.0f} MB, "
              f"{row['memory_per_merchant_mb']:.1f} MB per merchant; trained per round {row['trained']}; "
              f"{row['wall_seconds']:.0f} s in all", flush=True)
    if len(rows) > 1:  # what one more merchant costs, Ray's own processes and the first actor set aside
        first, last = rows[0], rows[-1]
        slope = (last["memory_peak_mb"] - first["memory_peak_mb"]) / (last["merchants"] - first["merchants"])
        print(f"memory per added merchant, {first['merchants']} -> {last['merchants']}: {slope:.1f} MB")
        rows.append({"memory_per_added_merchant_mb": slope})
    command = "python " + " ".join(sys.argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"rows": rows, "command": command,
                                                  "machine": {"platform": platform.platform(),
                                                              "cores": os.cpu_count()}}, indent=2))
    print(f"repeat: {command}")


if __name__ == "__main__":
    main()
