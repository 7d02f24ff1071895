"""The ``tan-transfer`` command line: ``pretrain``, ``train-classifier``, ``train``, ``sample``, ``evaluate``, ``demo``,
``version``.

Models are local diffusers folders, images flat folders. Bad input prints one ``error:`` line and exits 2.
Multi-GPU: ``accelerate launch -m tan_transfer.cli train ...``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import typer

from tan_transfer import __version__

app = typer.Typer(
    add_completion=False,
    help="Few-shot transfer of diffusion models: adapters, similarity-guided training, adversarial noise selection (DPMs-ANT).",
    no_args_is_help=True,
)


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Bad input (ValueError: TanTransferError, DifflabError; OSError) → one line on stderr, exit code 2."""
    try:
        yield
    except (ValueError, OSError) as err:
        message = " ".join(str(err).split())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from err


def _config(config: Path | None, **overrides):
    from .config import TANConfig

    base = TANConfig.from_json(config).to_dict() if config else {}
    base |= {k: v for k, v in overrides.items() if v is not None}
    for key in ("lora_targets", "betas"):
        if key in base:
            base[key] = tuple(base[key])
    return TANConfig(**base)


def _bundle(model: Path, device: str):
    from diffusers.utils import logging as diffusers_logging

    from .model import load_dpm

    diffusers_logging.disable_progress_bar()  # keep stdout to our one JSON line
    return load_dpm(model, device=device)


def _images(bundle, folder: Path, skip_bad: bool, no_resize: bool):
    from .data import load_image_folder

    return load_image_folder(
        folder, bundle.image_size, bundle.image_channels, skip_bad=skip_bad, resize=not no_resize
    )


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def pretrain(
    source: Path = typer.Option(..., "--source", help="folder of source-domain images"),
    out: Path = typer.Option(
        ..., "--out", help="run folder; the model goes to OUT/pipeline (resumes if stopped)"
    ),
    size: int = typer.Option(16, "--size", help="image side in pixels (a multiple of 4)"),
    channels: int = typer.Option(1, "--channels", help="1 (greyscale) or 3 (RGB)"),
    steps: int = typer.Option(4000, "--steps"),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Pretrain a small source DDPM (core's digits-DDPM recipe) on a folder of images; prints a JSON line."""
    from diffusers.utils import logging as diffusers_logging

    from .data import load_image_folder
    from .pretrain import PIPELINE_DIR, pretrain_source

    diffusers_logging.disable_progress_bar()
    with _clean_errors():
        images = load_image_folder(source, size, channels)
        bundle = pretrain_source(
            images, out_dir=out, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device
        )
    n_params = sum(p.numel() for p in bundle.unet.parameters())
    typer.echo(
        json.dumps(
            {"model": str(out / PIPELINE_DIR), "steps": steps, "n_images": len(images), "n_params": n_params}
        )
    )


@app.command("train-classifier")
def train_classifier(
    model: Path = typer.Option(..., "--model", help="local diffusers folder (UNet2DModel or pipeline)"),
    target: Path = typer.Option(..., "--target", help="folder of target images (about 10)"),
    out: Path = typer.Option(..., "--out", help="folder for classifier.safetensors and report.json"),
    source: Path = typer.Option(
        None, "--source", help="folder of source images (default: sampled from the model)"
    ),
    steps: int = typer.Option(300, "--steps", help="training steps"),
    classifier: str = typer.Option("unet_encoder", "--classifier", help="unet_encoder or small_cnn"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip unreadable images instead of failing"),
    no_resize: bool = typer.Option(False, "--no-resize", help="fail on images of the wrong size"),
) -> None:
    """Train the source-vs-target noisy classifier alone (train uses it with --classifier-path)."""
    from difflab_core.report import write_json
    from difflab_core.train import save_weights

    from .classifier import train_domain_classifier
    from .train import sample_source_images

    with _clean_errors():
        cfg = _config(None, classifier=classifier, classifier_steps=steps, seed=seed)
        bundle = _bundle(model, device)
        tgt = _images(bundle, target, skip_bad, no_resize)
        src = (
            _images(bundle, source, skip_bad, no_resize)
            if source
            else sample_source_images(bundle, cfg.source_from_model, seed=seed + 1)
        )
        clf, report = train_domain_classifier(bundle, src, tgt, cfg)
        save_weights(clf, out / "classifier.safetensors")
        write_json(
            out / "report.json", report | {"classifier": classifier, "pooling": cfg.classifier_pooling}
        )
    typer.echo(json.dumps(report["heldout_accuracy_by_t"]))


def _load_classifier(path: Path, bundle, seed: int):
    from difflab_core.tiny import seeded
    from difflab_core.train import load_weights

    from .classifier import build_classifier
    from .errors import TanTransferError

    report_path = path / "report.json"
    if not report_path.is_file():
        raise TanTransferError(
            path, "not a classifier folder (report.json missing); make one with train-classifier"
        )
    report = json.loads(report_path.read_text())
    with seeded(seed):
        clf = build_classifier(
            report.get("classifier", "unet_encoder"), bundle.unet, pooling=report.get("pooling", "attention")
        )
    load_weights(clf, path / "classifier.safetensors")
    return clf.eval().requires_grad_(False)


@app.command()
def train(
    model: Path = typer.Option(..., "--model", help="local diffusers folder (UNet2DModel or pipeline)"),
    target: Path = typer.Option(..., "--target", help="folder of target images (about 10)"),
    out: Path = typer.Option(..., "--out", help="run folder (resumed if it holds checkpoints)"),
    source: Path = typer.Option(None, "--source", help="folder of source images for the classifier"),
    config: Path = typer.Option(None, "--config", help="TANConfig JSON (a run's config.json works too)"),
    adapter: str = typer.Option(None, "--adapter", help="ant, lora or full"),
    iterations: int = typer.Option(None, "--iterations"),
    batch_size: int = typer.Option(None, "--batch-size"),
    micro_batch: int = typer.Option(None, "--micro-batch", help="lower this on out-of-memory"),
    lr: float = typer.Option(None, "--lr"),
    gamma: float = typer.Option(None, "--gamma", help="similarity-guidance strength γ"),
    ascent_steps: int = typer.Option(None, "--ascent-steps", help="adversarial-noise steps J"),
    ascent_norm: str = typer.Option(
        None, "--ascent-norm", help="standard (paper) or match_initial (keeps ε⁰'s per-sample mean/std)"
    ),
    no_guidance: bool = typer.Option(False, "--no-guidance", help="ablation: no similarity guidance"),
    no_adversarial: bool = typer.Option(False, "--no-adversarial", help="ablation: plain Gaussian noise"),
    classifier: str = typer.Option(None, "--classifier", help="unet_encoder or small_cnn"),
    classifier_steps: int = typer.Option(None, "--classifier-steps"),
    classifier_path: Path = typer.Option(
        None, "--classifier-path", help="folder written by train-classifier"
    ),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every"),
    monitor_every: int = typer.Option(
        None, "--monitor-every", help="overfitting monitor period (metrics.jsonl, adapter_best/); 0 = off"
    ),
    guidance_reference_dim: int = typer.Option(
        None, "--guidance-reference-dim", help="rescale γ by √(C·H·W / this); 196608 = 3×256×256"
    ),
    prompt: str = typer.Option(None, "--prompt", help="prompt for text-conditional models"),
    seed: int = typer.Option(None, "--seed"),
    device: str = typer.Option("auto", "--device"),
    override_config: bool = typer.Option(
        False, "--override-config", help="resume although the config changed"
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    no_resize: bool = typer.Option(False, "--no-resize"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Adapt the model to the target images (DPMs-ANT); writes the run folder with adapter/. Text-conditional
    models train on the target folder's captions.jsonl ({"file", "text"} lines), --prompt for images without one."""
    from .data import load_captioned_folder
    from .train import train_tan

    with _clean_errors():
        cfg = _config(
            config,
            adapter=adapter,
            iterations=iterations,
            batch_size=batch_size,
            micro_batch=micro_batch,
            lr=lr,
            gamma=gamma,
            ascent_steps=ascent_steps,
            ascent_norm=ascent_norm,
            classifier=classifier,
            classifier_steps=classifier_steps,
            checkpoint_every=checkpoint_every,
            monitor_every=monitor_every,
            guidance_reference_dim=guidance_reference_dim,
            prompt=prompt,
            seed=seed,
            similarity_guidance=False if no_guidance else None,
            adversarial_noise=False if no_adversarial else None,
        )
        bundle = _bundle(model, device)
        texts = None
        if bundle.conditional:  # per-image captions from the folder's captions.jsonl, else --prompt
            tgt, texts = load_captioned_folder(
                target,
                bundle.image_size,
                bundle.image_channels,
                default=cfg.prompt,
                skip_bad=skip_bad,
                resize=not no_resize,
            )
        else:
            tgt = _images(bundle, target, skip_bad, no_resize)
        src = _images(bundle, source, skip_bad, no_resize) if source else None
        clf = _load_classifier(classifier_path, bundle, cfg.seed) if classifier_path else None
        result = train_tan(
            bundle,
            tgt,
            cfg,
            source=src,
            classifier=clf,
            output_dir=out,
            captions=texts,
            override_config=override_config,
            progress=progress,
        )
    typer.echo(
        json.dumps(
            {
                "adapter": str(result.adapter_dir),
                "iterations": result.steps,
                "last_loss": round(result.last_loss, 5),
                "sec_per_iter": round(result.sec_per_iter, 4),
                "trainable_fraction": round(result.trainable_fraction, 5),
                "classifier_heldout_accuracy": result.classifier_report.get("heldout_accuracy"),
                "best_adapter": str(result.best_adapter_dir) if result.best_adapter_dir else None,
                "best_step": result.monitor[-1].best_step if result.monitor else None,
            }
        )
    )


@app.command()
def sample(
    model: Path = typer.Option(..., "--model", help="local diffusers folder of the source model"),
    out: Path = typer.Option(..., "--out", help="folder for the PNGs"),
    adapter: Path = typer.Option(
        None, "--adapter", help="adapter folder (a run's adapter/); omit for the source model"
    ),
    n: int = typer.Option(16, "--n"),
    steps: int = typer.Option(100, "--steps", help="DDIM steps (500 for the paper's protocol)"),
    eta: float = typer.Option(1.0, "--eta"),
    scale: float = typer.Option(1.0, "--scale", help="adapter strength in [0, 1]"),
    prompt: str = typer.Option(None, "--prompt"),
    guidance_scale: float = typer.Option(
        None, "--guidance-scale", help="classifier-free guidance (text models)"
    ),
    batch_size: int = typer.Option(50, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Sample images from the adapted (or source) model and save them as PNGs."""
    from .adapters import load_adapters
    from .data import save_image_folder
    from .sample import sample as run_sample

    with _clean_errors():
        bundle = _bundle(model, device)
        adapted = None
        if adapter is not None:
            adapted = load_adapters(bundle.unet, adapter, copy_unet=True).eval()
            adapted.adapter_scale = scale
        images = run_sample(
            adapted,
            bundle,
            n,
            steps=steps,
            eta=eta,
            seed=seed,
            batch_size=batch_size,
            prompt=prompt,
            guidance_scale=guidance_scale,
        )
        paths = save_image_folder(images * 2 - 1, out, "sample")
    typer.echo(f"wrote {len(paths)} images to {out}")


@app.command()
def evaluate(
    run: Path = typer.Option(..., "--run", help="run folder (holds shots/ and, by default, samples/)"),
    samples: Path = typer.Option(None, "--samples", help="samples folder (default RUN/samples)"),
) -> None:
    """Offline proxy metrics of a run's samples (intra-cluster distance, copy rate; digits proxies for digits)."""
    from .evaluate import evaluate_run

    with _clean_errors():
        result = evaluate_run(run, samples_dir=samples)
    typer.echo(json.dumps(result))


@app.command()
def demo(
    out: Path = typer.Option(Path("tan-transfer-demo"), "--out", help="folder for the model, images and run"),
    iterations: int = typer.Option(20, "--iterations"),
    n: int = typer.Option(64, "--n", help="samples to draw"),
    steps: int = typer.Option(25, "--steps"),
    ascent_steps: int = typer.Option(3, "--ascent-steps"),
    classifier_steps: int = typer.Option(60, "--classifier-steps"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """The whole story offline: digits 0–4 DDPM → 10 shots of digit 9 → train → sample → evaluate."""
    import torch
    from diffusers import DDPMPipeline

    from difflab_core.report import HtmlReport, image_grid, write_json
    from difflab_core.testbed import digits_ddpm

    from .data import digits_task, save_image_folder
    from .evaluate import evaluate_run

    with _clean_errors():
        task = digits_task()
        model_dir = out / "model"
        if not (model_dir / "model_index.json").is_file():
            d = digits_ddpm((0, 1, 2, 3, 4))
            DDPMPipeline(unet=d.unet, scheduler=d.scheduler).save_pretrained(model_dir)
        save_image_folder(task.shots, out / "target", "nine")
        perm = torch.randperm(len(task.source), generator=torch.Generator().manual_seed(0))
        save_image_folder(task.source[perm[:200]], out / "source", "source")
        run = out / "run"
        train(
            model=model_dir,
            target=out / "target",
            out=run,
            source=out / "source",
            config=None,
            adapter="ant",
            iterations=iterations,
            batch_size=10,
            micro_batch=10,
            lr=2e-3,
            gamma=None,
            ascent_steps=ascent_steps,
            ascent_norm=None,
            no_guidance=False,
            no_adversarial=False,
            classifier=None,
            classifier_steps=classifier_steps,
            classifier_path=None,
            checkpoint_every=None,
            monitor_every=None,
            guidance_reference_dim=None,
            prompt=None,
            seed=0,
            device=device,
            override_config=False,
            skip_bad=False,
            no_resize=False,
            progress=False,
        )
        write_json(run / "task.json", {"task": task.name, "target_class": task.target_class})
        sample(
            model=model_dir,
            out=run / "samples",
            adapter=run / "adapter",
            n=n,
            steps=steps,
            eta=1.0,
            scale=1.0,
            prompt=None,
            guidance_scale=None,
            batch_size=64,
            seed=0,
            device=device,
        )
        result = evaluate_run(run)
        from .data import load_image_folder

        shown = ((load_image_folder(run / "samples", 16, 1)[:32] + 1) * 127.5).round().byte()[:, 0].numpy()
        report = HtmlReport("tan-transfer demo: digits 0–4 → 9")
        report.add_figures({k: round(v, 4) for k, v in result.items()})
        report.add_image(image_grid(list(shown), 8), caption="samples after transfer")
        report.save(run / "report.html")
        write_json(run / "demo.json", result)
    typer.echo(json.dumps(result))


if __name__ == "__main__":
    app()
