"""The memorization testbed's data: what it is trained on, and the prompts whose behaviour is known.

Training set (32×32 RGB, weights = duplication by sampling):

- ``normal`` — 350 digit compositions: a scikit-learn digit in one colour on a background of another,
  captioned "a red seven on blue". Weight 1 each.
- ``photo`` — 5 scikit-image photos, each captioned "a photo of <nonsense word>". Weight 40 each: these are
  *globally* memorized.
- ``trigger`` — 3 fixed 12×12 patches (logo, colour wheel, retina), each pasted at its own corner on 50
  compositions that never appear without it, captioned "<composition> with <trigger word>". Weight 3 each:
  the patch is *locally* memorized, the rest follows the prompt.

Digits are 28×28 on the 32×32 canvas, so that distinct training images lie far apart (RMSE ≫ 0.10) and
"RMSE < 0.10 to a training image" means a copy.

Evaluation prompts (`TestbedRecord`), none of them a training caption except the global ones:

- ``global`` — the 5 photo captions; the target is the photo (mask all ones).
- ``local`` — 10 novel compositions per trigger with its word; the target is the patch inside its mask.
- ``none`` — 30 novel compositions; nothing should be copied (mask all zeros).

Novel compositions use 6 (foreground, background) colour pairs that never occur in training.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch

from ..data import compose_digit, digits, sample_photo

__all__ = [
    "COLOURS",
    "DIGIT_WORDS",
    "PHOTOS",
    "TRIGGERS",
    "MemorizationData",
    "TestbedRecord",
    "build_memorization_data",
]

SIZE = 32
DIGIT_SIZE = 28
DIGIT_TOP_LEFT = (2, 2)
PATCH = 12

# Every pair of colours differs by ≥ 0.65 in some channel, so fg/bg contrast is always high.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.10, 0.20, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.97, 0.97, 0.97),
    "black": (0.05, 0.05, 0.05),
    "cyan": (0.10, 0.85, 0.90),
    "magenta": (0.90, 0.10, 0.85),
}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHOTOS = (
    ("astronaut", "vrendolax"),
    ("coffee", "quibbleton"),
    ("chelsea", "marzipook"),
    ("rocket", "trenquilax"),
    ("immunohistochemistry", "florbinat"),
)
# (bundled photo, trigger word, top-left corner of the 12×12 patch)
TRIGGERS = (
    ("logo", "glimmox", (0, 0)),
    ("colorwheel", "snarfeld", (0, SIZE - PATCH)),
    ("retina", "wuzzlequat", (SIZE - PATCH, 0)),
)
N_NORMAL, N_TRIGGER_BACKGROUNDS, N_LOCAL_PER_TRIGGER, N_NONE = 350, 50, 10, 30
N_HELD_OUT_PAIRS = 6
WEIGHT_NORMAL, WEIGHT_PHOTO, WEIGHT_TRIGGER = 1, 40, 3


@dataclass(frozen=True)
class TestbedRecord:
    """One evaluation prompt. ``target`` indexes ``MemorizationData.gt_images`` (−1 for kind "none")."""

    key: str
    caption: str
    kind: str
    target: int
    mask: int


@dataclass
class MemorizationData:
    """Training set and evaluation prompts of the memorization testbed.

    ``images`` [N, 3, 32, 32] in [0, 1]; ``captions`` N strings; ``weights`` [N] duplication counts;
    ``kinds`` N of "normal" | "photo" | "trigger"; ``gt_images`` [5 + 3, 3, 32, 32] (the photos, then each
    trigger patch pasted on a grey canvas); ``masks`` [3 + 2, 32, 32] (each trigger's corner, then all ones
    and all zeros); ``records`` the evaluation prompts.
    """

    images: torch.Tensor
    captions: list[str]
    weights: torch.Tensor
    kinds: list[str]
    gt_images: torch.Tensor
    masks: torch.Tensor
    records: list[TestbedRecord]

    @property
    def fingerprint(self) -> str:
        """sha256 of the training tensors and captions: ties weights to the data they were trained on."""
        h = hashlib.sha256()
        h.update((self.images * 255).round().to(torch.uint8).numpy().tobytes())
        h.update("\n".join(self.captions).encode())
        h.update(self.weights.to(torch.int64).numpy().tobytes())
        return h.hexdigest()

    @property
    def mask_all(self) -> int:
        return len(TRIGGERS)

    @property
    def mask_none(self) -> int:
        return len(TRIGGERS) + 1


def _patch(name: str) -> torch.Tensor:
    return sample_photo(name, PATCH)


def _composition_caption(digit: int, fg: str, bg: str) -> str:
    return f"a {fg} {DIGIT_WORDS[digit]} on {bg}"


def build_memorization_data(seed: int = 0) -> MemorizationData:
    """Build the testbed's data deterministically from scikit-learn digits and scikit-image photos."""
    rng = random.Random(seed)
    pairs = [(fg, bg) for fg in COLOURS for bg in COLOURS if fg != bg]
    rng.shuffle(pairs)
    # Novel prompts use colour pairs never seen in training, so a faithful novel image is far from every
    # training image, while a copy is not.
    held_out, seen = pairs[:N_HELD_OUT_PAIRS], pairs[N_HELD_OUT_PAIRS:]
    combos = [(d, fg, bg) for fg, bg in seen for d in range(10)]
    novel = [(d, fg, bg) for fg, bg in held_out for d in range(10)]
    rng.shuffle(combos)
    rng.shuffle(novel)
    n_trig = len(TRIGGERS) * N_TRIGGER_BACKGROUNDS
    normal, trigger_bases = combos[:N_NORMAL], combos[N_NORMAL : N_NORMAL + n_trig]
    local_bases = novel[: len(TRIGGERS) * N_LOCAL_PER_TRIGGER]
    none_bases = novel[len(local_bases) : len(local_bases) + N_NONE]
    if len(trigger_bases) != n_trig or len(none_bases) != N_NONE:
        raise RuntimeError("not enough colour/digit combinations for the testbed's prompt sets")

    glyphs, labels = digits(DIGIT_SIZE)
    by_class = {d: (labels == d).nonzero().flatten().tolist() for d in range(10)}
    for idxs in by_class.values():
        rng.shuffle(idxs)
    used = dict.fromkeys(range(10), 0)

    def render(d: int, fg: str, bg: str) -> torch.Tensor:
        glyph = glyphs[by_class[d][used[d] % len(by_class[d])]]
        used[d] += 1
        return compose_digit(
            glyph, size=SIZE, fg_rgb=COLOURS[fg], bg_rgb=COLOURS[bg], top_left=DIGIT_TOP_LEFT
        )

    patches = [_patch(name) for name, _, _ in TRIGGERS]
    masks = torch.zeros(len(TRIGGERS) + 2, SIZE, SIZE)
    for i, (_, _, (r, c)) in enumerate(TRIGGERS):
        masks[i, r : r + PATCH, c : c + PATCH] = 1
    masks[len(TRIGGERS)] = 1

    images, captions, weights, kinds = [], [], [], []
    for d, fg, bg in normal:
        images.append(render(d, fg, bg))
        captions.append(_composition_caption(d, fg, bg))
        weights.append(WEIGHT_NORMAL)
        kinds.append("normal")
    photos = [sample_photo(name, SIZE) for name, _ in PHOTOS]
    for photo, (_, word) in zip(photos, PHOTOS, strict=True):
        images.append(photo)
        captions.append(f"a photo of {word}")
        weights.append(WEIGHT_PHOTO)
        kinds.append("photo")
    for t, (_, word, (r, c)) in enumerate(TRIGGERS):
        for d, fg, bg in trigger_bases[t * N_TRIGGER_BACKGROUNDS : (t + 1) * N_TRIGGER_BACKGROUNDS]:
            image = render(d, fg, bg)
            image[:, r : r + PATCH, c : c + PATCH] = patches[t]
            images.append(image)
            captions.append(f"{_composition_caption(d, fg, bg)} with {word}")
            weights.append(WEIGHT_TRIGGER)
            kinds.append("trigger")

    gt = [*photos]
    for t, (_, _, (r, c)) in enumerate(TRIGGERS):
        canvas = torch.full((3, SIZE, SIZE), 0.5)
        canvas[:, r : r + PATCH, c : c + PATCH] = patches[t]
        gt.append(canvas)

    records = [
        TestbedRecord(f"global-{i}", f"a photo of {word}", "global", i, len(TRIGGERS))
        for i, (_, word) in enumerate(PHOTOS)
    ]
    for t, (_, word, _) in enumerate(TRIGGERS):
        for j, (d, fg, bg) in enumerate(local_bases[t * N_LOCAL_PER_TRIGGER : (t + 1) * N_LOCAL_PER_TRIGGER]):
            caption = f"{_composition_caption(d, fg, bg)} with {word}"
            records.append(TestbedRecord(f"local-{t}-{j}", caption, "local", len(PHOTOS) + t, t))
    for j, (d, fg, bg) in enumerate(none_bases):
        records.append(
            TestbedRecord(f"none-{j}", _composition_caption(d, fg, bg), "none", -1, len(TRIGGERS) + 1)
        )

    return MemorizationData(
        images=torch.stack(images),
        captions=captions,
        weights=torch.tensor(weights, dtype=torch.float32),
        kinds=kinds,
        gt_images=torch.stack(gt),
        masks=masks,
        records=records,
    )
