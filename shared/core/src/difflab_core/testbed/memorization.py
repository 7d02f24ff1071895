"""The memorization testbed: a small text-to-image model with planted global and local memorization.

It is a real `StableDiffusionPipeline`: a 1.5 M-parameter `UNet2DConditionModel` (v-prediction, cosine
schedule) over pixel-unshuffled 16×16×12 "latents" (`PixelShuffleVAE`, lossless), a 1-layer `CLIPTextModel`
and the real CLIP tokenizer (max length 16). Its recipe (`RECIPE`) follows ``notes/testbed-recipe.md``:
v-prediction (ε-prediction memorized nothing), 1–2 attention heads (16 kept attention uniform), duplication
by sampling weight. The trained weights ship in ``weights/``; `load_memorization_testbed()` never trains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DifflabError
from ..loading import file_sha256
from ..tiny import clip_tokenizer, seeded, tiny_text_encoder
from .memorization_data import MemorizationData, TestbedRecord, build_memorization_data
from .pixel_vae import PixelShuffleVAE

__all__ = [
    "AUDIT_SETTING",
    "RECIPE",
    "MemorizationRecipe",
    "MemorizationTestbed",
    "build_denoiser",
    "load_memorization_testbed",
    "train_memorization_testbed",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "memorization_testbed.safetensors"
CARD_FILE = WEIGHTS_DIR / "memorization_testbed.json"


@dataclass(frozen=True)
class MemorizationRecipe:
    """How the shipped weights were made (defaults = the measured recipe)."""

    data_seed: int = 0
    model_seed: int = 0
    train_seed: int = 0
    max_steps: int = 2400
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    lr_schedule: str = "cosine"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    caption_dropout: float = 0.1
    max_length: int = 16
    text_hidden: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    attention_head_dim: tuple[int, ...] = (1, 2, 2)
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"


RECIPE = MemorizationRecipe()


@dataclass(frozen=True)
class AuditSetting:
    """The documented sampling setting at which the testbed both memorizes and runs both CFG branches."""

    num_inference_steps: int = 50
    guidance_scale: float = 1.5
    guidance_rescale: float = 0.0


AUDIT_SETTING = AuditSetting()


def scheduler_config(recipe: MemorizationRecipe = RECIPE) -> dict:
    """The noise schedule shared by training (DDPM) and sampling (DDIM, trailing spacing).

    ``clip_sample`` off and ``steps_offset`` 1: `StableDiffusionPipeline` silently forces both anyway
    (``steps_offset`` does not move "trailing" timesteps).
    """
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": recipe.beta_schedule,
        "prediction_type": recipe.prediction_type,
        "clip_sample": False,
        "timestep_spacing": "trailing",
        "steps_offset": 1,
    }


def build_denoiser(recipe: MemorizationRecipe = RECIPE):
    """Random-initialised (UNet, text encoder) of the recipe; the text encoder's token table stays frozen."""
    from diffusers import UNet2DConditionModel

    with seeded(recipe.model_seed):
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=12,
            out_channels=12,
            block_out_channels=recipe.block_out_channels,
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            only_cross_attention=(True, False, False),
            cross_attention_dim=recipe.text_hidden,
            attention_head_dim=recipe.attention_head_dim,
            norm_num_groups=32,
        )
    text_encoder = tiny_text_encoder(
        recipe.text_hidden,
        num_layers=1,
        num_heads=2,
        max_length=recipe.max_length,
        seed=recipe.model_seed + 1,
    )
    text_encoder.get_input_embeddings().weight.requires_grad_(False)
    return unet, text_encoder


class TextToImageDenoiser(nn.Module):
    """UNet and text encoder trained jointly: ``forward(latents_t, t, input_ids) -> prediction``."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        context = self.text_encoder(input_ids)[0]
        return self.unet(noisy, t, encoder_hidden_states=context).sample


def _trainable_state(model: TextToImageDenoiser) -> dict[str, torch.Tensor]:
    frozen = "text_encoder.embeddings.token_embedding.weight"
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != frozen}


def _token_table_digest(text_encoder: nn.Module) -> str:
    w = text_encoder.get_input_embeddings().weight.detach().cpu().float()
    return hashlib.sha256(w.numpy().tobytes()).hexdigest()


class _TokenizedData(torch.utils.data.Dataset):
    """Training items expanded by duplication weight: {"pixel_values" [3,32,32] in [−1,1], "input_ids" [L]}."""

    def __init__(self, data: MemorizationData, tokenizer, max_length: int) -> None:
        ids = tokenizer(
            data.captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        ).input_ids
        self.pixels = data.images * 2 - 1
        self.ids = ids
        self.order = [i for i, w in enumerate(data.weights.tolist()) for _ in range(int(w))]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = self.order[index]
        return {"pixel_values": self.pixels[i], "input_ids": self.ids[i]}


def train_memorization_testbed(
    output_dir: str | Path,
    recipe: MemorizationRecipe = RECIPE,
    *,
    max_steps: int | None = None,
    progress: bool = True,
    checkpoint_every: int = 400,
) -> Path:
    """Train the testbed by its recipe (resumable; ≈ 12 CPU-minutes); returns the weights file written.

    The weights file holds everything trainable (the frozen token table is rebuilt from the recipe seed)
    and ``card.json`` beside it the recipe, the data fingerprint and the file's sha256.
    """
    from diffusers import DDPMScheduler

    from ..train import TrainConfig, Trainer, seeded_loader

    output_dir = Path(output_dir)
    data = build_memorization_data(recipe.data_seed)
    tokenizer = clip_tokenizer(model_max_length=recipe.max_length)
    dataset = _TokenizedData(data, tokenizer, recipe.max_length)
    empty_ids = tokenizer(
        "", padding="max_length", max_length=recipe.max_length, return_tensors="pt"
    ).input_ids
    noise_scheduler = DDPMScheduler(**scheduler_config(recipe))
    model = TextToImageDenoiser(*build_denoiser(recipe))

    def loss_fn(model, batch, step):
        latents = F.pixel_unshuffle(batch["pixel_values"], 2)
        ids = batch["input_ids"]
        drop = torch.rand(ids.shape[0], device=ids.device) < recipe.caption_dropout
        ids = torch.where(drop[:, None], empty_ids.to(ids.device), ids)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],), device=latents.device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        target = noise_scheduler.get_velocity(latents, noise, t)
        return F.mse_loss(model(noisy, t, ids), target)

    config = TrainConfig(
        max_steps=max_steps or recipe.max_steps,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup_steps,
        lr_schedule=recipe.lr_schedule,
        max_grad_norm=recipe.max_grad_norm,
        checkpoint_every=checkpoint_every,
        seed=recipe.train_seed,
        progress=progress,
    )
    loader = seeded_loader(dataset, recipe.batch_size, seed=recipe.train_seed, drop_last=True)
    trainer = Trainer(model, loss_fn, loader, config, output_dir)
    result = trainer.fit(resume=True)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    weights = output_dir / WEIGHTS_FILE.name
    save_weights_state(_trainable_state(trained), weights)
    card = {
        "name": "memorization",
        "recipe": asdict(recipe),
        "steps": result.step,
        "final_loss": result.last_loss,
        "data_fingerprint": data.fingerprint,
        "token_table_sha256": _token_table_digest(trained.text_encoder),
        "weights_sha256": file_sha256(weights),
        "audit_setting": asdict(AUDIT_SETTING),
    }
    (output_dir / CARD_FILE.name).write_text(json.dumps(card, indent=2) + "\n")
    return weights


def save_weights_state(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path))


@dataclass
class MemorizationTestbed:
    """What `load_memorization_testbed` returns.

    ``pipe``: a `StableDiffusionPipeline` (32×32 images); ``data``: the training set and ground truth;
    ``records``: evaluation prompts (kinds "global", "local", "none"); ``gt_images`` [8, 3, 32, 32] in [0, 1];
    ``masks`` [n_records, 32, 32] pixel masks per record (ones for global, the patch for local, zeros for none);
    ``audit``: the documented audit setting; ``card``: the recipe card of the shipped weights.
    """

    pipe: object
    data: MemorizationData
    records: list[TestbedRecord]
    gt_images: torch.Tensor
    masks: torch.Tensor
    audit: AuditSetting
    card: dict = field(default_factory=dict)

    @property
    def train_images(self) -> torch.Tensor:
        return self.data.images

    @property
    def captions(self) -> list[str]:
        return self.data.captions

    def prompts(self, kind: str | None = None) -> list[str]:
        """Captions of the evaluation records, optionally of one kind."""
        return [r.caption for r in self.records if kind is None or r.kind == kind]

    def generate(self, prompts: list[str], *, seed: int = 0, n: int = 1, **kwargs) -> torch.Tensor:
        """Images [len(prompts)·n, 3, 32, 32] in [0, 1] at the audit setting (keyword overrides allowed)."""
        setting = asdict(self.audit) | kwargs
        gen = torch.Generator("cpu").manual_seed(seed)
        return self.pipe(prompts, num_images_per_prompt=n, generator=gen, output_type="pt", **setting).images


def load_memorization_testbed(
    weights: str | Path | None = None, *, device: str | torch.device = "auto"
) -> MemorizationTestbed:
    """Load the shipped testbed (no training, no network). ``weights`` overrides the shipped file."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file

    from ..device import resolve_device

    path = Path(weights) if weights is not None else WEIGHTS_FILE
    card_path = path.with_suffix(".json")
    if not path.is_file():
        raise DifflabError(
            f"{path}: testbed weights not found; train them with `python -m difflab_core.testbed train memorization`"
        )
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if card.get("weights_sha256") and card["weights_sha256"] != file_sha256(path):
        raise DifflabError(
            f"{path}: sha256 does not match {card_path.name}; the file is not the recipe's output"
        )
    recipe = MemorizationRecipe(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in card.get("recipe", {}).items()}
    )
    model = TextToImageDenoiser(*build_denoiser(recipe))
    if card.get("token_table_sha256") and card["token_table_sha256"] != _token_table_digest(
        model.text_encoder
    ):
        raise DifflabError(f"{path}: this torch rebuilds a different frozen token table than the recipe's")
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in missing if not k.endswith("token_embedding.weight")]
    if missing or unexpected:
        raise DifflabError(
            f"{path}: weights do not fit the recipe (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    data = build_memorization_data(recipe.data_seed)
    pipe = StableDiffusionPipeline(
        vae=PixelShuffleVAE(),
        text_encoder=model.text_encoder.eval(),
        tokenizer=clip_tokenizer(model_max_length=recipe.max_length),
        unet=model.unet.eval(),
        scheduler=DDIMScheduler(**scheduler_config(recipe)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(resolve_device(device))
    masks = torch.stack([data.masks[r.mask] for r in data.records])
    return MemorizationTestbed(pipe, data, data.records, data.gt_images, masks, AUDIT_SETTING, card)
