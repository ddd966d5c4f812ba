"""Load test of ``fusionrec serve``: p50/p99 latency and requests/s at 1, 8 and 64 concurrent clients.

Without ``--bundle`` it trains a small tabular model first (the quickstart's MMoE and tasks, on a
generated log without the media fields, one epoch) and exports it, all under ``--workdir`` (reused
by later runs). Then, for each runtime and each batching setting, it starts ``fusionrec serve`` in a
subprocess on a free local port and drives it with an asyncio httpx load generator in this process:
each of C clients sends one request after another for ``--duration`` seconds (after a one-second
warm-up that is not counted). Every request is one user x ``--candidates`` items: ``POST /score`` on
those rows and ``POST /recommend`` for the top 10 of them. Batching settings:

- ``batched``: the defaults, ``--max-batch-rows 1024 --max-wait-ms 0`` (requests that queued up
  during a model run share the next one);
- ``wait-2ms`` (only with ``--settings``): ``--max-wait-ms 2``, a run waits up to 2 ms for company;
- ``unbatched``: ``--max-batch-rows`` equal to one request's rows, so every model run serves one request.

The last column, rows per model run, comes from the service's ``/healthz`` counters.

    .venv/bin/python benchmarks/serve_load.py                       # ~3 min on a 2-core machine
    .venv/bin/python benchmarks/serve_load.py --runtimes onnx --duration 3 --endpoints score   # ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

REPO = Path(__file__).parents[1]
# None: --max-batch-rows = the rows of one request, so every model run serves one request.
SETTINGS = {"batched": [], "wait-2ms": ["--max-wait-ms", "2"], "unbatched": None}


def train_and_export(workdir: Path) -> Path:
    """The quickstart's model without its media fields, one epoch on a generated 50,000-row log."""
    bundle = workdir / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    for field in ("item_title", "item_image", "item_audio"):
        config["data"]["features"].pop(field, None)
    config["model"].pop("encoders", None)
    config["data"]["generate"] = {"rows": 50_000, "users": 5_000, "items": 3_000, "seed": 0}
    config["trainer"] = {"max_epochs": 1, "logger": False, "enable_progress_bar": False,
                         "enable_model_summary": False}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    environment = {**os.environ, "FUSIONREC_CACHE_DIR": str(workdir / "cache")}
    fusionrec = [sys.executable, "-m", "fusionrec.cli"]
    subprocess.run([*fusionrec, "fit", "--config", str(workdir / "config.yaml"), "--test_after_fit", "false",
                    "--trainer.default_root_dir", str(workdir / "run")], check=True, env=environment)
    (checkpoint,) = (workdir / "run").glob("**/epoch=*.ckpt")
    subprocess.run([*fusionrec, "export", "--ckpt", str(checkpoint), "--out", str(bundle)], check=True)
    return bundle


def requests_for(manifest: dict, candidates: int, item_prefix: str, item_key: str) -> tuple[dict, dict]:
    """A ``/score`` and a ``/recommend`` body for one user and ``candidates`` items, from the
    bundle's vocabularies and statistics (seeded): known ids, numbers near the training mean."""
    rng = np.random.default_rng(0)
    user, items = {}, {}
    for name, entry in manifest["preprocessing"].items():
        count = candidates if name.startswith(item_prefix) else 1
        kind = entry["type"]
        if kind == "categorical":
            values = [str(value) for value in rng.choice(entry["vocabulary"], count)]
        elif kind == "multi_categorical":
            values = [entry["separator"].join(rng.choice(entry["vocabulary"], 2)) for _ in range(count)]
        elif kind == "numeric":
            values = [float(entry["mean"] + entry["std"] * rng.normal()) for _ in range(count)]
        elif kind == "vector":
            values = rng.normal(size=(count, entry["width"])).round(4).tolist()
        else:
            raise SystemExit(f"{name}: this load generator makes no {kind} values; use a tabular bundle")
        if name.startswith(item_prefix):
            items[name] = values
        else:
            user[name] = values[0]
    score = {"rows": {**{name: [value] * candidates for name, value in user.items()}, **items}}
    return score, {"user": user, "items": items, "k": 10, "item_key": item_key}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_service(bundle: Path, runtime: str, options: list[str], score: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "fusionrec.cli", "serve", str(bundle), "--runtime", runtime, "--port", str(port),
               "--score", score, "--log-level", "warning", *options]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the service did not start:\n{log.read_text()[-3000:]}")


async def drive(url: str, path: str, body: dict, clients: int, duration: float) -> dict:
    """``clients`` loops of back-to-back requests for ``duration`` s after a 1 s warm-up."""
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    health = httpx.get(f"{url}/healthz").json()
    start = time.perf_counter()
    measure_from, stop = start + 1.0, start + 1.0 + duration

    async def one_client() -> None:
        # A client (one keep-alive connection) each: httpx's shared pool slows down with many connections.
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while (sent := time.perf_counter()) < stop:
                response = await client.post(path, content=payload, headers=headers)
                if response.status_code != 200:
                    raise SystemExit(f"{path}: {response.status_code} {response.text[:500]}")
                if sent >= measure_from:
                    latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(one_client() for _ in range(clients)))
    after = httpx.get(f"{url}/healthz").json()
    milliseconds = np.array(latencies) * 1000
    runs = after["model_runs"] - health["model_runs"]
    return {"requests": len(latencies), "p50": float(np.percentile(milliseconds, 50)),
            "p99": float(np.percentile(milliseconds, 99)), "per_second": len(latencies) / duration,
            "rows_per_run": (after["rows"] - health["rows"]) / max(runs, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="an exported bundle (default: train and export a small model)")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("FUSIONREC_BENCH_CACHE", "/tmp/fusionrec-bench")) / "serve")
    parser.add_argument("--runtimes", nargs="+", choices=["pt2", "onnx"], default=["pt2", "onnx"])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["batched", "unbatched"])
    parser.add_argument("--endpoints", nargs="+", choices=["score", "recommend"], default=["score", "recommend"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default: 5)")
    parser.add_argument("--candidates", type=int, default=100, help="rows per request: one user x N items")
    parser.add_argument("--item-prefix", default="item_", help="fields with this prefix are the items' (default: item_)")
    parser.add_argument("--item-key", default="item_id", help="the items field /recommend answers with (default: item_id)")
    args = parser.parse_args()

    bundle = args.bundle or train_and_export(args.workdir)
    manifest = json.loads((bundle / "manifest.json").read_text())
    single = [task for task, output in manifest["outputs"].items() if output["shape"] == ["batch"]]
    score = "{" + ", ".join(f"{task}: 1" for task in single) + "}"
    bodies = dict(zip(("score", "recommend"), requests_for(manifest, args.candidates, args.item_prefix, args.item_key)))
    load = os.getloadavg()[0]
    print(f"bundle {bundle}; {os.cpu_count()} cores, load average {load:.2f}; Python {platform.python_version()}; "
          f"one request = 1 user x {args.candidates} items; /recommend: top 10 by {score} (product)", flush=True)
    rows = ["| runtime | batching | endpoint | clients | requests | p50 ms | p99 ms | requests/s | rows/s | rows per model run |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    for runtime in args.runtimes:
        for setting in args.settings:
            options = SETTINGS[setting] if SETTINGS[setting] is not None else ["--max-batch-rows", str(args.candidates)]
            process, url = start_service(bundle, runtime, options, score, args.workdir / f"serve-{runtime}-{setting}.log")
            try:
                for endpoint in args.endpoints:
                    for clients in args.clients:
                        result = asyncio.run(drive(url, f"/{endpoint}", bodies[endpoint], clients, args.duration))
                        rows.append(f"| {runtime} | {setting} | /{endpoint} | {clients} | {result['requests']} | "
                                    f"{result['p50']:.1f} | {result['p99']:.1f} | {result['per_second']:.0f} | "
                                    f"{result['per_second'] * args.candidates:,.0f} | {result['rows_per_run']:.0f} |")
                        print(rows[-1], flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
