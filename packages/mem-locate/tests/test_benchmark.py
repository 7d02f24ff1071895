"""The benchmark script, run end to end on a stand-in testbed built from a tiny pipeline."""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "mem_locate.py"

KEYS = [
    "quick",
    "device",
    "num_threads",
    "num_inference_steps",
    "num_images_per_prompt",
    "n_prompts",
    "wall_s",
    "plain_sampling_s_per_image",
    "capture_overhead_ratio",
    "audit_overhead_ratio",
    "onepass_vs_twopass_time_ratio",
    "onepass_twopass_max_rel_diff",
    "loc_local_auroc",
    "loc_local_auroc_pooled",
    "loc_local_best_iou",
    "loc_local_best_miou",
    "loc_local_best_acc",
    "loc_local_heldout_iou",
    "loc_local_heldout_threshold",
    "loc_global_best_iou",
    "mit_pe_ls_before",
    "mit_pe_ls_after",
    "mit_be_pe_ls_before",
    "mit_be_pe_ls_after",
] + [
    f"det_{s}_{m}_{k}"
    for s in ("global", "local", "all")
    for m in ("be", "wen", "wen1", "ren_le", "ren_ae")
    for k in ("auc", "tpr1")
]


@dataclass
class _Rec:
    key: str
    caption: str
    kind: str
    target: int


@dataclass
class _Audit:
    num_inference_steps: int = 2
    guidance_scale: float = 3.0
    guidance_rescale: float = 0.0


def test_benchmark_quick_on_stand_in(pipes, monkeypatch, capsys):
    kinds = ["global", "global", "local", "local", "none", "none"]
    masks = torch.zeros(6, 32, 32)
    masks[:2] = 1
    masks[2:4, :12, :12] = 1

    stand_in = SimpleNamespace(
        pipe=pipes["sd1"],
        records=[_Rec(f"k{i}", f"a photo of item {i}", k, 0) for i, k in enumerate(kinds)],
        gt_images=torch.rand(1, 3, 32, 32),
        audit=_Audit(),
        masks=masks,
    )
    import difflab_core.testbed as testbed

    monkeypatch.setattr(testbed, "load_memorization_testbed", lambda device=None: stand_in)
    spec = importlib.util.spec_from_file_location("bench_mem_locate", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--device", "cpu", "--steps", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(KEYS) == sorted(out)
    assert out["n_prompts"] == {"global": 2, "local": 2, "none": 2}
    assert out["onepass_twopass_max_rel_diff"] < 1e-5
    assert out["mit_pe_ls_after"] is None
    assert 0 <= out["det_local_be_auc"] <= 1
