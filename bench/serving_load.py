"""On-site service load: Recommend and GetProfile latency (p50/p99) and throughput over gRPC, 100k-item catalogue.

Starts `fedprofile merchant serve` (its own process) on 127.0.0.1 over a synthetic shop with a 100,000-item
catalogue and a published model (random weights: latency does not depend on what the weights learned), then
drives it from an asyncio gRPC client at concurrency 1 and 32. Also measures how long a streamed event takes
to show in the customer's profile. Repeat:
    python bench/serving_load.py                  # 100k items, 2,000 customers
    python bench/serving_load.py --items 12000 --requests 1000
    python bench/serving_load.py --during-training    # Recommend at concurrency 1 idle, then beside DP training
With --during-training a DP-SGD training (`fedprofile train --dp` on the built-in shops, in its own process with
the torch threads a merchant daemon's round worker gets by default: half the cores) runs while Recommend is
measured again at concurrency 1: what serving costs while a merchant trains (issue 19).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def python_path() -> str:
    """The checkout first, then whatever PYTHONPATH already names (the GPU check's carried packages)."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(ROOT))


async def _drive(port: int, users: list[str], *, rpc: str, concurrency: int, requests: int) -> dict:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from client.onsite.proto import merchant_pb2 as pb
    from client.onsite.proto import merchant_pb2_grpc as pb_grpc

    latencies: list[float] = []
    failures = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.MerchantProfilesStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        for user in users[:20]:  # warm-up
            await stub.Recommend(pb.RecommendRequest(user_id=user, k=10))
        remaining = requests
        rng = random.Random(0)

        async def worker():
            nonlocal remaining, failures
            while remaining > 0:
                remaining -= 1
                user = rng.choice(users)
                started = time.perf_counter()
                try:
                    if rpc == "Recommend":
                        await stub.Recommend(pb.RecommendRequest(user_id=user, k=10))
                    elif rpc == "GetProfile":
                        await stub.GetProfile(pb.ProfileRequest(user_id=user))
                    else:  # the floor: a health check does no work of ours on the same server and client
                        await health.Check(health_pb2.HealthCheckRequest())
                    latencies.append(time.perf_counter() - started)
                except grpc.RpcError:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"rpc": rpc, "concurrency": concurrency, "requests": len(ms), "failures": failures,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "rps": len(ms) / wall}


async def _freshness(port: int, user: str, item: str, category: str, last: int, tries: int = 20) -> list[float]:
    """Seconds from sending one event until GetProfile shows it (the stream returns after the update)."""
    import grpc

    from client.onsite.proto import merchant_pb2 as pb
    from client.onsite.proto import merchant_pb2_grpc as pb_grpc

    out = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.MerchantProfilesStub(channel)
        before = (await stub.GetProfile(pb.ProfileRequest(user_id=user))).profile.events
        for i in range(tries):
            started = time.perf_counter()
            await stub.IngestEvents(iter([pb.Event(user_id=user, item_id=item, category_id=category, behavior="view",
                                                   timestamp=str(last + 60 * (i + 1)))]))
            profile = (await stub.GetProfile(pb.ProfileRequest(user_id=user))).profile
            out.append(time.perf_counter() - started)
            assert profile.events == before + i + 1, "the streamed event is not in the profile"
    return out


def scoring_bound(items: int, dim: int, *, batch: int = 32, k: int = 20, seconds: float = 3.0) -> float:
    """Recommendations a second that the scoring alone allows (no gRPC, no reasons): batches of `batch` profile
    vectors against an (items, dim) matrix, one matrix product and `torch.topk` each, as `BatchedTopK` does
    (k = 20: ten recommendations plus the bought items left out)."""
    import torch

    matrix = torch.randn(items, dim)
    queries = torch.randn(batch, dim)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.topk(queries @ matrix.T, k, dim=1)
        done += batch
    return done / (time.perf_counter() - started)


def _during_training(port: int, users: list[str], tmp: Path, requests: int) -> None:
    """Recommend at concurrency 1 idle, then while `fedprofile train --dp` runs with half the cores' threads."""
    from client.daemon import default_train_threads

    threads = default_train_threads()
    idle = asyncio.run(_drive(port, users, rpc="Recommend", concurrency=1, requests=requests))
    trainer = subprocess.Popen([sys.executable, "-m", "fedprofile", "train", "--out", str(tmp / "train"), "--dp",
                                "--epochs", "1000"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": str(threads)})
    try:
        time.sleep(20)  # past loading: training steps are running
        if trainer.poll() is not None:
            raise SystemExit("the training beside the service exited early")
        busy = asyncio.run(_drive(port, users, rpc="Recommend", concurrency=1, requests=requests))
    finally:
        trainer.kill()
        trainer.wait()
    print(f"\nRecommend, concurrency 1, {requests} requests: idle p50 {idle['p50_ms']:.2f} / p99 {idle['p99_ms']:.2f} ms; "
          f"beside DP training with {threads} of {os.cpu_count()} cores' threads p50 {busy['p50_ms']:.2f} / "
          f"p99 {busy['p99_ms']:.2f} ms ({busy['failures']} failed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    parser.add_argument("--during-training", action="store_true",
                        help="only Recommend at concurrency 1: idle, then while a DP training runs beside it")
    args = parser.parse_args()

    import torch

    from shared_model.checkpoint import save_global_model
    from shared_model.data.loaders import load_events
    from shared_model.data.synthetic import SyntheticConfig, generate, write
    from shared_model.model import ProfileConfig
    from shared_model.shared_weights import initial_shared_state

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; server and load "
          "client share the cores")
    bound = scoring_bound(args.items, ProfileConfig().profile_dim)
    print(f"scoring alone, in this process with {torch.get_num_threads()} threads (batches of 32, no gRPC): "
          f"{bound:.0f} recommendations/s over {args.items} items")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        write(generate(SyntheticConfig(merchants=1, users_per_merchant=args.users, items_per_merchant=args.items)),
              tmp / "data")
        data = tmp / "data" / "merchant-0"
        log = load_events(data, "synthetic")
        config = ProfileConfig()
        save_global_model(tmp / "models" / "v0001", config, initial_shared_state(config, seed=0),
                          {"version": 1, "run_id": "bench"})
        (tmp / "models" / "LATEST").write_text("v0001")
        print(f"shop: {log.summary.users} customers, {args.items} catalogue items "
              f"({log.summary.items} with events), {log.summary.rows_accepted} events; set up in "
              f"{time.perf_counter() - started:.0f}s")
        from shared_model.processes import free_port

        port = free_port()
        serve_log = open(tmp / "serve.log", "w")
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedprofile", "merchant", "serve", "--model", str(tmp / "models"), "--data",
             str(data), "--format", "synthetic", "--grpc-port", str(port), "--store", str(tmp / "store.sqlite"),
             "--watch", "0"], cwd=ROOT, stdout=serve_log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": python_path()})
        try:
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit("service exited:\n" + (tmp / "serve.log").read_text()[-3000:])
                time.sleep(0.5)
            print(f"service up (profiles for every customer built) in {time.perf_counter() - started:.0f}s")
            users = list(log.events["user_id"].unique())
            catalogue_items = len(log.events["item_id"].unique())
            if args.during_training:
                _during_training(port, users, tmp, args.requests)
                return
            rows = []
            for rpc in ("Recommend", "GetProfile", "Health"):
                for concurrency in (1, 32):
                    rows.append(asyncio.run(_drive(port, users, rpc=rpc, concurrency=concurrency,
                                                   requests=args.requests)))
            print(f"\n{'rpc':<11} {'concurrency':>11} {'requests':>8} {'failed':>6} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7}")
            for r in rows:
                print(f"{r['rpc']:<11} {r['concurrency']:>11} {r['requests']:>8} {r['failures']:>6} "
                      f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['rps']:>7.0f}")
            row = log.events.iloc[0]
            fresh = asyncio.run(_freshness(port, str(row["user_id"]), str(row["item_id"]), str(row["category_id"]),
                                           int(log.events["timestamp"].max())))
            print(f"\nevent -> updated profile (IngestEvents then GetProfile), 20 tries: median "
                  f"{np.median(fresh) * 1000:.0f} ms, max {max(fresh) * 1000:.0f} ms")
            print(f"catalogue scored per Recommend: {args.items} generated items ({catalogue_items} seen in events)")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            serve_log.close()
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
