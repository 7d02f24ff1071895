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
        targets = torch.tensor([r.target for _, r in items]).repeat_interleave(n)
        masks = torch.stack([testbed.masks[i] for i, _ in items]).repeat_interleave(n, dim=0)[:, None]
        if kind == "global":
            rmse, idx = _nearest(images, train)
            photo_index = [j for j, k in enumerate(testbed.data.kinds) if k == "photo"]
            target_train = torch.tensor(photo_index)[targets]
            hit = (idx == target_train) & (rmse < MEM_RMSE)
            out["global_mem_rate"] = float(hit.float().mean())
            out["global_target_rmse"] = float(
                torch.sqrt(((images - train[target_train]) ** 2).flatten(1).mean(1)).mean()
            )
        elif kind == "local":
            gt = testbed.gt_images[targets]
            patch_rmse = masked_rmse(images, gt, masks)
            outside, _ = _nearest(images, train, 1 - masks)
            out["local_mem_rate"] = float((patch_rmse < MEM_RMSE).float().mean())
            out["local_patch_rmse"] = float(patch_rmse.mean())
            out["local_outside_nn_rmse"] = float(outside.mean())
            up = F.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[
                :, 0
            ]
            aurocs = [
                roc_auc(up[b].flatten().numpy(), masks[b, 0].flatten().numpy() > 0.5) for b in range(len(up))
            ]
            out["be_local_auroc"] = float(sum(aurocs) / len(aurocs))
        else:
            rmse, _ = _nearest(images, train)
            out["none_mem_rate"] = float((rmse < MEM_RMSE).float().mean())
            out["none_nn_rmse"] = float(rmse.mean())
    spreads = out.get("attention_spread_by_kind", {})
    if spreads:
        out["attention_spread"] = sum(spreads.values()) / len(spreads)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out
