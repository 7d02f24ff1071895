"""Training data for the predictor: query random arrangements of image sets and record per-cell correctness."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from collage_prompt.batch import run_batch
from collage_prompt.client import VLMRequest, encode_png
from collage_prompt.data import ImageDataset
from collage_prompt.errors import CollagePromptError
from collage_prompt.grid import GridSpec, render_collage
from collage_prompt.predictor import CollageSample
from collage_prompt.prompt import PromptTemplate, parse_answer

__all__ = ["collage_request", "collect_training_data", "load_official_dataset", "sample_image_sets"]


def sample_image_sets(
    labels: np.ndarray, k: int, n_sets: int, same_class_rate: float = 0.3, seed: int = 0, pool=None
) -> list[np.ndarray]:
    """``n_sets`` sets of K distinct image indices from ``pool`` (default: all); each non-first slot is, with
    probability ``same_class_rate``, an image of the same class as an earlier slot (so grouping is observable)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    if len(pool) < k:
        raise CollagePromptError(f"sample_image_sets: {len(pool)} images cannot fill a set of {k}")
    by_class = {c: pool[labels[pool] == c] for c in np.unique(labels[pool])}
    sets = []
    for _ in range(n_sets):
        chosen: list[int] = []
        while len(chosen) < k:
            if chosen and rng.random() < same_class_rate:
                mates = np.setdiff1d(by_class[labels[chosen[int(rng.integers(len(chosen)))]]], chosen)
                if len(mates):
                    chosen.append(int(rng.choice(mates)))
                    continue
            cand = int(rng.choice(pool))
            if cand not in chosen:
                chosen.append(cand)
        sets.append(np.array(chosen))
    return sets


def collage_request(
    dataset: ImageDataset, image_idx, perm, spec: GridSpec, template: str = "paper-v1", detail: str = "high"
) -> VLMRequest:
    """Render the images ``dataset[image_idx]`` arranged by ``perm`` and build the request (meta: grid, template,
    image ids, the arrangement and the true class per cell)."""
    image_idx = np.asarray(image_idx)
    images = [dataset.images[i] for i in image_idx]
    collage, layout = render_collage(images, perm, spec)
    text = PromptTemplate.get(template).text(spec.rows, spec.cols, dataset.classes)
    cells = image_idx[np.asarray(perm)]
    meta = {
        "grid": spec.to_dict(),
        "template": template,
        "image_ids": [dataset.ids[i] for i in cells],
        "perm": [int(p) for p in layout.perm],
        "truth": [int(dataset.labels[i]) for i in cells],
    }
    return VLMRequest(encode_png(collage), text, detail, spec.k, meta)


def collect_training_data(
    dataset: ImageDataset,
    spec: GridSpec,
    n_sets: int,
    arrangements_per_set: int = 4,
    same_class_rate: float = 0.3,
    *,
    client,
    store: str | Path,
    features: np.ndarray,
    template: str = "paper-v1",
    detail: str = "high",
    seed: int = 0,
    pool=None,
    workers: int = 1,
    max_cost_usd: float | None = None,
) -> list[CollageSample]:
    """Query ``arrangements_per_set`` distinct random arrangements of ``n_sets`` image sets (resumable in
    ``store``) and return one :class:`CollageSample` per answered collage; ``features`` is (N_images, D).
    ``max_cost_usd`` caps this call's new spending (see :func:`run_batch`)."""
    rng = np.random.default_rng(seed + 1)
    sets = sample_image_sets(dataset.labels, spec.k, n_sets, same_class_rate, seed, pool)
    requests, info = [], []
    for s, idx in enumerate(sets):
        perms: set[tuple[int, ...]] = set()
        while len(perms) < min(arrangements_per_set, int(np.prod(np.arange(1, spec.k + 1)))):
            perms.add(tuple(rng.permutation(spec.k).tolist()))
        for perm in sorted(perms):
            requests.append(collage_request(dataset, idx, perm, spec, template, detail))
            info.append((s, idx, np.array(perm)))
    summary = run_batch(requests, client, store, workers=workers, max_cost_usd=max_cost_usd)
    samples = []
    for req, (s, idx, perm) in zip(requests, info, strict=False):
        rec = summary.records.get(req.key)
        if rec is None:
            continue
        parsed = parse_answer(rec["text"], spec.k, dataset.classes)
        correct = np.array(
            [m == t for m, t in zip(parsed.matched, req.meta["truth"], strict=False)], dtype=np.float32
        )
        samples.append(CollageSample(np.asarray(features)[idx], perm, correct, float(correct.mean()), s))
    return samples


def load_official_dataset(
    root: str | Path,
    grid: str = "3x3",
    split: str = "train",
    *,
    trusted: bool = False,
    pred_order: str | None = None,
) -> list[CollageSample]:
    """The official CollagePrompt training metadata (``train/metainfo/imagenet_train_{grid}_collage_pred_info.pkl``
    with features in ``train/subset/feat``) as samples.

    The pickle is read only with ``trusted=True`` (pickles can run code). Which order ``pred`` uses is unknown,
    so by default only mean(pred) is used; ``pred_order="cell"`` or ``"ori"`` also keeps per-cell labels.
    """
    if split != "train":
        raise CollagePromptError(
            "load_official_dataset: only split='train' (the pickled metadata) is supported"
        )
    if grid not in ("2x2", "3x3"):
        raise CollagePromptError(f"load_official_dataset: grid={grid!r}; use '2x2' or '3x3'")
    if pred_order not in (None, "cell", "ori"):
        raise CollagePromptError(f"pred_order={pred_order!r}; use None, 'cell' or 'ori'")
    root = Path(root)
    meta = root / "train" / "metainfo" / f"imagenet_train_{grid}_collage_pred_info.pkl"
    if not meta.is_file():
        raise CollagePromptError(f"{meta}: not found; unpack the official dataset under {root}")
    if not trusted:
        raise CollagePromptError(
            f"{meta} is a pickle, which can execute code; pass trusted=True if you trust its source"
        )
    with open(meta, "rb") as f:
        info = pickle.load(f)
    feat_dir = root / "train" / "subset" / "feat"
    cache: dict[str, np.ndarray] = {}
    samples = []
    for s, (_, rec) in enumerate(sorted(info.items(), key=lambda kv: str(kv[0]))):
        names = list(rec["ori"])
        for n in names:
            if n not in cache:
                path = feat_dir / (Path(n).stem + ".npy")
                if not path.is_file():
                    raise CollagePromptError(f"{path}: feature file missing for {n}")
                cache[n] = np.load(path, allow_pickle=False).astype(np.float32).ravel()
        perm = np.asarray(rec["ord"], dtype=np.int64)
        pred = np.asarray(rec["pred"], dtype=np.float32)
        cells = None if pred_order is None else (pred if pred_order == "cell" else pred[perm])
        samples.append(CollageSample(np.stack([cache[n] for n in names]), perm, cells, float(pred.mean()), s))
    return samples
