"""The ``forgery-kd`` command line (typer): synth, prepare, train-teacher, distill, evaluate, calibrate, predict,
version."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import typer

from . import __version__
from .errors import ForgeryKDError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Two-in-one knowledge distillation for face forgery detection: a dual-branch RGB+frequency "
    "teacher distilled into one RGB student.",
)


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def _data(json_dir: Path, names: list[str], rgb_root: Path, compression: str, frame_num: int, img_size: int):
    from .train import DataConfig

    return DataConfig(str(json_dir), tuple(names), str(rgb_root), compression, frame_num, img_size)


JSON_DIR = typer.Option(..., "--json-dir", help="folder with DeepfakeBench <Name>.json files")
NAMES = typer.Option(..., "--name", "-n", help="dataset name (repeatable), e.g. FaceForensics++ or FF-DF_c40")
RGB_ROOT = typer.Option(Path("."), "--rgb-root", help="folder the frame paths are relative to")
COMPRESSION = typer.Option("c23", "--compression")
FRAME_NUM = typer.Option(32, "--frame-num", help="frames per video, evenly spaced")
IMG_SIZE = typer.Option(256, "--img-size")


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="output folder"),
    videos: int = typer.Option(48, "--videos", help="training videos (val: a quarter, test: a half)"),
    frames: int = typer.Option(4, "--frames"),
    size: int = typer.Option(64, "--size"),
    seed: int = typer.Option(0, "--seed"),
    difficulty: float = typer.Option(0.5, "--difficulty", help="0 obvious … 1 subtle"),
) -> None:
    """Write a synthetic face-forgery set (bundled photos + manipulations) in the DeepfakeBench layout."""
    try:
        from .synthetic import make_synthetic_forgeries

        info = make_synthetic_forgeries(out, videos, frames, size, seed, difficulty)
    except ForgeryKDError as err:
        _fail(err)
    typer.echo(
        f"wrote {sum(info.videos.values())} videos to {info.root}; --json-dir {info.json_dir} --name {info.name}"
    )


app.command("make-synthetic", help="Alias of synth.")(synth)


@app.command()
def prepare(
    root: Path = typer.Argument(..., help="raw dataset folder"),
    out: Path = typer.Argument(..., help="output folder (frames + json/)"),
    dataset: str = typer.Option("ff++", "--dataset", help="ff++ or celebdf"),
    compression: str = typer.Option("c23", "--compression", help="FaceForensics++ level"),
    frames: int = typer.Option(32, "--frames", help="frames per video, evenly spaced"),
    face_detector: str = typer.Option("skimage-lbp", "--face-detector"),
    size: int = typer.Option(256, "--size", help="face crop side in pixels"),
) -> None:
    """Extract, face-crop and list frames of raw FaceForensics++ / Celeb-DF v2 videos (DeepfakeBench JSON)."""
    try:
        from .faces import FaceCropper
        from .prepare import prepare_celebdf, prepare_faceforensics

        cropper = FaceCropper(face_detector, size=size)
        if dataset == "ff++":
            info = prepare_faceforensics(root, out, compression=compression, frames=frames, cropper=cropper)
        elif dataset == "celebdf":
            info = prepare_celebdf(root, out, frames=frames, cropper=cropper)
        else:
            raise ForgeryKDError(f"--dataset {dataset!r}: use 'ff++' or 'celebdf'")
    except ForgeryKDError as err:
        _fail(err)
    typer.echo(
        f"{info['videos']} videos; faces found in {info['face_fraction']:.0%} of frames; --json-dir {info['json'].parent}"
    )


@app.command("train-teacher")
def train_teacher_cmd(
    json_dir: Path = JSON_DIR,
    name: list[str] = NAMES,
    rgb_root: Path = RGB_ROOT,
    compression: str = COMPRESSION,
    frame_num: int = FRAME_NUM,
    img_size: int = IMG_SIZE,
    out: Path = typer.Option(Path("runs/teacher"), "--out", "-o"),
    spatial: str = typer.Option("legacy_xception", "--spatial"),
    frequency: str = typer.Option("legacy_xception", "--frequency"),
    freq_transform: str = typer.Option("fad", "--freq-transform", help="fad, srm, block_dct or phase"),
    spatial_weights: Path | None = typer.Option(None, "--spatial-weights", help="local timm weights file"),
    frequency_weights: Path | None = typer.Option(None, "--frequency-weights"),
    steps: int = typer.Option(0, "--steps", help="0: --epochs passes"),
    epochs: int = typer.Option(10, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(2e-4, "--lr"),
    eval_every: int = typer.Option(0, "--eval-every", help="keep the best validation-AUC teacher"),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the dual-branch teacher (resumes from <out>/checkpoints)."""
    try:
        from .train import TeacherTrainConfig, train_teacher

        cfg = TeacherTrainConfig(
            out_dir=str(out),
            data=_data(json_dir, name, rgb_root, compression, frame_num, img_size),
            spatial=spatial,
            frequency=frequency,
            freq_transform=freq_transform,
            spatial_weights=str(spatial_weights) if spatial_weights else None,
            frequency_weights=str(frequency_weights) if frequency_weights else None,
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            seed=seed,
            progress=True,
        )
        outcome = train_teacher(cfg)
    except ForgeryKDError as err:
        _fail(err)
    typer.echo(f"teacher saved to {outcome.teacher_dir}")


@app.command()
def distill(
    teacher: Path = typer.Option(..., "--teacher", help="teacher folder written by train-teacher"),
    json_dir: Path = JSON_DIR,
    name: list[str] = NAMES,
    rgb_root: Path = RGB_ROOT,
    compression: str = COMPRESSION,
    frame_num: int = FRAME_NUM,
    img_size: int = IMG_SIZE,
    out: Path = typer.Option(Path("runs/student"), "--out", "-o"),
    variant: str = typer.Option(
        "dedicated_rotograd", "--variant", help="preset, e.g. shared_both, student_ce"
    ),
    student: str = typer.Option("mobilenetv3_large_100", "--student"),
    homogenize: str | None = typer.Option(None, "--homogenize", help="override the preset's mode"),
    steps: int = typer.Option(0, "--steps"),
    epochs: int = typer.Option(10, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(2e-4, "--lr"),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Distil the teacher into a student; exports <out>/student for `predict`."""
    try:
        from .train import distill as run_distill
        from .train import distill_variant

        overrides = {"homogenize": homogenize} if homogenize else {}
        cfg = distill_variant(
            variant,
            out_dir=str(out),
            data=_data(json_dir, name, rgb_root, compression, frame_num, img_size),
            teacher_dir=str(teacher),
            student=student,
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            checkpoint_every=checkpoint_every,
            seed=seed,
            progress=True,
            **overrides,
        )
        outcome = run_distill(cfg)
    except ForgeryKDError as err:
        _fail(err)
    typer.echo(f"student saved to {outcome.student_dir}; {json.dumps(outcome.diagnostics)}")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="a teacher folder or an exported student folder"),
    json_dir: Path = JSON_DIR,
    name: list[str] = NAMES,
    rgb_root: Path = RGB_ROOT,
    compression: str = COMPRESSION,
    frame_num: int = FRAME_NUM,
    img_size: int = IMG_SIZE,
    split: str = typer.Option("test", "--split"),
    store: Path | None = typer.Option(None, "--store", help="folder for resumable per-video predictions"),
    out: Path | None = typer.Option(None, "--out", "-o", help="write the metrics JSON here"),
) -> None:
    """Frame/video ACC, AUC, EER, AP and per-manipulation AUC on a split."""
    try:
        from .models import CONFIG_FILE, load_detector, load_teacher
        from .train import evaluate as run_evaluate

        config_path = model / CONFIG_FILE
        if not config_path.is_file():
            raise ForgeryKDError(f"{config_path} does not exist; give a teacher or student folder")
        kind = json.loads(config_path.read_text()).get("kind")
        net = load_teacher(model) if kind == "teacher" else load_detector(model)[0]
        dataset = _data(json_dir, name, rgb_root, compression, frame_num, img_size).dataset(split)
        metrics = run_evaluate(net, dataset, store)
    except ForgeryKDError as err:
        _fail(err)
    text = json.dumps(metrics, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)


@app.command()
def calibrate(
    detector: Path = typer.Argument(..., help="exported student folder (its config.json is updated)"),
    json_dir: Path = JSON_DIR,
    name: list[str] = NAMES,
    rgb_root: Path = RGB_ROOT,
    compression: str = COMPRESSION,
    frame_num: int = FRAME_NUM,
    img_size: int = IMG_SIZE,
    split: str = typer.Option("val", "--split", help="a held-out split (not the training one)"),
    target_fpr: float = typer.Option(0.05, "--target-fpr", help="largest false-positive rate allowed"),
) -> None:
    """Pick the detector's threshold for a target false-positive rate on a held-out split and store it."""
    try:
        from .calibrate import calibrate_detector

        dataset = _data(json_dir, name, rgb_root, compression, frame_num, img_size).dataset(split)
        calibration = calibrate_detector(detector, dataset, target_fpr, split=split)
    except ForgeryKDError as err:
        _fail(err)
    typer.echo(json.dumps(calibration.to_dict(), indent=2))


@app.command()
def predict(
    detector: Path = typer.Argument(..., help="exported student folder"),
    path: Path = typer.Argument(..., help="an image, a video or a folder of them"),
    face_detector: str | None = typer.Option(
        None, "--face-detector", help="skimage-lbp, opencv-haar, mtcnn, none"
    ),
    frames: int = typer.Option(32, "--frames", help="frames sampled per video"),
) -> None:
    """Print P(fake) per image and a verdict per video as JSON."""
    try:
        from .detect import IMAGE_SUFFIXES, ForgeryDetector

        det = ForgeryDetector.load(detector, face_detector=face_detector)
        if path.is_dir():
            results = det.predict_folder(path)
        elif not path.is_file():
            raise ForgeryKDError(f"{path} does not exist")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            results = {path.name: det.predict_images([path])[0]}
        else:
            results = {path.name: det.predict_video(path, frames)}
    except ForgeryKDError as err:
        _fail(err)
    typer.echo(
        json.dumps({k: v if isinstance(v, float) else asdict(v) for k, v in results.items()}, indent=2)
    )
