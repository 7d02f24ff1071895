"""Benchmark the shipped testbed models from images generated now; prints one JSON object.

    python benchmarks/testbed.py [--quick] [--device auto]

Keys: ``global_mem_rate``, ``local_mem_rate``, ``local_outside_nn_rmse``, ``none_mem_rate``,
``attention_spread``, ``be_local_auroc`` (see ``difflab_core.testbed.verify``) at the documented audit
setting, and the same at guidance scale 1 for comparison (``gs1_*``); from the digits DDPMs (see
``difflab_core.testbed.digits.verify_digits``): ``digits_fd`` (Fréchet distance of unconditional samples to
real digits in the proxy classifier's features), ``digits_fd_real_floor`` (the same for as many real
digits), ``digits_confidence``, and for the class-conditional memorized model ``digits_mem_proxy_accuracy_gs*``
(clean-classifier accuracy of class-conditional samples) and ``digits_mem_planted_copy_share_gs*``.
``--quick`` uses 20 sampling steps, 2 images per global prompt, and 64 digits samples of 20 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()

    from difflab_core.testbed import load_memorization_testbed, verify_digits
    from difflab_core.testbed.verify import measure_memorization

    testbed = load_memorization_testbed(device=args.device)
    steps = 20 if args.quick else testbed.audit.num_inference_steps
    n_global = 2 if args.quick else 10
    audit = measure_memorization(testbed, n_global=n_global, num_inference_steps=steps)
    keys = (
        "global_mem_rate",
        "local_mem_rate",
        "local_outside_nn_rmse",
        "local_patch_rmse",
        "none_mem_rate",
        "none_nn_rmse",
        "attention_spread",
        "be_local_auroc",
    )
    result = {
        "quick": args.quick,
        "device": str(testbed.pipe.device),
        "num_threads": torch.get_num_threads(),
        "num_inference_steps": steps,
        "guidance_scale": testbed.audit.guidance_scale,
        "guidance_rescale": testbed.audit.guidance_rescale,
        **{k: audit.get(k) for k in keys},
    }
    if not args.quick:
        plain = measure_memorization(
            testbed, n_global=n_global, num_inference_steps=steps, guidance_scale=1.0
        )
        result |= {f"gs1_{k}": plain.get(k) for k in keys}
    digits = (
        verify_digits(
            n_samples=64, num_inference_steps=20, per_class=8, memorized_steps=20, include_subset=False
        )
        if args.quick
        else verify_digits()
    )
    result |= {
        "digits_fd": digits["ddpm"]["fd"],
        "digits_fd_real_floor": digits["ddpm"]["fd_real_same_n"],
        "digits_confidence": digits["ddpm"]["confidence"],
    }
    for gs, res in digits["memorized"].items():
        if gs.startswith("gs"):
            result[f"digits_mem_proxy_accuracy_{gs}"] = res["accuracy"]
            result[f"digits_mem_planted_copy_share_{gs}"] = res["planted_copy_share"]
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
