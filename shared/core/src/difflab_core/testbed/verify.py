"""Measure the memorization testbed's behaviour from images generated now.

Definitions (all RMSE on [0, 1] pixels, 32×32):

- ``global_mem_rate``: share of global-prompt generations whose nearest training image is the prompt's target
  photo with RMSE < 0.10.
- ``local_mem_rate``: share of local-prompt generations whose RMSE to the trigger patch inside its mask < 0.10;
  ``local_outside_nn_rmse``: mean over those generations of the RMSE, outside the mask, to the nearest
  training image (outside the mask) — well above 0.10 means only the patch is copied.
- ``none_mem_rate``: share of novel-prompt generations within RMSE 0.10 of some training image.
- ``attention_spread``: at the last step, in the BE layers (down path, highest resolution), the max − min over
  token slots of the query- and head-mean attention mass, averaged over images (0 = uniform).
- ``be_local_auroc``: pixel AUROC of the end-token map (bilinearly upsampled to 32×32) against the patch mask,
  averaged over local generations.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from ..attention import AttentionCapture, eos_indices
from ..metrics import knn, masked_rmse, roc_auc
from .memorization import MemorizationTestbed

MEM_RMSE = 0.10


def _nearest(generated: torch.Tensor, train: torch.Tensor, mask: torch.Tensor | None = None):
    """Per generation: (RMSE to the nearest training image, its index); with ``mask`` [B, 1, H, W], only
    over the pixels where that generation's mask is 1."""
    if mask is None:
        dist, idx = knn(generated.flatten(1).double(), train.flatten(1).double(), metric="l2")
        return dist[:, 0].div(generated[0].numel() ** 0.5).float(), idx[:, 0]
    rows = []
    for g, m in zip(generated, mask, strict=True):
        weight = m.expand_as(g)
        rows.append(((train - g) ** 2 * weight).flatten(1).sum(1) / weight.sum().clamp(min=1))
    best, idx = torch.stack(rows).double().min(dim=1)
    return best.sqrt().float(), idx


def memorization_verdicts(testbed: MemorizationTestbed, images: torch.Tensor, records: list[int]) -> dict:
    """Whether each image copies training data, by the rules above (RMSE < ``MEM_RMSE`` on [0, 1] pixels).

    ``images`` [B, 3, 32, 32] in [0, 1]; ``records[b]`` is the index into ``testbed.records`` of the prompt image
    b was generated from. Returns ``copied`` [B] bool, ``rmse`` [B] (global: to the nearest training image;
    local: to the trigger patch inside its mask; none: to the nearest training image), ``target_rmse`` [B]
    (global prompts: to the target photo; NaN otherwise) and ``kind`` (list of str).
    """
    if images.ndim != 4 or len(images) != len(records):
        raise ValueError(
            f"memorization_verdicts: images {tuple(images.shape)} must be [B, 3, H, W] with one record index each "
            f"(got {len(records)})"
        )
    images = images.detach().float().cpu()
    train = testbed.train_images
    photo_index = [j for j, k in enumerate(testbed.data.kinds) if k == "photo"]
    recs = [testbed.records[i] for i in records]
    copied = torch.zeros(len(images), dtype=torch.bool)
    rmse = torch.full((len(images),), float("nan"))
    target_rmse = torch.full((len(images),), float("nan"))
    for kind in ("global", "local", "none"):
        rows = [b for b, r in enumerate(recs) if r.kind == kind]
        if not rows:
            continue
        sel = images[rows]
        if kind == "local":
            gt = testbed.gt_images[[recs[b].target for b in rows]]
            masks = torch.stack([testbed.masks[records[b]] for b in rows])[:, None]
            dist = masked_rmse(sel, gt, masks)
            hit = dist < MEM_RMSE
        else:
            dist, idx = _nearest(sel, train)
            hit = dist < MEM_RMSE
            if kind == "global":
                target = torch.tensor([photo_index[recs[b].target] for b in rows])
                hit = hit & (idx == target)
                target_rmse[rows] = torch.sqrt(((sel - train[target]) ** 2).flatten(1).mean(1))
        copied[rows] = hit
        rmse[rows] = dist.float()
    return {"copied": copied, "rmse": rmse, "target_rmse": target_rmse, "kind": [r.kind for r in recs]}


def measure_memorization(
    testbed: MemorizationTestbed,
    *,
    n_global: int = 10,
    seed: int = 0,
    kinds: tuple[str, ...] = ("global", "local", "none"),
    **setting,
) -> dict:
    """Generate the testbed's evaluation prompts at the audit setting (``setting`` overrides it) and measure.

    Global prompts get ``n_global`` images each, local and novel prompts one each; seeds follow the records.
    """
    start = time.perf_counter()
    pipe = testbed.pipe
    audit = asdict(testbed.audit) | setting
    train = testbed.train_images
    out: dict = {"setting": audit}
    by_kind = {k: [(i, r) for i, r in enumerate(testbed.records) if r.kind == k] for k in kinds}
    for kind, items in by_kind.items():
        if not items:
            continue
        prompts = [r.caption for _, r in items]
        n = n_global if kind == "global" else 1
        cfg = audit["guidance_scale"] > 1
        cols = eos_indices(pipe.tokenizer, prompts, n)
        capture = AttentionCapture(
            pipe.unet,
            "down-highest",
            scheduler=pipe.scheduler,
            columns=cols,
            query_mean=True,
            branch="cond" if cfg else "all",
        )
        with capture:
            images = testbed.generate(prompts, seed=seed, n=n, **setting)
        maps = capture.column_map()[:, 0]
        mass = capture.token_distribution()
        out.setdefault("attention_spread_by_kind", {})[kind] = float(
            (mass.max(1).values - mass.min(1).values).mean()
        )
        index = [i for i, _ in items for _ in range(n)]
        verdict = memorization_verdicts(testbed, images, index)
        hit = verdict["copied"]
        if kind == "global":
            out["global_mem_rate"] = float(hit.float().mean())
            out["global_target_rmse"] = float(verdict["target_rmse"].mean())
        elif kind == "local":
            masks = torch.stack([testbed.masks[i] for i in index])[:, None]
            outside, _ = _nearest(images, train, 1 - masks)
            out["local_mem_rate"] = float(hit.float().mean())
            out["local_patch_rmse"] = float(verdict["rmse"].mean())
            out["local_outside_nn_rmse"] = float(outside.mean())
            up = F.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[
                :, 0
            ]
            aurocs = [
                roc_auc(up[b].flatten().numpy(), masks[b, 0].flatten().numpy() > 0.5) for b in range(len(up))
            ]
            out["be_local_auroc"] = float(sum(aurocs) / len(aurocs))
        else:
            out["none_mem_rate"] = float(hit.float().mean())
            out["none_nn_rmse"] = float(verdict["rmse"].mean())
    spreads = out.get("attention_spread_by_kind", {})
    if spreads:
        out["attention_spread"] = sum(spreads.values()) / len(spreads)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out
