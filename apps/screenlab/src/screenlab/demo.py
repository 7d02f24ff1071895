"""``screenlab demo``: the whole screening story on data that ships with the installed packages.

Stages (each cached under ``OUT/cache/<quick|full>/``; a rerun reuses them, an interrupted one resumes):

1. forgery-kd's synthetic forgery set (real and manipulated "videos" in the DeepfakeBench layout), a tiny
   dual-branch teacher trained on it and distilled into a smaller RGB student (dedicated projectors and
   RotoGrad homogenization), exported as a detector, its threshold calibrated on the validation split
   (5 % false-positive rate) and evaluated on the held-out test split;
2. the screening folder: scikit-learn digits, patches of scikit-image photos and LFW faces, sorted into
   ``<category>/`` folders, plus the first frame of every held-out synthetic video (real or forged) in
   ``forgery-set/``;
3. the screening job of ``screenlab run`` on that folder: labels by collage prompting on collage-prompt's
   simulated VLM (fitted on other images of the same categories) or on a real endpoint (``base_url``),
   the same images one per call as the baseline, and P(fake) from the detector;
4. ``report.json`` + ``report.html``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from collage_prompt.prompt import ClassList
from difflab_core.cli import status

from .errors import ScreenlabError
from .images import scan_folder
from .report import write_report
from .screen import ScreenConfig, ScreenResult, screen
from .vlm import describe, endpoint_vlm, simulated_vlm

__all__ = ["DemoConfig", "DemoResult", "DemoSize", "demo_categories", "run_demo"]

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHOTOS = {  # collage-prompt's texture classes (patches of one scikit-image photo each) -> category name
    "camera": "cameraman",
    "astronaut": "astronaut",
    "coffee": "coffee",
    "chelsea": "cat",
    "rocket": "rocket",
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
}
FACE = "face"
FORGERY_FOLDER = "forgery-set"
IMG_SIZE = 64
FRAMES = 4
TEACHER_BACKBONE = "test_resnet"
STUDENT_BACKBONE = "test_byobnet"
VARIANT = "dedicated_rotograd"


@dataclass(frozen=True)
class DemoSize:
    """How much the demo screens and trains: screened images per category, synthetic training videos (the
    held-out test split is half as many), training steps, and the simulator's training images per category."""

    digits_per_class: int
    photos_per_class: int
    faces: int
    videos: int
    teacher_steps: int
    student_steps: int
    train_per_class: int = 30


QUICK = DemoSize(
    digits_per_class=5, photos_per_class=4, faces=15, videos=48, teacher_steps=70, student_steps=100
)
FULL = DemoSize(
    digits_per_class=20, photos_per_class=15, faces=40, videos=160, teacher_steps=300, student_steps=400
)


@dataclass
class DemoConfig:
    """Demo settings; ``base_url`` swaps the simulated VLM for a real OpenAI-compatible endpoint."""

    out: Path = Path("screenlab-demo")
    quick: bool = False
    base_url: str | None = None
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"
    grid: int = 3
    max_cost_usd: float = 1.0
    device: str = "auto"

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


@dataclass
class DemoResult:
    """What `run_demo` returns: the screening result (its figures as in ``report.json``) and the report paths."""

    result: ScreenResult
    report_html: Path
    report_json: Path
    notes: list[str]

    @property
    def figures(self) -> dict[str, Any]:
        return self.result.figures


def demo_categories() -> ClassList:
    """The demo's 19 categories: ten digits (with the numeral as a synonym), eight photo subjects, face."""
    return ClassList.from_names(
        [[name, str(i)] for i, name in enumerate(DIGITS)] + [[name] for name in PHOTOS.values()] + [[FACE]]
    )


# ------------------------------------------------------------------------------------------ detector
def _detector(cache: Path, size: DemoSize, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train (once) the tiny teacher and student on forgery-kd's synthetic set; returns the exported detector
    folder and its card (backbones, steps, parameters, test-split frame AUCs)."""
    from forgery_kd import (
        DataConfig,
        TeacherTrainConfig,
        calibrate_detector,
        count_parameters,
        distill,
        distill_variant,
        evaluate,
        make_synthetic_forgeries,
        train_teacher,
    )

    card_path = cache / "detector.json"
    detector_dir = cache / "student" / "student"
    if card_path.is_file():
        card = json.loads(card_path.read_text())
        if "threshold" in card:  # a card from before threshold calibration: resume below and calibrate
            return detector_dir, card
    data_dir = cache / "forgeries"
    if not (data_dir / "json" / "Synthetic.json").is_file():
        with status("writing forgery-kd's synthetic forgery set", progress):
            make_synthetic_forgeries(
                data_dir, n_videos=size.videos, frames=FRAMES, size=IMG_SIZE, seed=0, difficulty=0.0
            )
    data = DataConfig(
        str(data_dir / "json"), ("Synthetic",), str(data_dir), frame_num=FRAMES, img_size=IMG_SIZE
    )
    common = {"data": data, "batch_size": 16, "lr": 2e-3, "seed": 0, "progress": progress}
    teacher = train_teacher(
        TeacherTrainConfig(
            out_dir=str(cache / "teacher"),
            spatial=TEACHER_BACKBONE,
            frequency=TEACHER_BACKBONE,
            steps=size.teacher_steps,
            **common,
        )
    ).teacher
    student = distill(
        distill_variant(
            VARIANT,
            out_dir=str(cache / "student"),
            student=STUDENT_BACKBONE,
            steps=size.student_steps,
            cache_teacher=True,
            **common,
        ),
        teacher,
    )
    with status("calibrating the detector's threshold on the held-out validation videos", progress):
        calibration = calibrate_detector(student.student_dir, data.dataset("val"))
    with status("evaluating teacher and student on the held-out synthetic videos", progress):
        test = data.dataset("test")
        card = {
            "teacher": f"{TEACHER_BACKBONE} (RGB) + {TEACHER_BACKBONE} (FAD frequency)",
            "student": STUDENT_BACKBONE,
            "variant": VARIANT,
            "teacher_steps": size.teacher_steps,
            "student_steps": size.student_steps,
            "params_teacher": count_parameters(teacher),
            "params_student": count_parameters(student.student),
            "teacher_test_frame_auc": evaluate(teacher, test)["frame"]["auc"],
            "student_test_frame_auc": evaluate(student.student, test)["frame"]["auc"],
            "threshold": calibration.threshold,
            "threshold_target_fpr": calibration.target_fpr,
            "threshold_val_fpr": calibration.fpr,
            "threshold_val_tpr": calibration.tpr,
            "youden_threshold": calibration.youden_threshold,
        }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return student.student_dir, card


# ------------------------------------------------------------------------------------------- images
def _face_images(indices) -> list[Image.Image]:
    from skimage.data import lfw_subset

    faces = lfw_subset()[:100]  # the first 100 are faces, 25x25 grey in [0, 1]
    return [
        Image.fromarray((faces[i] * 255).round().astype(np.uint8))
        .resize((IMG_SIZE, IMG_SIZE), Image.BILINEAR)
        .convert("RGB")
        for i in indices
    ]


def _bundled(size: DemoSize, categories: ClassList):
    """``(screened, train_images, train_labels)``: ``screened`` maps a category to its screened images; the
    simulator's training images are other images of the same categories."""
    from collage_prompt import offline_dataset

    index = {name: i for i, name in enumerate(categories.names)}
    n_train = size.train_per_class
    screened: dict[str, list[Image.Image]] = {}
    train_images: list[Image.Image] = []
    train_labels: list[int] = []
    digits = offline_dataset("digits", size=IMG_SIZE)
    photos = offline_dataset("textures", size=IMG_SIZE, per_class=n_train + size.photos_per_class, seed=0)
    for data, names, n_screened in (
        (digits, DIGITS, size.digits_per_class),
        (photos, list(PHOTOS.values()), size.photos_per_class),
    ):
        for c, name in enumerate(names):
            where = np.flatnonzero(data.labels == c)
            train_images += [data.images[i] for i in where[:n_train]]
            train_labels += [index[name]] * n_train
            screened[name] = [data.images[i] for i in where[n_train : n_train + n_screened]]
    if n_train + size.faces > 100:
        raise ScreenlabError(f"the demo has 100 LFW faces; {n_train} + {size.faces} requested")
    train_images += _face_images(range(n_train))
    train_labels += [index[FACE]] * n_train
    screened[FACE] = _face_images(range(n_train, n_train + size.faces))
    return screened, train_images, train_labels


def _screening_set(root: Path, screened: dict[str, list[Image.Image]], forgery_data: Path) -> dict[str, int]:
    """Write the screening folder once; returns the known forgery truth by image id (bundled photos: real)."""
    manifest = root / "forged.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())
    from forgery_kd import DataConfig

    forged: dict[str, int] = {}
    for name, images in screened.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            im.save(root / name / f"{i:04d}.png")
            forged[f"{name}/{i:04d}.png"] = 0
    test = DataConfig(
        str(forgery_data / "json"), ("Synthetic",), str(forgery_data), frame_num=FRAMES, img_size=IMG_SIZE
    )
    (root / FORGERY_FOLDER).mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for record in test.dataset("test").records:
        video = Path(record.video_id).name
        if video in seen:
            continue
        seen.add(video)
        Image.open(record.path).convert("RGB").save(root / FORGERY_FOLDER / f"{video}.png")
        forged[f"{FORGERY_FOLDER}/{video}.png"] = int(record.label)
    manifest.write_text(json.dumps(forged, indent=1) + "\n")
    return forged


# ----------------------------------------------------------------------------------------------- run
def run_demo(config: DemoConfig, *, progress: bool = True) -> DemoResult:
    """Run (or resume) the demo and write ``OUT/report.html`` + ``OUT/report.json``; see the module docstring."""
    from difflab_core.metrics import roc_auc

    size = QUICK if config.quick else FULL
    cache = Path(config.out) / "cache" / config.mode
    cache.mkdir(parents=True, exist_ok=True)
    detector_dir, card = _detector(cache, size, progress)
    categories = demo_categories()
    with status("preparing the screening folder and the simulated VLM", progress):
        screened, train_images, train_labels = _bundled(size, categories)
        root = cache / "screening-set"
        forged = _screening_set(root, screened, cache / "forgeries")
        items = scan_folder(root, categories, forged)
        if config.base_url:
            client = endpoint_vlm(config.base_url, config.model, api_key_env=config.api_key_env)
        else:
            client = simulated_vlm(train_images, train_labels, categories, config.model)
    vlm_tag = re.sub(r"[^A-Za-z0-9.]+", "-", f"{getattr(client, 'host', 'simulated')}-{client.model}").strip(
        "-"
    )
    result = screen(
        items,
        categories,
        cache / f"screen-{vlm_tag}",
        client,
        detector_dir=detector_dir,
        device=config.device,
        config=ScreenConfig(
            grid=config.grid,
            baseline=True,
            max_cost_usd=config.max_cost_usd,
            workers=4 if config.base_url else 1,
        ),
        progress=progress,
    )
    on_set = [
        r for r in result.rows if r["id"].startswith(f"{FORGERY_FOLDER}/") and r["forgery_score"] is not None
    ]
    kinds = {r["forged"] for r in on_set}
    result.figures["forgery"]["auc_forgery_set"] = (
        roc_auc([r["forgery_score"] for r in on_set], [r["forged"] for r in on_set])
        if kinds == {0, 1}
        else None
    )
    result.figures["detector"] = card
    notes = [
        f"Labels come from {describe(client, config.api_key_env)}."
        + (
            " The simulator's eyes are a classifier fitted on other images of the same categories "
            f"({size.train_per_class} per category); answers carry its position and neighbour effects."
            if not config.base_url
            else ""
        ),
        f"Screened: {len(items)} images — scikit-learn digits, patches of scikit-image photos and LFW faces in "
        f"<category>/ folders (all real), and in {FORGERY_FOLDER}/ the first frame of each held-out synthetic "
        f"video of forgery-kd's generator ({sum(forged[i] for i in forged)} forged, the rest real).",
        f"Forgery scores: P(fake) from a {card['student']} student ({card['params_student']:,} parameters) distilled "
        f"from a {card['teacher']} teacher ({card['params_teacher']:,}) with {card['variant']}, "
        f"{card['teacher_steps']} + {card['student_steps']} steps on the synthetic training split; on the "
        f"held-out test frames the teacher's AUC is {card['teacher_test_frame_auc']:.3f} and the student's "
        f"{card['student_test_frame_auc']:.3f}. Flag threshold P(fake) >= {card['threshold']:.3f}, picked on the "
        f"held-out validation frames for a false-positive rate of at most {card['threshold_target_fpr']:.0%} "
        f"(there: FPR {card['threshold_val_fpr']:.3f}, TPR {card['threshold_val_tpr']:.3f}).",
    ]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    settings["size"] = asdict(size)
    html_path, json_path = write_report(
        Path(config.out),
        result,
        items,
        title=f"screenlab demo ({config.mode})",
        notes=notes,
        settings=settings,
    )
    return DemoResult(result, html_path, json_path, notes)
