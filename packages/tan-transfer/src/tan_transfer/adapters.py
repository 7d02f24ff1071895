"""Adapters on a frozen diffusers UNet: the ANT parallel adapter [code `adapter.py`], peft LoRA, or full weights.

ANT adapters act through forward hooks on the UNet's own modules, so the base state-dict keys never change and
any pipeline holding the UNet samples with the adapters. `AdaptedUNet` wraps the UNet and its adapters as one
module (what Accelerate prepares). `save_adapters` / `load_adapters` write and strictly read
``adapter_model.safetensors`` + ``tan_adapter_config.json``; the base UNet's config hash is checked on load.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import LORA_TARGETS
from .errors import TanTransferError

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "AdaptedUNet",
    "AntAdapter",
    "AntAdapterSet",
    "add_lora",
    "base_config_hash",
    "build_adapted_unet",
    "fuse_lora",
    "load_adapters",
    "save_adapters",
    "trainable_fraction",
]

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "tan_adapter_config.json"
OFFICIAL_INIT_STD = 2e-4


def _groups(channels: int, wanted: int) -> int:
    """The largest group count <= ``wanted`` that divides ``channels`` (GroupNorm fallback for odd widths)."""
    g = max(1, min(wanted, channels))
    while channels % g:
        g -= 1
    return g


class AntAdapter(nn.Module):
    """The ANT parallel adapter ψ(x, temb): ``[B, C_in, H, W] -> [B, C_out, H, W]``.

    AvgPool(p) → GroupNorm(C_in/2) → Conv3×3(C_in→d) → tokens (+ Linear(SiLU(temb))) → one pre-LN transformer
    layer (MHSA, MLP ratio 4, GELU, dropout) → nearest upsample to (H, W) → GroupNorm(d/4) → Conv3×3(d→C_out).
    The pool is clipped to min(p, H, W) so tiny feature maps work.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dim: int = 8,
        heads: int = 2,
        dropout: float = 0.1,
        pool: int = 4,
        temb_channels: int | None = None,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise TanTransferError("dim", f"{dim} is not divisible by heads={heads}")
        self.pool = pool
        self.norm_in = nn.GroupNorm(_groups(in_channels, max(1, in_channels // 2)), in_channels)
        self.proj_in = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, dim) if temb_channels else None
        self.block = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.norm_out = nn.GroupNorm(_groups(dim, max(1, dim // 4)), dim)
        self.proj_out = nn.Conv2d(dim, out_channels, 3, padding=1)

    def reset_parameters(self, init: str = "zero_out") -> None:
        """ "official": every conv/linear weight ~ N(0, 2e-4²), biases 0 [code]; "zero_out" also zeroes proj_out."""
        if init not in ("official", "zero_out"):
            raise TanTransferError("init", f"{init!r}: use 'zero_out' or 'official'")
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.normal_(0.0, OFFICIAL_INIT_STD)
                    if m.bias is not None:
                        m.bias.zero_()
                elif isinstance(m, nn.MultiheadAttention):
                    m.in_proj_weight.normal_(0.0, OFFICIAL_INIT_STD)
                    m.in_proj_bias.zero_()
            if init == "zero_out":
                self.proj_out.weight.zero_()

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        out_dtype = x.dtype
        x = x.to(self.proj_in.weight.dtype)
        h, w = x.shape[-2:]
        p = min(self.pool, h, w)
        y = F.avg_pool2d(x, p) if p > 1 else x
        y = self.proj_in(self.norm_in(y))
        b, d, hh, ww = y.shape
        tokens = y.flatten(2).transpose(1, 2)
        if temb is not None and self.temb_proj is not None:
            tokens = tokens + self.temb_proj(F.silu(temb.to(tokens.dtype)))[:, None, :]
        tokens = self.block(tokens)
        y = tokens.transpose(1, 2).reshape(b, d, hh, ww)
        if (hh, ww) != (h, w):
            y = F.interpolate(y, size=(h, w), mode="nearest")
        return self.proj_out(self.norm_out(y)).to(out_dtype)


def _is_cross_attention_unet(unet: nn.Module) -> bool:
    return type(unet).__name__ == "UNet2DConditionModel"


def _attention_sites(unet: nn.Module) -> list[tuple[str, nn.Module, int, int]]:
    """(name, module, C_in, C_out) of the attention blocks adapters sit beside."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    sites = []
    if _is_cross_attention_unet(unet):
        for name, m in unet.named_modules():
            if isinstance(m, Transformer2DModel):
                sites.append((name, m, m.in_channels, m.out_channels))
    else:
        for name, m in unet.named_modules():
            if isinstance(m, Attention):
                sites.append((name, m, m.query_dim, m.out_dim))
    return sites


def _key(name: str) -> str:
    return name.replace(".", "__")


class AntAdapterSet(nn.Module):
    """ANT adapters for every ResnetBlock2D, every attention block and the output head of a UNet.

    ``adapters[key]`` is keyed by the host module's name (dots as ``__``); ``end`` sits parallel to
    ``conv_norm_out → conv_act → conv_out``. Build with `from_unet`; `attach` registers the hooks.
    """

    def __init__(self, adapters: dict[str, AntAdapter], end: AntAdapter, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict(adapters)
        self.end = end
        self.hparams = hparams
        self.scale = 1.0
        self._handles: list[Any] = []
        self._end_input: Tensor | None = None

    @classmethod
    def from_unet(
        cls,
        unet: nn.Module,
        dim: int = 8,
        heads: int = 2,
        dropout: float = 0.1,
        pool: int = 4,
        init: str = "zero_out",
    ) -> AntAdapterSet:
        """Adapters sized for ``unet`` (a diffusers `UNet2DModel` or `UNet2DConditionModel`), not yet attached."""
        from diffusers.models.resnet import ResnetBlock2D

        hp = {"dim": dim, "heads": heads, "dropout": dropout, "pool": pool, "init": init}
        kw = {"dim": dim, "heads": heads, "dropout": dropout, "pool": pool}
        adapters: dict[str, AntAdapter] = {}
        for name, m in unet.named_modules():
            if isinstance(m, ResnetBlock2D):
                temb = m.time_emb_proj.in_features if getattr(m, "time_emb_proj", None) is not None else None
                adapters[_key(name)] = AntAdapter(m.in_channels, m.out_channels, temb_channels=temb, **kw)
        for name, _, c_in, c_out in _attention_sites(unet):
            adapters[_key(name)] = AntAdapter(c_in, c_out, **kw)
        if not adapters:
            raise TanTransferError(type(unet).__name__, "has no ResnetBlock2D or attention blocks to adapt")
        c_last = unet.config.block_out_channels[0]
        end = AntAdapter(c_last, unet.config.out_channels, **kw)
        out = cls(adapters, end, hp)
        for adapter in out.modules():
            if isinstance(adapter, AntAdapter):
                adapter.reset_parameters(init)
        return out

    # -- hooks ----------------------------------------------------------------------------------------

    def attach(self, unet: nn.Module) -> AntAdapterSet:
        """Register forward hooks on ``unet`` that add each adapter's output (× `scale`) to its host's."""
        from diffusers.models.resnet import ResnetBlock2D

        self.detach()
        modules = dict(unet.named_modules())
        for key, adapter in self.adapters.items():
            name = key.replace("__", ".")
            host = modules.get(name)
            if host is None:
                raise TanTransferError(
                    name, f"the adapters name a module {type(unet).__name__} does not have"
                )
            hook = (
                self._resnet_hook(adapter)
                if isinstance(host, ResnetBlock2D)
                else self._attention_hook(adapter)
            )
            self._handles.append(host.register_forward_hook(hook, with_kwargs=True))
        first = unet.conv_norm_out if unet.conv_norm_out is not None else unet.conv_out
        self._handles.append(first.register_forward_pre_hook(self._capture_end_input))
        self._handles.append(unet.conv_out.register_forward_hook(self._end_hook))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _resnet_hook(self, adapter: AntAdapter):
        def hook(module, args, kwargs, output):
            if self.scale == 0.0:
                return output
            x = args[0] if args else kwargs["input_tensor"]
            temb = args[1] if len(args) > 1 else kwargs.get("temb")
            return output + self.scale * adapter(x, temb)

        return hook

    def _attention_hook(self, adapter: AntAdapter):
        def hook(module, args, kwargs, output):
            if self.scale == 0.0:
                return output
            x = args[0] if args else kwargs["hidden_states"]
            if isinstance(output, tuple):
                return (output[0] + self.scale * adapter(x), *output[1:])
            if hasattr(output, "sample"):
                output.sample = output.sample + self.scale * adapter(x)
                return output
            return output + self.scale * adapter(x)

        return hook

    def _capture_end_input(self, module, args):
        self._end_input = args[0]

    def _end_hook(self, module, args, output):
        x, self._end_input = self._end_input, None
        if self.scale == 0.0 or x is None:
            return output
        return output + self.scale * self.end(x)


# ----------------------------------------------------------------------------------------------- LoRA


def add_lora(
    unet: nn.Module, rank: int = 4, targets: tuple[str, ...] = LORA_TARGETS, alpha: float | None = None
) -> nn.Module:
    """Inject peft LoRA (B = 0, so the output is unchanged) into ``unet`` in place; returns it.

    `UNet2DConditionModel` uses its ``add_adapter``; `UNet2DModel` (no ``PeftAdapterMixin``) goes through
    ``peft.inject_adapter_in_model``. Only LoRA weights are left trainable.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise TanTransferError("rank", f"must be an int >= 1, got {rank!r}")
    config = LoraConfig(
        r=rank,
        lora_alpha=float(alpha if alpha is not None else rank),
        target_modules=list(targets),
        init_lora_weights=True,
        lora_dropout=0.0,
    )
    try:
        if hasattr(unet, "add_adapter") and _is_cross_attention_unet(unet):
            unet.add_adapter(config)
        else:
            inject_adapter_in_model(config, unet)
    except ValueError as err:
        raise TanTransferError(
            "lora targets", f"{list(targets)} do not match {type(unet).__name__}: {err}"
        ) from err
    for name, p in unet.named_parameters():
        p.requires_grad_("lora_" in name)
    return unet


def _lora_layers(unet: nn.Module) -> Iterator[nn.Module]:
    from peft.tuners.lora import LoraLayer

    for m in unet.modules():
        if isinstance(m, LoraLayer):
            yield m


def fuse_lora(model: AdaptedUNet) -> AdaptedUNet:
    """Merge LoRA weights into the base weights (zero inference overhead); returns ``model``."""
    if model.kind != "lora":
        raise TanTransferError("fuse_lora", f"the model holds {model.kind!r} adapters, not LoRA")
    for layer in _lora_layers(model.unet):
        layer.merge()
    model.fused = True
    return model


# ---------------------------------------------------------------------------------------- AdaptedUNet


def _base_named_parameters(unet: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, p in unet.named_parameters():
        if "lora_" not in name:
            yield name.replace(".base_layer", ""), p


def base_config_hash(unet: nn.Module) -> str:
    """sha256 (16 hex) of the UNet class and its config: what an adapter file is tied to."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    text = json.dumps({"class": type(unet).__name__, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class AdaptedUNet(nn.Module):
    """A frozen diffusers UNet plus its adapters: ``forward(sample, timestep, encoder_hidden_states=None)``.

    ``kind`` is "ant" (hooks from an `AntAdapterSet`), "lora" (peft layers inside ``unet``) or "full" (the
    UNet itself is trained). `adapter_scale` α ∈ [0, 1] interpolates between source (0) and adapted (1).
    """

    def __init__(
        self, unet: nn.Module, kind: str, adapters: AntAdapterSet | None = None, hparams=None
    ) -> None:
        super().__init__()
        if kind not in ("ant", "lora", "full"):
            raise TanTransferError("kind", f"{kind!r}: use 'ant', 'lora' or 'full'")
        if (kind == "ant") != (adapters is not None):
            raise TanTransferError("adapters", "give an AntAdapterSet exactly when kind='ant'")
        self.unet = unet
        self.kind = kind
        self.adapters = adapters
        self.hparams = dict(hparams or (adapters.hparams if adapters is not None else {}))
        self.base_hash = base_config_hash(unet)
        self.base_params = sum(p.numel() for _, p in _base_named_parameters(unet))
        self.fused = False
        self._scale = 1.0
        if kind != "full":
            for name, p in unet.named_parameters():
                p.requires_grad_(kind == "lora" and "lora_" in name)
        if adapters is not None:
            device = next(unet.parameters()).device
            adapters.to(device).requires_grad_(True)
            adapters.attach(unet)

    @property
    def conditional(self) -> bool:
        return _is_cross_attention_unet(self.unet)

    @property
    def adapter_scale(self) -> float:
        return self._scale

    @adapter_scale.setter
    def adapter_scale(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise TanTransferError("adapter_scale", f"must be in [0, 1], got {value}")
        if self.kind == "full" and float(value) != 1.0:
            raise TanTransferError("adapter_scale", "full fine-tuning has no separate adapter to scale")
        if self.kind == "lora" and self.fused:
            raise TanTransferError("adapter_scale", "LoRA is fused into the weights; scale before fusing")
        self._scale = float(value)
        if self.adapters is not None:
            self.adapters.scale = self._scale
        if self.kind == "lora":
            for layer in _lora_layers(self.unet):
                for name in layer.lora_A:
                    layer.set_scale(name, self._scale)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[AdaptedUNet]:
        """Temporarily run the source model (adapter scale 0)."""
        old = self.adapter_scale
        self.adapter_scale = 0.0
        try:
            yield self
        finally:
            self.adapter_scale = old

    def forward(
        self, sample: Tensor, timestep: Tensor | int, encoder_hidden_states: Tensor | None = None
    ) -> Tensor:
        """ε prediction ``[B, C, H, W]`` (the UNet's ``.sample``)."""
        if self.conditional:
            if encoder_hidden_states is None:
                raise TanTransferError(
                    "encoder_hidden_states", "a UNet2DConditionModel needs prompt embeddings"
                )
            return self.unet(
                sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False
            )[0]
        return self.unet(sample, timestep, return_dict=False)[0]

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The trained tensors only: ANT adapters, LoRA weights, or the whole UNet for "full"."""
        if self.kind == "ant":
            state = self.adapters.state_dict()
        elif self.kind == "lora":
            state = {k: v for k, v in self.unet.state_dict().items() if "lora_" in k}
        else:
            state = self.unet.state_dict()
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters / parameters of the base UNet (adapter and LoRA weights excluded from the base)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if isinstance(model, AdaptedUNet):
        base = model.base_params
    else:
        base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return trainable / base


def build_adapted_unet(unet: nn.Module, kind: str = "ant", **hparams: Any) -> AdaptedUNet:
    """Wrap ``unet`` with adapters of ``kind``: "ant" (`AntAdapterSet.from_unet` kwargs), "lora" (rank, targets,
    alpha) or "full". The UNet is modified in place (hooks / LoRA layers); deep-copy it first to keep a source.
    """
    if kind == "ant":
        return AdaptedUNet(unet, "ant", AntAdapterSet.from_unet(unet, **hparams))
    if kind == "lora":
        hp = {"rank": 4, "targets": LORA_TARGETS, "alpha": None} | hparams
        hp["targets"] = tuple(hp["targets"])
        add_lora(unet, hp["rank"], hp["targets"], hp["alpha"])
        return AdaptedUNet(unet, "lora", hparams={**hp, "targets": list(hp["targets"])})
    if kind == "full":
        if hparams:
            raise TanTransferError("hparams", f"full fine-tuning takes none, got {sorted(hparams)}")
        unet.requires_grad_(True)
        return AdaptedUNet(unet, "full")
    raise TanTransferError("kind", f"{kind!r}: use 'ant', 'lora' or 'full'")


# ------------------------------------------------------------------------------------------------ I/O


def _model_card(meta: dict[str, Any]) -> str:
    return (
        "---\nlibrary_name: diffusers\ntags:\n- tan-transfer\n- few-shot\n---\n\n"
        f"# {meta['kind'].upper()} adapter (tan-transfer)\n\n"
        f"Adapter for a `{meta['unet_class']}` with config hash `{meta['base_config_hash']}` "
        f"({meta['base_param_count']:,} base parameters; {meta['n_params']:,} adapter parameters).\n\n"
        "Load it with `tan_transfer.load_adapters(unet, this_folder)`; loading is strict and checks the base hash.\n"
    )


def save_adapters(directory: str | Path, model: AdaptedUNet, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``adapter_model.safetensors``, ``tan_adapter_config.json`` and a model card to ``directory``."""
    from huggingface_hub import ModelCard

    if not isinstance(model, AdaptedUNet):
        raise TanTransferError("model", f"expected an AdaptedUNet, got {type(model).__name__}")
    if model.fused:
        raise TanTransferError("model", "LoRA is fused into the base weights; save before fuse_lora")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.adapter_state_dict()
    save_file(state, str(directory / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt", "kind": model.kind})
    meta = {
        "format_version": 1,
        "kind": model.kind,
        "hparams": model.hparams,
        "unet_class": type(model.unet).__name__,
        "base_config_hash": model.base_hash,
        "base_param_count": model.base_params,
        "n_params": sum(v.numel() for v in state.values()),
        "trainable_fraction": trainable_fraction(model),
        **(extra or {}),
    }
    (directory / ADAPTER_CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    ModelCard(_model_card(meta)).save(str(directory / "README.md"))
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise TanTransferError(
            path, "missing; not a tan-transfer adapter folder (save one with save_adapters)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TanTransferError(path, f"not valid JSON ({err})") from err


def load_adapters(
    unet: nn.Module, directory: str | Path, *, strict: bool = True, copy_unet: bool = False
) -> AdaptedUNet:
    """Attach the adapters saved in ``directory`` to ``unet`` (in place unless ``copy_unet``).

    Raises `TanTransferError` if the UNet class or config hash differs from the one the adapters were trained on,
    or (``strict``, the default) if any tensor is missing, unexpected or of another shape.
    """
    directory = Path(directory)
    meta = read_adapter_config(directory)
    weights = directory / ADAPTER_WEIGHTS_FILE
    if not weights.is_file():
        raise TanTransferError(weights, "missing; the adapter folder has a config but no weights")
    if meta.get("unet_class") != type(unet).__name__ or meta.get("base_config_hash") != base_config_hash(
        unet
    ):
        raise TanTransferError(
            directory,
            f"adapters were trained on a {meta.get('unet_class')} with config hash {meta.get('base_config_hash')}, "
            f"but this is a {type(unet).__name__} with hash {base_config_hash(unet)}; load the matching base model",
        )
    if copy_unet:
        unet = copy.deepcopy(unet)
    hp = dict(meta.get("hparams", {}))
    kind = meta.get("kind")
    if kind == "ant":
        model = build_adapted_unet(unet, "ant", **hp)
    elif kind == "lora":
        model = build_adapted_unet(
            unet, "lora", rank=hp["rank"], targets=tuple(hp["targets"]), alpha=hp["alpha"]
        )
    elif kind == "full":
        model = build_adapted_unet(unet, "full")
    else:
        raise TanTransferError(directory / ADAPTER_CONFIG_FILE, f"unknown adapter kind {kind!r}")
    state = load_file(str(weights))
    expected = model.adapter_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
    if strict and (missing or unexpected or shapes):
        raise TanTransferError(
            weights,
            f"does not match the {kind} adapters of this UNet: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(shapes)} shape mismatches "
            f"(e.g. {shapes[:3]}); nothing is dropped silently",
        )
    state = {k: v for k, v in state.items() if k in expected and k not in shapes}
    with torch.no_grad():
        if kind == "ant":
            model.adapters.load_state_dict(state, strict=False)
        else:
            model.unet.load_state_dict(state, strict=False)
    return model
