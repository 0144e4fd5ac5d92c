"""Peak memory and speed of loading a large event file: 1 million rows of the generic CSV format.

Writes the file once (about 50 MB, in --dir), then loads it in a fresh process and prints that process's peak
resident memory (with the interpreter and pandas it holds), rows per second and the row accounting. Target:
under ~300 MB for 1 million rows. Repeat:
    python bench/loader_memory.py
    python bench/loader_memory.py --rows 200000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
import pandas  # noqa: F401  (counted in the floor below)
from shared_model.data.loaders import load_events
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
log = load_events(sys.argv[1], "events")
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = log.summary
print(json.dumps({"peak_mb": peak / 1024, "floor_mb": floor / 1024, "seconds": seconds, "rows_read": s.rows_read,
                  "accepted": s.rows_accepted, "duplicates": s.duplicates, "quarantined": s.rows_quarantined,
                  "balanced": s.is_balanced(), "frame_mb": log.events.memory_usage(deep=True).sum() / 2**20}))
"""


def write(path: Path, rows: int) -> None:
    behaviours = ("view", "view", "view", "cart", "fav", "purchase")
    with path.open("w") as out:
        out.write("user_id,item_id,category_id,behavior,timestamp,price,brand\n")
        for i in range(rows):
            user = i // 75
            out.write(f"u{user},i{(i * 7919) % 400_000},c{(i * 31) % 4000},{behaviours[i % 6]},"
                      f"{1511568000 + i % 777_600},{(i % 997) / 10:.2f},b{i % 900}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None, help="where the generated file goes (default: a temporary folder)")
    args = parser.parse_args()
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="fedprofile-loader-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events-{args.rows}.csv"
    if not path.exists():
        write(path, args.rows)
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(ROOT)], capture_output=True, text=True,
                          check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    print(f"{args.rows:,} rows ({path.stat().st_size / 2**20:.0f} MB): peak RSS {figures['peak_mb']:.0f} MB "
          f"(interpreter and pandas alone {figures['floor_mb']:.0f} MB; the cleaned frame {figures['frame_mb']:.0f} MB), "
          f"{figures['rows_read'] / figures['seconds']:,.0f} rows/s; read {figures['rows_read']:,} = accepted "
          f"{figures['accepted']:,} + duplicates {figures['duplicates']:,} + quarantined {figures['quarantined']:,} "
          f"(balanced: {figures['balanced']})")
    print(f"repeat: python bench/loader_memory.py --rows {args.rows}")


if __name__ == "__main__":
    main()
