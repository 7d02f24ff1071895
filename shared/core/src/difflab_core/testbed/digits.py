"""The digits testbeds: small DDPMs and classifiers on scikit-learn's digits at 16×16, trained by recipes here.

Everything works on ``difflab_core.data.digits(16)``: the 1797 bundled 8×8 digits resized bilinearly to
16×16. Images handed to or returned by this module's public API are ``[N, 1, 16, 16]`` in **[0, 1]** (the
core convention); the networks themselves see **[−1, 1]** (``x * 2 - 1``).

- `digits_classifier()` → `DigitsProxy`: a small CNN on clean digits (trained on a fixed 80 % split, held-out
  accuracy in its card) for proxy metrics: accuracy, confidence, 128-d penultimate features, Fréchet distance.
- `digits_ddpm(classes=None)` → `DigitsDDPM`: an unconditional ε-prediction `UNet2DModel` (0.69 M parameters)
  with a 1000-step cosine (``squaredcos_cap_v2``) `DDPMScheduler`, x₀ clipped when sampling. Shipped for all
  ten classes and for the source domain of tan-transfer's digits task, ``classes=(0, 1, 2, 3, 4)``
  (`SHIPPED_SUBSET`); other subsets are trained with `train_digits`.
- `digits_ddpm_memorized()` → `MemorizedDigits`: a class-conditional `UNet2DModel` (``num_class_embeds=11``;
  class 10 is the null class of class dropout / CFG), **v-prediction** on the same cosine schedule with
  ``clip_sample=False``, trained with 15 % class dropout and four isolated digits (of classes 2, 3, 5, 8)
  planted 100× (duplication by sampling weight); plus a time-conditioned `TinyNoisyClassifier` on x_t (same
  noise schedule) and the independent clean classifier above.

- `train_digits(name, output_dir)` runs one recipe of `RECIPES` through `difflab_core.train.Trainer`
  (seeded, resumable) and writes ``<file>.safetensors`` and a JSON card (recipe, data fingerprint, sha256 of
  the weights, losses, timings, metrics) into ``output_dir``.
- `verify_digits()` measures the shipped models from freshly generated samples.

Measured choices (1 CPU thread, 1000 steps at batch 64 each): the cosine schedule beat the linear one for the
unconditional model (proxy FD 0.68× the linear model's, classifier confidence 0.976 vs 0.965; the linear
schedule spends half its timesteps at SNR < 0.1 at 16×16). For the memorized model ε-prediction copied the
planted digits weakly (0–25 %) and fell apart under CFG 3 (accuracy 0.56); v-prediction copies them and CFG 3
gives accuracy 1.0. Clipping x₀ under CFG (``clip_sample=True``) wrecks guided v-prediction samples (accuracy
0.13 at scale 3), hence ``clip_sample=False`` for the memorized model.

Loaders never train and never touch the network: they read the files in ``weights/`` and refuse a file whose
sha256 differs from its card.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DifflabError
from ..loading import file_sha256
from ..metrics import knn
from ..tiny import seeded

__all__ = [
    "CLASSIFIER_RECIPE",
    "DDPM_RECIPE",
    "MEMORIZED_RECIPE",
    "NOISY_CLASSIFIER_RECIPE",
    "RECIPES",
    "SHIPPED_SUBSET",
    "SUBSET_RECIPE",
    "ClassifierRecipe",
    "DigitsCNN",
    "DigitsDDPM",
    "DigitsProxy",
    "DigitsRecipe",
    "MemorizedDigits",
    "digits_classifier",
    "digits_ddpm",
    "digits_ddpm_memorized",
    "digits_noisy_classifier",
    "digits_split",
    "real_digits",
    "train_digits",
    "unet_config",
    "verify_digits",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
SIZE = 16
NULL_CLASS = 10
SHIPPED_SUBSET: tuple[int, ...] = (0, 1, 2, 3, 4)
"""The subset shipped besides all ten classes: tan-transfer's source domain (its target is digit 9)."""
_ALL = tuple(range(10))


# ------------------------------------------------------------------------------------------------- data


def _normalise_classes(classes: Iterable[int] | None) -> tuple[int, ...]:
    if classes is None:
        return _ALL
    try:
        wanted = tuple(sorted({int(c) for c in classes}))
    except (TypeError, ValueError) as err:
        raise DifflabError(f"classes must be digits 0..9, got {classes!r}") from err
    if not wanted or any(c < 0 or c > 9 for c in wanted):
        raise DifflabError(f"classes must be a non-empty subset of 0..9, got {list(wanted)}")
    return wanted


def real_digits(classes: Iterable[int] | None = None) -> tuple[Tensor, Tensor]:
    """The real digits at 16×16: ``(images [N, 1, 16, 16] in [0, 1], labels [N])``, dataset order."""
    from ..data import digits

    wanted = _normalise_classes(classes)
    return digits(SIZE, classes=None if wanted == _ALL else wanted)


def digits_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[Tensor, Tensor]:
    """A fixed train/test split of the 1797 digits: ``(train_idx, test_idx)``, each sorted, from ``seed``."""
    n = len(real_digits()[1])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = round(n * test_fraction)
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _fingerprint(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_images(images: Tensor, who: str) -> Tensor:
    """[N,1,H,W] / [N,3,H,W] / [N,H,W] in [0, 1] → float32 [N,1,16,16] in [0, 1] (resized if needed)."""
    if not isinstance(images, Tensor):
        raise DifflabError(f"{who}: images must be a torch.Tensor, got {type(images).__name__}")
    x = images.detach().float()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise DifflabError(f"{who}: images must be [N, 1, H, W] (or [N, 3, H, W]), got {tuple(images.shape)}")
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    lo, hi = float(x.min()), float(x.max())
    if lo < -0.25 or hi > 1.25:
        raise DifflabError(
            f"{who}: images must be in [0, 1], got values in [{lo:.2f}, {hi:.2f}]; map [-1, 1] samples "
            "with (x + 1) / 2"
        )
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class ClassifierRecipe:
    """A classifier recipe: ``kind="clean"`` (`DigitsCNN` on clean digits) or ``"noisy"`` (on x_t, t)."""

    name: str = "digits-classifier"
    file: str = "digits_classifier"
    kind: str = "clean"
    split_seed: int = 0
    model_seed: int = 0
    train_seed: int = 0
    max_steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    lr_schedule: str = "cosine"
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    width: int = 32
    feature_dim: int = 128
    dropout: float = 0.2
    max_shift: int = 1
    """Random translation of up to this many pixels (augmentation, padded with background)."""


@dataclass(frozen=True)
class DigitsRecipe:
    """A DDPM recipe on 16×16 digits (unconditional unless ``num_class_embeds`` is set)."""

    name: str = "digits"
    file: str = "digits_ddpm"
    classes: tuple[int, ...] = _ALL
    model_seed: int = 0
    train_seed: int = 0
    max_steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ema_decay: float | None = 0.995
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    attention_head_dim: int = 32
    norm_num_groups: int = 8
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    num_class_embeds: int | None = None
    class_dropout: float = 0.0
    planted_classes: tuple[int, ...] = ()
    plant_weight: int = 1
    """Each planted image appears this many times per epoch (duplication by sampling weight)."""
    plant_isolation: float = 0.14
    """Planted images are chosen among digits whose nearest other digit is at least this RMSE away."""


CLASSIFIER_RECIPE = ClassifierRecipe()
NOISY_CLASSIFIER_RECIPE = ClassifierRecipe(
    name="digits-noisy-classifier",
    file="digits_noisy_classifier",
    kind="noisy",
    model_seed=1,
    train_seed=1,
    max_steps=2000,
    batch_size=128,
    lr=2e-3,
    weight_decay=0.0,
    dropout=0.0,
)
DDPM_RECIPE = DigitsRecipe()
SUBSET_RECIPE = DigitsRecipe(
    name="digits-subset", file="digits_ddpm_c01234", classes=SHIPPED_SUBSET, max_steps=600
)
MEMORIZED_RECIPE = DigitsRecipe(
    name="digits-memorized",
    file="digits_ddpm_memorized",
    model_seed=2,
    train_seed=2,
    max_steps=1000,
    prediction_type="v_prediction",
    clip_sample=False,
    num_class_embeds=NULL_CLASS + 1,
    class_dropout=0.15,
    planted_classes=(2, 3, 5, 8),
    plant_weight=100,
)
RECIPES: dict[str, ClassifierRecipe | DigitsRecipe] = {
    r.name: r
    for r in (CLASSIFIER_RECIPE, DDPM_RECIPE, SUBSET_RECIPE, MEMORIZED_RECIPE, NOISY_CLASSIFIER_RECIPE)
}


def _recipe_from_card(card: dict, path: Path) -> ClassifierRecipe | DigitsRecipe:
    raw = card.get("recipe")
    cls = ClassifierRecipe if card.get("recipe_type") == "ClassifierRecipe" else DigitsRecipe
    if not isinstance(raw, dict):
        raise DifflabError(f"{path}: its card has no recipe; retrain with difflab_core.testbed.train_digits")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise DifflabError(f"{path}: its card's recipe has fields this version does not know: {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def scheduler_config(recipe: DigitsRecipe = DDPM_RECIPE) -> dict:
    """The recipe's `DDPMScheduler` config (1000 steps; ``clip_sample`` only matters when sampling)."""
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": recipe.beta_schedule,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "prediction_type": recipe.prediction_type,
        "clip_sample": recipe.clip_sample,
        "clip_sample_range": 1.0,
    }


def _noise_schedule(config: dict) -> dict:
    """The part of a scheduler config that fixes q(x_t | x_0) (what a noisy classifier depends on)."""
    return {k: config[k] for k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")}


# ---------------------------------------------------------------------------------------------- models


class DigitsCNN(nn.Module):
    """A small CNN on ``size``² greyscale images in [−1, 1] (16×16 digits by default; tan-transfer also uses it
    on photo patches): ``forward(x) -> logits [B, num_classes]``.

    ``features(x) -> [B, feature_dim]`` is the penultimate layer before its ReLU (no dead units, so its
    covariance has full rank for the Fréchet distance).
    """

    def __init__(
        self,
        width: int = 32,
        feature_dim: int = 128,
        num_classes: int = 10,
        dropout: float = 0.2,
        size: int = SIZE,
    ):
        super().__init__()
        if size % 4:
            raise DifflabError(f"DigitsCNN: size must be a multiple of 4, got {size}")
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * w * (size // 4) ** 2, feature_dim),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(F.relu(self.features(x))))


def _build_classifier(recipe: ClassifierRecipe) -> nn.Module:
    from ..tiny import TinyNoisyClassifier

    with seeded(recipe.model_seed):
        if recipe.kind == "clean":
            return DigitsCNN(recipe.width, recipe.feature_dim, dropout=recipe.dropout)
        if recipe.kind == "noisy":
            return TinyNoisyClassifier(in_channels=1, num_classes=10, size=SIZE, width=recipe.width)
    raise DifflabError(f"classifier recipe kind={recipe.kind!r}: use 'clean' or 'noisy'")


def unet_config(recipe: DigitsRecipe = DDPM_RECIPE, size: int = SIZE, channels: int = 1) -> dict:
    """The recipe's `UNet2DModel` keyword arguments for ``channels × size × size`` images (16×16×1 digits by
    default; tan-transfer reuses the architecture for photo patches)."""
    return {
        "sample_size": size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": list(recipe.block_out_channels),
        "layers_per_block": recipe.layers_per_block,
        "down_block_types": list(recipe.down_block_types),
        "up_block_types": list(recipe.up_block_types),
        "attention_head_dim": recipe.attention_head_dim,
        "norm_num_groups": recipe.norm_num_groups,
        "num_class_embeds": recipe.num_class_embeds,
    }


def build_unet(recipe: DigitsRecipe = DDPM_RECIPE):
    """The recipe's randomly initialised `UNet2DModel` (seeded by ``recipe.model_seed``)."""
    from diffusers import UNet2DModel

    with seeded(recipe.model_seed):
        return UNet2DModel(**unet_config(recipe))


# ----------------------------------------------------------------------------------------- weights I/O


def _save_state(state: dict[str, Tensor], path: Path) -> str:
    """Save fp32 if the file stays under 4 MB, else fp16; returns the dtype stored."""
    from safetensors.torch import save_file

    n_bytes = sum(t.numel() * 4 for t in state.values() if t.is_floating_point())
    dtype = torch.float32 if n_bytes < 4 * 2**20 else torch.float16
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()
    }
    save_file(state, str(path), metadata={"format": "pt"})
    return str(dtype).removeprefix("torch.")


def _load_checked(path: Path, train_hint: str) -> tuple[dict[str, Tensor], dict]:
    """Read ``path`` and its card; raise DifflabError naming the path if either is missing or they disagree."""
    from safetensors.torch import load_file

    card_path = path.with_suffix(".json")
    if not path.is_file():
        raise DifflabError(f"{path}: testbed weights not found; train them with {train_hint}")
    if not card_path.is_file():
        raise DifflabError(f"{path}: its card {card_path.name} is missing; retrain with {train_hint}")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as err:
        raise DifflabError(f"{card_path}: not a readable JSON card: {err}") from err
    expected = card.get("weights_sha256")
    if not expected:
        raise DifflabError(f"{card_path}: the card records no weights_sha256")
    actual = file_sha256(path)
    if actual != expected:
        raise DifflabError(
            f"{path}: sha256 {actual[:12]}… does not match {card_path.name} ({expected[:12]}…); the file is "
            f"corrupted or not the recipe's output — restore it or retrain with {train_hint}"
        )
    try:
        state = load_file(str(path), device="cpu")
    except Exception as err:
        raise DifflabError(f"{path}: not a readable safetensors file: {err}") from err
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, card


def _load_into(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DifflabError(
            f"{path}: weights do not fit the recipe (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def _resolve(file: str, weights: str | Path | None) -> Path:
    """``weights`` may be a file or a directory holding ``<file>.safetensors``; default the shipped one."""
    if weights is None:
        return WEIGHTS_DIR / f"{file}.safetensors"
    p = Path(weights)
    return p / f"{file}.safetensors" if p.is_dir() else p


def _train_hint(name: str, classes: tuple[int, ...] | None = None) -> str:
    extra = f" --classes {','.join(map(str, classes))}" if classes is not None else ""
    return f"`python -m difflab_core.testbed train {name}{extra}` (or difflab_core.testbed.train_digits)"


# ------------------------------------------------------------------------------------------ classifier


class DigitsProxy:
    """A trained digits classifier used as a quality proxy. Images are ``[N, 1, H, W]`` in [0, 1].

    ``model`` is the underlying `DigitsCNN` (input [−1, 1]); ``card`` its recipe card (``heldout_accuracy``).
    """

    def __init__(self, model: DigitsCNN, card: dict | None = None, *, batch_size: int = 512) -> None:
        self.model = model.eval()
        self.card = card or {}
        self.batch_size = batch_size
        self._reference: dict[tuple[int, ...], Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _apply(self, images: Tensor, fn: str) -> Tensor:
        x = _check_images(images, f"DigitsProxy.{fn}")
        outs = []
        for chunk in x.split(self.batch_size):
            chunk = chunk.to(self.device) * 2 - 1
            out = self.model.features(chunk) if fn == "features" else self.model(chunk)
            outs.append(out.float().cpu())
        return torch.cat(outs)

    def logits(self, images: Tensor) -> Tensor:
        """Class logits ``[N, 10]``."""
        return self._apply(images, "logits")

    def predict(self, images: Tensor) -> Tensor:
        """Predicted labels ``[N]``."""
        return self.logits(images).argmax(dim=1)

    def accuracy(self, images: Tensor, labels: Tensor | Sequence[int] | int) -> float:
        """Share of images classified as ``labels`` (one label per image, or one for all)."""
        pred = self.predict(images)
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(len(pred))
        if labels.shape != pred.shape:
            raise DifflabError(f"DigitsProxy.accuracy: {len(pred)} images but {labels.numel()} labels")
        return float((pred == labels).float().mean())

    def confidence(self, images: Tensor) -> dict[str, float]:
        """Mean max-probability, mean entropy (nats) and the predicted class shares."""
        probs = self.logits(images).softmax(dim=1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
        shares = torch.bincount(probs.argmax(dim=1), minlength=10).float() / len(probs)
        return {
            "confidence": float(probs.max(dim=1).values.mean()),
            "entropy": float(entropy.mean()),
            "class_shares": [round(float(s), 4) for s in shares],
        }

    def features(self, images: Tensor) -> Tensor:
        """Penultimate-layer features ``[N, 128]`` (before its ReLU)."""
        return self._apply(images, "features")

    def reference_features(self, classes: Iterable[int] | None = None) -> Tensor:
        """Features of all real digits (of ``classes``), cached."""
        key = _normalise_classes(classes)
        if key not in self._reference:
            self._reference[key] = self.features(real_digits(key)[0])
        return self._reference[key]

    def frechet(
        self, images_a: Tensor, images_b: Tensor | None = None, *, classes: Iterable[int] | None = None
    ) -> float:
        """Fréchet distance in `features` between ``images_a`` and ``images_b``.

        Without ``images_b`` the reference is the real digits set (all 1797, or those of ``classes``). FD is
        biased upward at small sizes: compare like with like (e.g. 256 real digits give about the floor).
        """
        from ..metrics import frechet_distance

        fb = self.reference_features(classes) if images_b is None else self.features(images_b)
        fa = self.features(images_a)
        if len(fa) < 2 or len(fb) < 2:
            raise DifflabError("DigitsProxy.frechet: each side needs at least two images")
        return frechet_distance(fa.double().numpy(), fb.double().numpy())


def digits_classifier(
    weights: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> DigitsProxy:
    """The shipped clean digits classifier as a `DigitsProxy` (no training, no network)."""
    from ..device import resolve_device

    path = _resolve(CLASSIFIER_RECIPE.file, weights)
    state, card = _load_checked(path, _train_hint(CLASSIFIER_RECIPE.name))
    recipe = _recipe_from_card(card, path)
    model = _build_classifier(recipe)
    _load_into(model, state, path)
    return DigitsProxy(model.to(resolve_device(device)).eval(), card)


def digits_noisy_classifier(weights: str | Path | None = None, *, device: str | torch.device = "cpu"):
    """The shipped noisy classifier p(y | x_t, t): a `TinyNoisyClassifier`, x_t in [−1, 1], t in [0, 1000)."""
    from ..device import resolve_device

    path = _resolve(NOISY_CLASSIFIER_RECIPE.file, weights)
    state, card = _load_checked(path, _train_hint(NOISY_CLASSIFIER_RECIPE.name))
    model = _build_classifier(_recipe_from_card(card, path))
    _load_into(model, state, path)
    model.card = card
    return model.to(resolve_device(device)).eval()


# --------------------------------------------------------------------------------------------- sampling


@torch.no_grad()
def _sample(
    unet,
    scheduler,
    n: int,
    *,
    labels: Tensor | None = None,
    guidance_scale: float = 1.0,
    num_inference_steps: int = 50,
    seed: int = 0,
    eta: float = 0.0,
    batch_size: int = 256,
    sampler: str = "ddim",
) -> Tensor:
    """Samples ``[n, 1, 16, 16]`` in [0, 1] by DDIM (or ancestral DDPM), with CFG on the null class."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if sampler not in ("ddim", "ddpm"):
        raise DifflabError(f"sampler={sampler!r}: use 'ddim' or 'ddpm'")
    device = next(unet.parameters()).device
    config = dict(scheduler.config)
    gen = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(n, 1, SIZE, SIZE, generator=gen)
    outs = []
    for start in range(0, n, batch_size):
        x = noise[start : start + batch_size].to(device)
        sched = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(config)
        sched.set_timesteps(num_inference_steps)
        y = None if labels is None else labels[start : start + batch_size].to(device)
        for t in sched.timesteps:
            if y is None:
                eps = unet(x, t).sample
            elif guidance_scale == 1.0:
                eps = unet(x, t, class_labels=y).sample
            else:
                both = unet(
                    torch.cat([x, x]), t, class_labels=torch.cat([y, torch.full_like(y, NULL_CLASS)])
                ).sample
                cond, uncond = both.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
            step_kwargs = {"eta": eta} if sampler == "ddim" else {}
            x = sched.step(eps, t, x, generator=gen, **step_kwargs).prev_sample
        outs.append(((x.float().cpu() + 1) / 2).clamp(0.0, 1.0))
    return torch.cat(outs)


# ------------------------------------------------------------------------------------------------ DDPMs


@dataclass
class DigitsDDPM:
    """What `digits_ddpm` returns: an unconditional `UNet2DModel` on 16×16 digits and its `DDPMScheduler`.

    ``train_images`` [N, 1, 16, 16] in [0, 1] and ``train_labels`` are the digits of ``classes`` it was trained
    on; ``card`` is the recipe card of its weights.
    """

    unet: Any
    scheduler: Any
    classes: tuple[int, ...]
    train_images: Tensor
    train_labels: Tensor
    card: dict = field(default_factory=dict)

    def pipeline(self):
        """A `diffusers.DDPMPipeline` over this model (images in [0, 1] as PIL or numpy)."""
        from diffusers import DDPMPipeline

        pipe = DDPMPipeline(unet=self.unet, scheduler=self.scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample(
        self, n: int, *, num_inference_steps: int = 50, seed: int = 0, sampler: str = "ddim", **kw
    ) -> Tensor:
        """``n`` samples ``[n, 1, 16, 16]`` in [0, 1] (DDIM, eta 0, by default)."""
        return _sample(
            self.unet,
            self.scheduler,
            n,
            num_inference_steps=num_inference_steps,
            seed=seed,
            sampler=sampler,
            **kw,
        )


def _ddpm_from_file(
    recipe_name: str, file: str, classes: tuple[int, ...], weights, device
) -> tuple[Any, Any, dict]:
    from diffusers import DDPMScheduler

    from ..device import resolve_device

    path = _resolve(file, weights)
    hint_classes = None if recipe_name != "digits" or classes == _ALL else classes
    state, card = _load_checked(path, _train_hint(recipe_name, hint_classes))
    recipe = _recipe_from_card(card, path)
    if not isinstance(recipe, DigitsRecipe):
        raise DifflabError(f"{path}: its card describes a classifier, not a DDPM")
    if tuple(recipe.classes) != classes:
        raise DifflabError(f"{path}: trained on classes {list(recipe.classes)}, not {list(classes)}")
    unet = build_unet(recipe)
    _load_into(unet, state, path)
    unet = unet.to(resolve_device(device)).eval().requires_grad_(False)
    return unet, DDPMScheduler(**scheduler_config(recipe)), card


def _subset_file(classes: tuple[int, ...]) -> str:
    return "digits_ddpm_c" + "".join(map(str, classes))


def digits_ddpm(
    classes: Iterable[int] | None = None,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> DigitsDDPM:
    """The unconditional digits DDPM (no training, no network).

    ``classes=None`` (or all ten) loads the model trained on all digits; ``classes=(0, 1, 2, 3, 4)`` the shipped
    subset model. Other subsets must be trained first (`train_digits("digits", DIR, classes=...)`) and loaded
    with ``weights=DIR``. ``weights`` may also name a ``.safetensors`` file with its card beside it.
    """
    wanted = _normalise_classes(classes)
    if wanted == _ALL:
        name, file = DDPM_RECIPE.name, DDPM_RECIPE.file
    else:
        name, file = "digits", _subset_file(wanted)
        if wanted != SHIPPED_SUBSET and weights is None:
            raise DifflabError(
                f"digits_ddpm(classes={list(wanted)}): only all ten classes and {list(SHIPPED_SUBSET)} ship with "
                f"difflab_core; train this subset with {_train_hint('digits', wanted)} --output DIR "
                f"(≈ 3 CPU-minutes), then load it with digits_ddpm(classes=..., weights=DIR)"
            )
    unet, scheduler, card = _ddpm_from_file(name, file, wanted, weights, device)
    images, labels = real_digits(wanted)
    return DigitsDDPM(unet, scheduler, wanted, images, labels, card)


def _nearest(images: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """RMSE [N] to the nearest of ``keys`` [K, 1, 16, 16] and its index [N] (both in [0, 1])."""
    q = _check_images(images, "is_memorized").flatten(1).double()
    dist, idx = knn(q, keys.flatten(1).double(), metric="l2")
    return dist[:, 0].div(math.sqrt(q.shape[1])).float(), idx[:, 0]


@dataclass
class MemorizedDigits:
    """What `digits_ddpm_memorized` returns.

    ``unet``: class-conditional `UNet2DModel` (labels 0–9, ``null_class`` 10 for CFG), v-prediction;
    ``scheduler``: its `DDPMScheduler`; ``noisy_classifier``: `TinyNoisyClassifier` p(y | x_t, t) on the same
    schedule (x_t in [−1, 1], t in [0, 1000)); ``clean_classifier``: the independent `DigitsProxy`;
    ``planted`` / ``planted_labels`` / ``planted_index``: the planted images [k, 1, 16, 16] in [0, 1], their
    labels and rows in ``train_images``; ``plant_weight``: their duplication; ``train_images`` [1797, 1, 16, 16]
    in [0, 1] and ``train_labels``: the distinct training images.
    """

    unet: Any
    scheduler: Any
    noisy_classifier: nn.Module
    clean_classifier: DigitsProxy
    planted: Tensor
    planted_labels: Tensor
    planted_index: Tensor
    plant_weight: int
    train_images: Tensor
    train_labels: Tensor
    card: dict = field(default_factory=dict)
    null_class: int = NULL_CLASS

    def nearest(self, images: Tensor, against: str = "planted") -> tuple[Tensor, Tensor]:
        """(RMSE [N], index [N]) of the nearest planted (or training) image; images in [0, 1]."""
        if against not in ("planted", "train"):
            raise DifflabError(f"against={against!r}: use 'planted' or 'train'")
        return _nearest(images, self.planted if against == "planted" else self.train_images)

    def is_memorized(self, images: Tensor, threshold: float = 0.1, *, against: str = "planted") -> Tensor:
        """Bool [N]: the nearest planted (or, ``against="train"``, training) image is within RMSE ``threshold``.

        Planted images are isolated (no other digit within RMSE 0.14), so 0.1 separates copies from look-alikes.
        Against the whole training set 0.1 is too loose for digits (72 % of real digits have another digit
        within 0.1); use about 0.05 there.
        """
        return self.nearest(images, against)[0] < threshold

    def generate(
        self,
        labels: Tensor | Sequence[int] | int,
        *,
        n: int | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 50,
        seed: int = 0,
        sampler: str = "ddim",
        **kw,
    ) -> Tensor:
        """Class-conditional samples ``[N, 1, 16, 16]`` in [0, 1]; CFG on the null class when scale ≠ 1.

        ``labels``: one per sample, or one label repeated ``n`` times.
        """
        y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if n is not None:
            if y.numel() != 1:
                raise DifflabError("generate: pass n only with a single label")
            y = y.expand(n).clone()
        if y.numel() == 0 or bool(((y < 0) | (y > NULL_CLASS)).any()):
            raise DifflabError(f"generate: labels must be in 0..{NULL_CLASS} ({NULL_CLASS} = unconditional)")
        return _sample(
            self.unet,
            self.scheduler,
            len(y),
            labels=y,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            seed=seed,
            sampler=sampler,
            **kw,
        )


def _planted_rows(recipe: DigitsRecipe, images: Tensor, labels: Tensor) -> Tensor:
    """Per planted class the most typical digit among the isolated ones (nearest other digit ≥ isolation)."""
    f = images.flatten(1).double()
    d = torch.cdist(f, f).div(math.sqrt(f.shape[1]))
    d.fill_diagonal_(math.inf)
    nn_dist = d.min(dim=1).values
    rows = []
    for c in recipe.planted_classes:
        members = torch.nonzero(labels == c).flatten()
        mean = f[members].mean(dim=0)
        isolated = members[nn_dist[members] >= recipe.plant_isolation]
        if len(isolated) == 0:
            isolated = members[nn_dist[members].argmax()].reshape(1)
        typical = (f[isolated] - mean).pow(2).mean(dim=1)
        rows.append(int(isolated[typical.argmin()]))
    return torch.tensor(rows, dtype=torch.long)


def _companion(weights: str | Path | None, file: str) -> Path | None:
    """``weights``'s directory if it holds ``<file>.safetensors``, else None (the shipped file)."""
    if weights is None:
        return None
    folder = Path(weights) if Path(weights).is_dir() else Path(weights).parent
    return folder if (folder / f"{file}.safetensors").is_file() else None


def digits_ddpm_memorized(
    weights: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> MemorizedDigits:
    """The class-conditional digits DDPM with planted duplicates, its noisy and clean classifiers.

    ``weights``: a directory holding ``digits_ddpm_memorized.safetensors`` (or that file); the classifiers
    come from the same directory when they are there, else the shipped ones. No training, no network.
    """
    unet, scheduler, card = _ddpm_from_file(
        MEMORIZED_RECIPE.name, MEMORIZED_RECIPE.file, _ALL, weights, device
    )
    recipe = _recipe_from_card(card, _resolve(MEMORIZED_RECIPE.file, weights))
    noisy = digits_noisy_classifier(_companion(weights, NOISY_CLASSIFIER_RECIPE.file), device=device)
    if noisy.card.get("noise_schedule") != _noise_schedule(scheduler_config(recipe)):
        raise DifflabError(
            "the noisy classifier was trained on another noise schedule than the memorized DDPM"
        )
    clean = digits_classifier(_companion(weights, CLASSIFIER_RECIPE.file), device=device)
    images, labels = real_digits()
    rows = _planted_rows(recipe, images, labels)
    if card.get("planted_index") is not None and card["planted_index"] != rows.tolist():
        raise DifflabError(f"planted images {rows.tolist()} differ from the card's {card['planted_index']}")
    return MemorizedDigits(
        unet,
        scheduler,
        noisy.requires_grad_(False),
        clean,
        images[rows],
        labels[rows],
        rows,
        recipe.plant_weight,
        images,
        labels,
        card,
    )


# --------------------------------------------------------------------------------------------- training


class _TensorData(torch.utils.data.Dataset):
    """Items ``(image [1,16,16] in [−1,1], label)`` in ``order`` (indices may repeat: duplication)."""

    def __init__(self, images: Tensor, labels: Tensor, order: Sequence[int]) -> None:
        self.images = images * 2 - 1
        self.labels = labels
        self.order = list(order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        i = self.order[index]
        return self.images[i], self.labels[i]


def _shift(x: Tensor, max_shift: int) -> Tensor:
    """Random integer translation per image (zero = −1 background padding), from the global RNG."""
    if max_shift <= 0:
        return x
    b = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (b,))
    dy = torch.randint(0, 2 * max_shift + 1, (b,))
    return torch.stack([pad[i, :, dy[i] : dy[i] + SIZE, dx[i] : dx[i] + SIZE] for i in range(b)])


@torch.no_grad()
def _classifier_accuracy(model, recipe: ClassifierRecipe, images: Tensor, labels: Tensor) -> dict:
    model = model.eval()
    x = images * 2 - 1
    if recipe.kind == "clean":
        return {
            "heldout_accuracy": float((model(x).argmax(1) == labels).float().mean()),
            "heldout_n": len(labels),
        }
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**scheduler_config(MEMORIZED_RECIPE))
    gen = torch.Generator().manual_seed(1234)
    buckets = {}
    for lo in range(0, 1000, 200):
        t = torch.randint(lo, lo + 200, (len(x),), generator=gen)
        noisy = sched.add_noise(x, torch.randn(x.shape, generator=gen), t)
        buckets[f"t{lo}-{lo + 199}"] = round(float((model(noisy, t).argmax(1) == labels).float().mean()), 4)
    return {"heldout_accuracy_by_t": buckets, "heldout_n": len(labels)}


def _write_card(output_dir: Path, recipe, result, weights: Path, dtype: str, extra: dict) -> dict:
    import diffusers

    card = {
        "name": recipe.name,
        "file": weights.name,
        "recipe_type": type(recipe).__name__,
        "recipe": asdict(recipe),
        "steps": result.step,
        "final_loss": result.last_loss,
        "loss_history": [[s, round(v, 5)] for s, v in result.loss_history],
        **extra,
        "weights_dtype": dtype,
        "weights_sha256": file_sha256(weights),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
    }
    (output_dir / f"{recipe.file}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def train_digits(
    name: str,
    output_dir: str | Path,
    *,
    classes: Iterable[int] | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    checkpoint_every: int = 250,
    **overrides,
) -> Path:
    """Train recipe ``name`` of `RECIPES` into ``output_dir`` (seeded, resumable); returns the weights file.

    ``name``: "digits-classifier", "digits", "digits-subset", "digits-memorized" or "digits-noisy-classifier".
    ``classes`` (DDPM recipes "digits"/"digits-subset" only) trains an unconditional model on those digits;
    the file is then ``digits_ddpm_c<digits>.safetensors``. ``overrides`` replace recipe fields. Re-running
    with the same ``output_dir`` resumes from its latest checkpoint. Writes ``<file>.safetensors`` and
    ``<file>.json`` (the card) beside the Trainer's checkpoints and ``train_log.jsonl``.
    """
    if name not in RECIPES:
        raise DifflabError(f"unknown digits recipe {name!r}; use one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    if classes is not None:
        if name not in ("digits", "digits-subset"):
            raise DifflabError(
                f"classes= applies to the unconditional recipes 'digits'/'digits-subset', not {name!r}"
            )
        wanted = _normalise_classes(classes)
        file = DDPM_RECIPE.file if wanted == _ALL else _subset_file(wanted)
        recipe = replace(recipe, classes=wanted, file=file)
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    try:
        recipe = replace(recipe, **overrides)
    except TypeError as err:
        raise DifflabError(f"train_digits: {err}") from err
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.monotonic(), time.process_time()
    if isinstance(recipe, ClassifierRecipe):
        weights, result, extra = _train_classifier(recipe, output_dir, progress, checkpoint_every)
    else:
        weights, result, extra = _train_ddpm(recipe, output_dir, progress, checkpoint_every)
    extra["train_wall_s"] = round(time.monotonic() - start, 1)
    extra["train_cpu_s"] = round(time.process_time() - cpu_start, 1)
    extra["torch_threads"] = torch.get_num_threads()
    _write_card(output_dir, recipe, result, weights, extra.pop("_dtype"), extra)
    return weights


def _train_config(recipe, progress: bool, checkpoint_every: int, ema_decay: float | None = None):
    from ..train import TrainConfig

    return TrainConfig(
        max_steps=recipe.max_steps,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        warmup_steps=min(recipe.warmup_steps, recipe.max_steps - 1),
        lr_schedule=recipe.lr_schedule,
        max_grad_norm=recipe.max_grad_norm,
        ema_decay=ema_decay,
        checkpoint_every=checkpoint_every,
        seed=recipe.train_seed,
        progress=progress,
        log_every=min(50, recipe.max_steps),
    )


def _train_classifier(recipe: ClassifierRecipe, output_dir: Path, progress: bool, checkpoint_every: int):
    from diffusers import DDPMScheduler

    from ..train import Trainer, seeded_loader

    images, labels = real_digits()
    train_idx, test_idx = digits_split(recipe.split_seed)
    dataset = _TensorData(images, labels, train_idx.tolist())
    model = _build_classifier(recipe)
    noise_scheduler = DDPMScheduler(**scheduler_config(MEMORIZED_RECIPE))

    def loss_fn(model, batch, step):
        x, y = batch
        x = _shift(x, recipe.max_shift)
        if recipe.kind == "clean":
            return F.cross_entropy(model(x), y)
        t = torch.randint(0, 1000, (x.shape[0],), device=x.device)
        noisy = noise_scheduler.add_noise(x, torch.randn_like(x), t)
        return F.cross_entropy(model(noisy, t), y)

    loader = seeded_loader(dataset, recipe.batch_size, seed=recipe.train_seed, drop_last=True)
    trainer = Trainer(model, loss_fn, loader, _train_config(recipe, progress, checkpoint_every), output_dir)
    result = trainer.fit(resume=True)
    trained = trainer.accelerator.unwrap_model(trainer.model).cpu()
    weights = output_dir / f"{recipe.file}.safetensors"
    dtype = _save_state(trained.state_dict(), weights)
    extra = {
        "_dtype": dtype,
        "split": {"seed": recipe.split_seed, "train": len(train_idx), "test": len(test_idx)},
        "data_fingerprint": _fingerprint(images, labels, train_idx),
        **_classifier_accuracy(trained, recipe, images[test_idx], labels[test_idx]),
    }
    if recipe.kind == "noisy":
        extra["noise_schedule"] = _noise_schedule(scheduler_config(MEMORIZED_RECIPE))
    return weights, result, extra


def _train_ddpm(recipe: DigitsRecipe, output_dir: Path, progress: bool, checkpoint_every: int):
    from diffusers import DDPMScheduler

    from ..train import Trainer, seeded_loader

    if recipe.num_class_embeds is None and (recipe.planted_classes or recipe.class_dropout):
        raise DifflabError("planting and class dropout need a class-conditional recipe (num_class_embeds)")
    all_images, all_labels = real_digits()
    keep = torch.isin(all_labels, torch.tensor(recipe.classes))
    images, labels = all_images[keep], all_labels[keep]
    order = list(range(len(images)))
    planted = torch.empty(0, dtype=torch.long)
    if recipe.planted_classes:
        planted = _planted_rows(recipe, images, labels)
        for row in planted.tolist():
            order += [row] * (recipe.plant_weight - 1)
    dataset = _TensorData(images, labels, order)
    noise_scheduler = DDPMScheduler(**scheduler_config(recipe))
    unet = build_unet(recipe)
    conditional = recipe.num_class_embeds is not None

    def loss_fn(model, batch, step):
        x0, y = batch
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        if conditional:
            drop = torch.rand(y.shape[0], device=y.device) < recipe.class_dropout
            y = torch.where(drop, torch.full_like(y, NULL_CLASS), y)
            pred = model(noisy, t, class_labels=y).sample
        else:
            pred = model(noisy, t).sample
        target = noise if recipe.prediction_type == "epsilon" else noise_scheduler.get_velocity(x0, noise, t)
        return F.mse_loss(pred, target)

    loader = seeded_loader(dataset, recipe.batch_size, seed=recipe.train_seed, drop_last=True)
    config = _train_config(recipe, progress, checkpoint_every, ema_decay=recipe.ema_decay)
    trainer = Trainer(unet, loss_fn, loader, config, output_dir)
    result = trainer.fit(resume=True)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.ema is not None:
        with trainer.ema.average_weights(trained):
            state = {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()}
    else:
        state = {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()}
    weights = output_dir / f"{recipe.file}.safetensors"
    dtype = _save_state(state, weights)
    extra = {
        "_dtype": dtype,
        "weights": "ema" if trainer.ema is not None else "final",
        "n_params": sum(v.numel() for v in state.values()),
        "n_images": len(images),
        "epoch_size": len(order),
        "data_fingerprint": _fingerprint(images, labels, torch.tensor(order)),
        "scheduler": scheduler_config(recipe),
    }
    if recipe.planted_classes:
        extra["planted_index"] = planted.tolist()
        extra["planted_labels"] = labels[planted].tolist()
    return weights, result, extra


# ------------------------------------------------------------------------------------------------ verify


def verify_digits(
    *,
    n_samples: int = 256,
    num_inference_steps: int = 50,
    per_class: int = 24,
    memorized_steps: int = 50,
    guidance_scales: Sequence[float] = (1.0, 3.0),
    copy_threshold: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    include_subset: bool = True,
) -> dict:
    """Measure the shipped digits testbeds from freshly generated samples (DDIM, eta 0).

    ``ddpm``: FD (`DigitsProxy.frechet`) of ``n_samples`` samples against all real digits, the FD of as many
    real digits (the floor at that size), the clean classifier's confidence / entropy / class shares.
    ``subset``: the same for the shipped subset model against its classes, and its in-subset share.
    ``memorized``: per-class accuracy of ``per_class`` samples per class by the clean classifier at each
    guidance scale, and for the planted classes the share of samples within RMSE ``copy_threshold`` of their
    planted image (the same figure for unplanted classes against their nearest training digit, for contrast).
    """
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    proxy = digits_classifier(device=device)
    out["classifier"] = {"heldout_accuracy": proxy.card.get("heldout_accuracy")}
    real, _ = real_digits()
    pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed + 1))[:n_samples]

    def unconditional(model: DigitsDDPM, classes: tuple[int, ...]) -> dict:
        start = time.monotonic()
        samples = model.sample(n_samples, num_inference_steps=num_inference_steps, seed=seed)
        reference, _ = real_digits(classes)
        ref_pick = torch.randperm(len(reference), generator=torch.Generator().manual_seed(seed + 1))[
            :n_samples
        ]
        conf = proxy.confidence(samples)
        res = {
            "n": n_samples,
            "steps": num_inference_steps,
            "fd": round(proxy.frechet(samples, classes=classes), 3),
            "fd_real_same_n": round(proxy.frechet(reference[ref_pick], classes=classes), 3),
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in conf.items()},
            "wall_s": round(time.monotonic() - start, 1),
        }
        if classes != _ALL:
            res["in_classes_share"] = round(sum(conf["class_shares"][c] for c in classes), 4)
        return res

    out["ddpm"] = unconditional(digits_ddpm(device=device), _ALL)
    out["ddpm"]["real_confidence"] = round(proxy.confidence(real[pick])["confidence"], 4)
    if include_subset:
        out["subset"] = {
            "classes": list(SHIPPED_SUBSET),
            **unconditional(digits_ddpm(SHIPPED_SUBSET, device=device), SHIPPED_SUBSET),
        }
    mem = digits_ddpm_memorized(device=device)
    planted_classes = mem.planted_labels.tolist()
    mres: dict[str, Any] = {
        "planted_labels": planted_classes,
        "planted_index": mem.planted_index.tolist(),
        "per_class": per_class,
        "steps": memorized_steps,
    }
    labels = torch.arange(10).repeat_interleave(per_class)
    for gs in guidance_scales:
        start = time.monotonic()
        samples = mem.generate(labels, guidance_scale=gs, num_inference_steps=memorized_steps, seed=seed)
        pred = mem.clean_classifier.predict(samples)
        acc = [round(float((pred[labels == c] == c).float().mean()), 4) for c in range(10)]
        rmse_p, idx_p = mem.nearest(samples, "planted")
        rmse_t, _ = mem.nearest(samples, "train")
        copies = {}
        for k, c in enumerate(planted_classes):
            sel = labels == c
            copies[str(c)] = round(
                float(((rmse_p[sel] < copy_threshold) & (idx_p[sel] == k)).float().mean()), 4
            )
        unplanted = ~torch.isin(labels, torch.tensor(planted_classes))
        planted_sel = ~unplanted
        mres[f"gs{gs:g}"] = {
            "accuracy": float(sum(acc) / 10),
            "accuracy_per_class": acc,
            "planted_copy_share": round(float((rmse_p[planted_sel] < copy_threshold).float().mean()), 4),
            "planted_copy_share_per_class": copies,
            "planted_copy_share_in_unplanted_classes": round(
                float((rmse_p[unplanted] < copy_threshold).float().mean()), 4
            ),
            "train_nn_rmse_median_unplanted": round(float(rmse_t[unplanted].median()), 4),
            "train_nn_below_0.05_unplanted": round(float((rmse_t[unplanted] < 0.05).float().mean()), 4),
            "fd": round(proxy.frechet(samples), 3),
            "wall_s": round(time.monotonic() - start, 1),
        }
    mres["noisy_classifier"] = mem.noisy_classifier.card.get("heldout_accuracy_by_t")
    out["memorized"] = mres
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out
