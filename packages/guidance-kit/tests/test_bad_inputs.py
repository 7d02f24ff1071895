import pytest
import torch

from guidance_kit import GuidanceKitError, classifier_guidance, compress_cfg
from guidance_kit.noise import prediction_type


def _ddim(pipe):
    return pipe(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5, output_type="np"
    )


def test_compress_cfg_needs_a_cfg_batch(tiny_sd):
    with pytest.raises(GuidanceKitError, match=r"CompressGuidance|sample\("), compress_cfg(tiny_sd, skip=2):
        tiny_sd(["a cat"], num_inference_steps=4, guidance_scale=1.0, output_type="pt")


def test_classifier_logits_and_labels_are_checked(ddim_pipe):
    def flat_logits(x, t):
        return x.flatten()

    with (
        pytest.raises(GuidanceKitError, match="logits"),
        classifier_guidance(ddim_pipe, flat_logits, [0, 1], skip=1),
    ):
        _ddim(ddim_pipe)

    def three_classes(x, t):
        return x.flatten(1)[:, :3]

    with (
        pytest.raises(GuidanceKitError, match="labels"),
        classifier_guidance(ddim_pipe, three_classes, [0, 7], skip=1),
    ):
        _ddim(ddim_pipe)
    with (
        pytest.raises(GuidanceKitError, match="form"),
        classifier_guidance(ddim_pipe, three_classes, [0, 1], form="score"),
    ):
        pass


def test_unsupported_prediction_type():
    class Config:
        prediction_type = "flow"

    class Scheduler:
        config = Config()

    with pytest.raises(GuidanceKitError, match="prediction_type"):
        prediction_type(Scheduler())
