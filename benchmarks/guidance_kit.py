"""Benchmark guidance-kit (spec §6): prints one JSON object; timings are process CPU seconds at one thread.

The measurements live in `guidance_kit.bench` (also behind ``guidance-kit bench``). The measurements cost ≈ 45 s
of CPU; importing torch, diffusers and transformers adds ≈ 12 s where their bytecode is cached and ≈ 30 s where
it is not (a box with PYTHONDONTWRITEBYTECODE set recompiles them on every run)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# this file is named like the package: keep its folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the small run (default: the full run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from guidance_kit.bench import run_benchmark

    print(json.dumps(run_benchmark(args.quick, threads=args.threads, seed=args.seed), indent=2))


if __name__ == "__main__":
    main()
