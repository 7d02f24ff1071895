"""A local nearest-neighbour index of training images for AMG detection: safetensors shards, hashed manifest.

Layout of an index folder:

- ``manifest.json``: format version, backends with their parameters, pixel size, count, shards with sha256.
- ``shard-NNNNN.safetensors``: ``pixels`` [n, 3, s, s] uint8, ``rows`` int64, ``labels`` int64 (−1 = none),
  ``keys/<backend>`` [n, D] fp16 (L2-normalised) for embedding backends, and, when built with a VAE,
  ``latents`` [n, C, h, w] fp16 in the denoiser's space ((mode − shift_factor)·scaling_factor), for
  decode-free detection (``AMGConfig(pixel_space="latent")``).
- ``items.jsonl``: one line per row: row, path (relative to the source), sha256, label.

Under ``accelerate launch`` every rank embeds and writes its own shard; rank 0 writes the manifest after
``wait_for_everyone()``. Search is exact and chunked in torch (`difflab_core.metrics.knn`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from difflab_core.device import process_state
from difflab_core.loading import file_sha256, read_json
from difflab_core.metrics import knn

from .errors import GuidanceKitError, core_errors

__all__ = ["BACKENDS", "FORMAT_VERSION", "NeighbourIndex", "encode_latents", "load_vae", "read_images"]

FORMAT_VERSION = 1
BACKENDS = ("pixel", "ssim", "sscd", "embedding")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_UNREADABLE = 0.05


def _to_unit(images: Tensor, who: str) -> Tensor:
    """[N,3,H,W] (or [N,1,H,W]) float in [0,1] or uint8 → float32 [N,3,H,W] in [0,1]."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise GuidanceKitError(
            f"{who}: images must be a tensor [N, 3, H, W] in [0, 1] (or uint8), got {shape}"
        )
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def read_images(source: str | Path) -> tuple[Tensor, list[str], list[str]]:
    """Images of a folder (recursive; png/jpg/webp/bmp) or an ``.npz`` (``images`` or ``arr_0``,
    [N, H, W, 3] uint8): ``(uint8 [N, 3, H, W], relative paths, skipped)``. Folder images are resized to the
    first image's size. More than 5 % unreadable files is an error."""
    from PIL import Image

    path = Path(source)
    if path.suffix == ".npz":
        if not path.is_file():
            raise GuidanceKitError(f"{path}: no such .npz file")
        data = np.load(path)
        key = "images" if "images" in data else "arr_0" if "arr_0" in data else None
        if key is None or data[key].ndim != 4 or data[key].shape[-1] != 3:
            raise GuidanceKitError(
                f"{path}: expected an array 'images' or 'arr_0' of shape [N, H, W, 3] uint8"
            )
        arr = torch.from_numpy(np.ascontiguousarray(data[key])).to(torch.uint8).permute(0, 3, 1, 2)
        return arr, [f"{path.name}#{i}" for i in range(len(arr))], []
    if not path.is_dir():
        raise GuidanceKitError(f"{path}: not a folder of images or an .npz file")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GuidanceKitError(f"{path}: no readable images (looked for {', '.join(IMAGE_SUFFIXES)})")
    images, names, skipped = [], [], []
    size = None
    for file in files:
        try:
            with Image.open(file) as im:
                im = im.convert("RGB")
                size = size or im.size
                if im.size != size:
                    im = im.resize(size, Image.BILINEAR)
                images.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
                names.append(file.relative_to(path).as_posix())
        except OSError:
            skipped.append(file.relative_to(path).as_posix())
    if not images or len(skipped) > MAX_UNREADABLE * len(files):
        raise GuidanceKitError(
            f"{path}: {len(skipped)} of {len(files)} image files are unreadable (more than 5%), e.g. {skipped[:3]}"
        )
    return torch.stack(images), names, skipped


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class NeighbourIndex:
    """Training images for nearest-neighbour search. Build with `build`, reopen with `load`.

    ``pixel_size``: the side of stored pixels (64, or the native size if smaller). ``keys[backend]`` [N, D]
    for embedding backends; ``embedder``: the module that made them (needed to embed queries).
    ``latents``: fp16 [N, C, h, w] VAE latents in the denoiser's space, or None; ``latent_info``: how they were
    made (``scaling_factor``, ``shift_factor``, ``image_size``, ``vae``). ``path``: the folder it was loaded
    from (None in memory).
    """

    def __init__(
        self,
        pixels: Tensor,
        *,
        labels: Tensor | None = None,
        keys: dict[str, Tensor] | None = None,
        embedder=None,
        items: list[dict] | None = None,
        manifest: dict | None = None,
        latents: Tensor | None = None,
        latent_info: dict | None = None,
        path: str | Path | None = None,
    ) -> None:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise GuidanceKitError(
                f"NeighbourIndex: pixels must be uint8 [N, 3, s, s], got {tuple(pixels.shape)}"
            )
        self._pixels = pixels
        self.labels = labels if labels is not None else torch.full((len(pixels),), -1, dtype=torch.long)
        self.keys = keys or {}
        self.embedder = embedder
        self.items = items or []
        self.manifest = manifest or {}
        self._float_pixels: Tensor | None = None
        if latents is not None and (latents.ndim != 4 or len(latents) != len(pixels)):
            raise GuidanceKitError(
                f"NeighbourIndex: latents must be [N={len(pixels)}, C, h, w], got {tuple(latents.shape)}"
            )
        self._latents = latents
        self.latent_info = latent_info or {}
        self._float_latents: Tensor | None = None
        self.path = None if path is None else Path(path)

    def __len__(self) -> int:
        return len(self._pixels)

    @property
    def pixel_size(self) -> int:
        return int(self._pixels.shape[-1])

    @property
    def backends(self) -> tuple[str, ...]:
        return ("pixel", "ssim", *self.keys)

    def pixels(self, rows: Tensor | Sequence[int]) -> Tensor:
        """Stored images of ``rows`` as float [.., 3, s, s] in [0, 1]."""
        return self.flat_pixels()[torch.as_tensor(rows, dtype=torch.long)].view(
            -1, 3, self.pixel_size, self.pixel_size
        )

    def flat_pixels(self) -> Tensor:
        """All stored images, float32 [N, 3·s·s] in [0, 1] (cached)."""
        if self._float_pixels is None:
            self._float_pixels = self._pixels.flatten(1).float() / 255.0
        return self._float_pixels

    @property
    def has_latents(self) -> bool:
        return self._latents is not None

    @property
    def latent_shape(self) -> tuple[int, int, int] | None:
        """(C, h, w) of the stored latents, or None."""
        return None if self._latents is None else tuple(self._latents.shape[1:])

    def _where(self) -> str:
        return f"the index {self.path}" if self.path is not None else "the in-memory index"

    def flat_latents(self) -> Tensor:
        """All stored latents, float32 [N, C·h·w] (cached)."""
        if self._latents is None:
            raise GuidanceKitError(
                f"{self._where()} has no VAE latents; build it with vae= (CLI: build-index --vae PIPE_DIR)"
            )
        if self._float_latents is None:
            self._float_latents = self._latents.flatten(1).float()
        return self._float_latents

    def latents(self, rows: Tensor | Sequence[int]) -> Tensor:
        """Stored latents of ``rows``, float32 [.., C, h, w]."""
        return self.flat_latents()[torch.as_tensor(rows, dtype=torch.long)].view(-1, *self.latent_shape)

    def check_latent_query(self, latents: Tensor) -> Tensor:
        """``latents`` [B, C, h, w] flattened to float [B, C·h·w], after checking (C, h, w) against the index."""
        self.flat_latents()
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise GuidanceKitError(
                f"{self._where()} stores latents of shape {list(self.latent_shape)} but the query latents are "
                f"{list(latents.shape[1:])}; build the index with the pipeline's VAE from images at the "
                "generation resolution (vae_image_size=)"
            )
        return latents.flatten(1).float()

    @torch.no_grad()
    def search_latents(self, latents: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Exact k-NN on the stored latents: ``(rmse [B, k] ascending, rows [B, k])``, ``latents`` [B, C, h, w] in
        the denoiser's space (no decode)."""
        q = self.check_latent_query(latents)
        with core_errors("NeighbourIndex.search_latents"):
            dist, rows = knn(q, self.flat_latents().to(q.device), min(int(k), len(self)), metric="l2")
        return dist / q.shape[1] ** 0.5, rows

    def to_query(self, images: Tensor) -> Tensor:
        """Queries [B, 3, H, W] in [0, 1] resized to the index's pixel size (differentiable)."""
        return _resize(_to_unit(images, "query"), self.pixel_size)

    @torch.no_grad()
    def search(self, queries: Tensor, k: int, backend: str = "pixel") -> tuple[Tensor, Tensor]:
        """Exact k-NN: ``(scores [B, k], rows [B, k])``. ``pixel``: ℓ = RMSE on [0, 1] pixels (ascending);
        embedding backends: cosine similarity (descending)."""
        k = min(int(k), len(self))
        if backend in ("pixel", "ssim"):
            q = self.to_query(queries).flatten(1).float()
            with core_errors("NeighbourIndex.search"):
                dist, rows = knn(q, self.flat_pixels().to(q.device), k, metric="l2")
            return dist / q.shape[1] ** 0.5, rows
        if backend not in self.keys:
            raise GuidanceKitError(f"backend={backend!r} is not in this index (it has {list(self.backends)})")
        if self.embedder is None:
            raise GuidanceKitError(f"backend={backend!r}: the index was loaded without its embedder")
        emb = self.embedder.embed(_to_unit(queries, "query")).float()
        with core_errors("NeighbourIndex.search"):
            return knn(emb, self.keys[backend].to(emb.device).float(), k, metric="cosine")

    # ------------------------------------------------------------------------------------------ build/load

    @classmethod
    def build(
        cls,
        source: str | Path | Tensor,
        out_dir: str | Path | None = None,
        *,
        backends: Sequence[str] = ("pixel",),
        sscd_path: str | Path | None = None,
        embedder=None,
        pixel_size: int = 64,
        batch_size: int = 64,
        labels: Tensor | Sequence[int] | None = None,
        shard_size: int = 50_000,
        device: str = "auto",
        vae=None,
        vae_image_size: int | None = None,
    ) -> NeighbourIndex:
        """Index ``source``: a tensor [N, 3, H, W] in [0, 1] (or uint8), a folder of images or an ``.npz``.

        ``backends``: "pixel"/"ssim" (pixels only), "sscd" (needs ``sscd_path``, a TorchScript file) and
        "embedding" (needs ``embedder``, an `ImageSimilarity`). Without ``out_dir`` the index stays in memory.
        ``vae``: a diffusers autoencoder (e.g. ``pipe.vae``); with it the index also stores the images' latents
        (`encode_latents`, on the VAE's own device and dtype) for ``AMGConfig(pixel_space="latent")``.
        ``vae_image_size``: the side images are resized to before encoding (default: their own size; it should
        be the generation resolution).
        """
        from difflab_core.device import resolve_device

        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise GuidanceKitError(f"backends: unknown {unknown}; use any of {BACKENDS}")
        skipped: list[str] = []
        if isinstance(source, Tensor):
            x = _to_unit(source, "source")
            if float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3:
                raise GuidanceKitError("source: image tensor values must lie in [0, 1] (or be uint8)")
            raw = (x.clamp(0, 1) * 255).round().to(torch.uint8)
            names = [f"tensor#{i}" for i in range(len(raw))]
        else:
            raw, names, skipped = read_images(source)
        size = min(int(pixel_size), int(raw.shape[-1]), int(raw.shape[-2]))
        pixels = (_resize(raw.float() / 255.0, size).clamp(0, 1) * 255).round().to(torch.uint8)
        label_t = (
            torch.full((len(pixels),), -1, dtype=torch.long)
            if labels is None
            else torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        )
        if len(label_t) != len(pixels):
            raise GuidanceKitError(f"labels: {len(label_t)} labels for {len(pixels)} images")
        keys: dict[str, Tensor] = {}
        if "sscd" in backends:
            if sscd_path is None:
                raise GuidanceKitError(
                    "backends includes 'sscd': pass sscd_path (a local SSCD TorchScript file)"
                )
            from difflab_core.metrics import SSCDEmbedder

            with core_errors("sscd_path"):
                embedder = SSCDEmbedder.from_torchscript(sscd_path, device=resolve_device(device))
        if ("sscd" in backends or "embedding" in backends) and embedder is None:
            raise GuidanceKitError(
                "backends includes 'embedding': pass embedder= (an ImageSimilarity module)"
            )
        state = process_state()
        if out_dir is None:
            mine = torch.arange(len(pixels))
        else:
            with state.split_between_processes(list(range(len(pixels)))) as part:
                mine = torch.as_tensor(part, dtype=torch.long)
        for backend in backends:
            if backend in ("sscd", "embedding"):
                keys[backend] = _embed(embedder, raw[mine], batch_size, resolve_device(device))
        latents, latent_info = None, None
        if vae is not None:
            latents, latent_info = encode_latents(vae, raw[mine], batch_size, vae_image_size)
        if out_dir is not None:
            _write_shards(Path(out_dir), state, mine, pixels[mine], label_t[mine], keys, shard_size, latents)
            state.wait_for_everyone()
            if state.is_main_process:
                _write_manifest(
                    Path(out_dir),
                    backends,
                    size,
                    names,
                    raw,
                    label_t,
                    skipped,
                    source,
                    sscd_path,
                    latent_info,
                )
            state.wait_for_everyone()
            return cls.load(out_dir, embedder=embedder)
        return cls(
            pixels,
            labels=label_t,
            keys=keys,
            embedder=embedder,
            items=_items(names, raw, label_t),
            latents=latents,
            latent_info=latent_info,
        )

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True, embedder=None) -> NeighbourIndex:
        """Open an index folder, checking the manifest's format version and every shard's sha256.
        (Shards are read through safetensors' memory map; ``mmap`` is kept for API compatibility.)"""
        from safetensors.torch import load_file

        folder = Path(path)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise GuidanceKitError(
                f"{manifest_path}: index manifest missing; build the index with build-index"
            )
        with core_errors():
            manifest = read_json(manifest_path)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise GuidanceKitError(
                f"{manifest_path}: unknown format version {manifest.get('format_version')!r} "
                f"(expected {FORMAT_VERSION})"
            )
        parts: dict[str, list[Tensor]] = {}
        shards = manifest.get("shards", [])
        for shard in shards:
            file = folder / shard["file"]
            if not file.is_file():
                raise GuidanceKitError(f"{file}: shard listed in the manifest is missing")
            found = file_sha256(file)
            if found != shard["sha256"]:
                raise GuidanceKitError(
                    f"{file}: sha256 mismatch (expected {shard['sha256'][:12]}…, found {found[:12]}…)"
                )
            for name, tensor in load_file(str(file)).items():
                parts.setdefault(name, []).append(tensor)
        if "rows" not in parts:
            raise GuidanceKitError(f"{manifest_path}: the index has no shards")
        uneven = sorted(name for name, ts in parts.items() if len(ts) != len(shards))
        if uneven:
            raise GuidanceKitError(f"{folder}: tensors {uneven} are present in some shards but not in all")
        order = torch.cat(parts["rows"]).argsort()
        merged = {name: torch.cat(ts)[order] for name, ts in parts.items()}
        if len(order) != manifest.get("count"):
            raise GuidanceKitError(
                f"{manifest_path}: count {manifest.get('count')} but the shards hold {len(order)} rows"
            )
        keys = {name.split("/", 1)[1]: t for name, t in merged.items() if name.startswith("keys/")}
        wanted = [b for b in manifest.get("backends", []) if b in ("sscd", "embedding")]
        missing = [b for b in wanted if b not in keys]
        if missing:
            raise GuidanceKitError(
                f"{folder}: backends {missing} are in the manifest but absent from the shards"
            )
        if manifest.get("latents") and "latents" not in merged:
            raise GuidanceKitError(f"{folder}: the manifest lists latents but the shards hold none")
        if "sscd" in keys and embedder is None and manifest.get("sscd_path"):
            from difflab_core.metrics import SSCDEmbedder

            with core_errors("sscd_path"):
                embedder = SSCDEmbedder.from_torchscript(manifest["sscd_path"])
        items_file = folder / "items.jsonl"
        items = (
            [json.loads(line) for line in items_file.read_text().splitlines()] if items_file.is_file() else []
        )
        return cls(
            merged["pixels"],
            labels=merged["labels"],
            keys=keys,
            embedder=embedder,
            items=items,
            manifest=manifest,
            path=folder,
            latents=merged.get("latents"),
            latent_info=manifest.get("latents"),
        )


def load_vae(path: str | Path):
    """A diffusers autoencoder from a local folder: a pipeline folder (its ``vae/``) or the VAE's own folder;
    the class is read from ``config.json``'s ``_class_name``."""
    import diffusers

    from difflab_core.loading import load_model

    folder = Path(path)
    subfolder = "vae" if (folder / "vae" / "config.json").is_file() else None
    config_file = folder / (subfolder or "") / "config.json"
    if not config_file.is_file():
        raise GuidanceKitError(f"{path}: no VAE here (neither config.json nor vae/config.json)")
    with core_errors():
        name = read_json(config_file).get("_class_name", "")
    model_class = getattr(diffusers, name, None)
    if model_class is None or not hasattr(model_class, "encode") or not hasattr(model_class, "decode"):
        raise GuidanceKitError(f"{config_file}: _class_name {name!r} is not a diffusers autoencoder")
    with core_errors(str(path)):
        return load_model(folder, model_class, subfolder=subfolder).eval()


@torch.no_grad()
def encode_latents(
    vae, raw: Tensor, batch_size: int = 64, image_size: int | None = None
) -> tuple[Tensor, dict]:
    """Latents of uint8 images [N, 3, H, W] in the denoiser's space: ``(mode(vae.encode(2x − 1)) −
    shift_factor)·scaling_factor``, fp16 [N, C, h, w] (the posterior mode, so no random numbers), and their
    description for the manifest. ``image_size``: resize to this side first (default: as given)."""
    if not hasattr(vae, "encode") or not hasattr(vae, "config"):
        raise GuidanceKitError(f"vae: expected a diffusers autoencoder, got {type(vae).__name__}")
    if not len(raw):
        return torch.empty(0, dtype=torch.float16), {}
    anchor = next(itertools.chain(vae.parameters(), vae.buffers()), None)  # the VAE's device and dtype
    device, dtype = (anchor.device, anchor.dtype) if anchor is not None else ("cpu", torch.float32)
    scale = float(getattr(vae.config, "scaling_factor", None) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    out = []
    for chunk in raw.split(batch_size):
        x = chunk.float() / 255.0
        if image_size is not None:
            x = _resize(x, int(image_size))
        encoded = vae.encode((x * 2 - 1).to(device, dtype), return_dict=False)[0]
        mode = encoded.mode() if hasattr(encoded, "mode") else encoded
        out.append(((mode.float() - shift) * scale).cpu())
    latents = torch.cat(out).to(torch.float16)
    side = int(image_size) if image_size is not None else None
    info = {
        "shape": list(latents.shape[1:]),
        "dtype": "float16",
        "scaling_factor": scale,
        "shift_factor": shift,
        "image_size": [side, side] if side else list(raw.shape[-2:]),
        "vae": type(vae).__name__,
    }
    return latents, info


def _embed(embedder, raw: Tensor, batch_size: int, device) -> Tensor:
    embedder = embedder.to(device).eval()
    out = []
    with torch.no_grad():
        for chunk in raw.split(batch_size):
            out.append(embedder.embed(chunk.float().div(255).to(device)).float().cpu())
    return torch.cat(out).to(torch.float16) if out else torch.empty(0, 0, dtype=torch.float16)


def _items(names: list[str], raw: Tensor, labels: Tensor) -> list[dict]:
    return [
        {
            "row": i,
            "path": name,
            "sha256": hashlib.sha256(raw[i].numpy().tobytes()).hexdigest(),
            "label": int(labels[i]),
        }
        for i, name in enumerate(names)
    ]


def _write_shards(
    folder: Path, state, rows: Tensor, pixels, labels, keys, shard_size: int, latents: Tensor | None = None
) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(rows), shard_size) if state.num_processes == 1 else [0]
    size = shard_size if state.num_processes == 1 else max(len(rows), 1)
    for n, start in enumerate(starts):
        sl = slice(start, start + size)
        number = n if state.num_processes == 1 else state.process_index
        tensors = {
            "pixels": pixels[sl].contiguous(),
            "rows": rows[sl].contiguous(),
            "labels": labels[sl].contiguous(),
            **{f"keys/{b}": v[sl].contiguous() for b, v in keys.items()},
        }
        if latents is not None:
            tensors["latents"] = latents[sl].contiguous()
        meta = {"format_version": str(FORMAT_VERSION), "backends": ",".join(sorted(keys) or ["pixel"])}
        save_file(tensors, str(folder / f"shard-{number:05d}.safetensors"), metadata=meta)


def _write_manifest(
    folder, backends, size, names, raw, labels, skipped, source, sscd_path, latent_info=None
) -> None:
    shards = sorted(folder.glob("shard-*.safetensors"))
    manifest = {
        "format_version": FORMAT_VERSION,
        "backends": list(backends),
        "pixel_size": size,
        "pixel_dtype": "uint8",
        "key_dtype": "float16",
        "count": len(names),
        "source": str(source) if not isinstance(source, Tensor) else "tensor",
        "sscd_path": str(sscd_path) if sscd_path else None,
        "latents": latent_info,
        "shards": [{"file": s.name, "sha256": file_sha256(s)} for s in shards],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    with open(folder / "items.jsonl", "w") as fh:
        for item in _items(names, raw, labels):
            fh.write(json.dumps(item) + "\n")
    (folder / "build_report.json").write_text(
        json.dumps({"count": len(names), "skipped": skipped}, indent=2) + "\n"
    )
