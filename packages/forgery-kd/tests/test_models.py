"""Spec §5 test 3: teacher, student and projector shapes; backbone loading."""

import pytest
import torch
from safetensors.torch import save_file

from forgery_kd import (
    DualBranchTeacher,
    ForgeryKDError,
    Student,
    create_backbone,
    make_projectors,
)

TEACHER_BACKBONE, STUDENT_BACKBONE, IMG = "test_resnet", "test_efficientnet", 32


def test_teacher_student_and_projector_shapes(tiny_teacher):
    x = torch.randn(4, 3, IMG, IMG)
    t = tiny_teacher(x)
    assert t.logits.shape == t.logits_spa.shape == t.logits_freq.shape == (4, 2)
    assert t.feat_spa.shape[1] == t.feat_freq.shape[1] == tiny_teacher.spatial.num_features
    assert tiny_teacher.frequency.conv1[0].in_channels == 12  # FAD: 4 bands × RGB
    student = Student(STUDENT_BACKBONE)
    s = student(x)
    assert s.logits.shape == (4, 2) and s.feat.shape[1] == student.num_features
    projectors = make_projectors(student, tiny_teacher, "dedicated")
    for key, target in (("spa", t.feat_spa), ("freq", t.feat_freq)):
        assert projectors[key](s.feat, size=target.shape[-2:]).shape == target.shape


def test_shared_projector_has_one_parameter_set_and_dedicated_two(tiny_teacher):
    shared = make_projectors(64, tiny_teacher, "shared")
    dedicated = make_projectors(64, tiny_teacher, "dedicated")
    assert shared["spa"] is shared["freq"]
    assert sum(p.numel() for p in shared.parameters()) == sum(p.numel() for p in shared["spa"].parameters())
    assert dedicated["spa"] is not dedicated["freq"]
    assert {id(p) for p in dedicated["spa"].parameters()}.isdisjoint(
        id(p) for p in dedicated["freq"].parameters()
    )
    with pytest.raises(ForgeryKDError, match="equal teacher branch widths"):
        make_projectors(64, {"spa": 8, "freq": 16}, "shared")


def test_branch_only_and_other_transforms():
    teacher = DualBranchTeacher(TEACHER_BACKBONE, TEACHER_BACKBONE, "block_dct", 64)
    out = teacher(torch.randn(2, 3, 64, 64))
    assert out.feat_freq.shape[-1] < out.feat_spa.shape[-1]  # block DCT runs at H/8
    spatial = teacher.branch_only("spatial")
    out = spatial(torch.randn(2, 3, IMG, IMG))
    assert out.feat_freq is None and out.logits.shape == (2, 2) and spatial.frequency is None


def test_local_weights_load_and_first_conv_adaptation(tmp_path):
    source = create_backbone(TEACHER_BACKBONE)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_backbone(TEACHER_BACKBONE, weights=path)
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ForgeryKDError, match="adapt_first_conv=True"):
        create_backbone(TEACHER_BACKBONE, in_chans=12, weights=path)
    adapted = create_backbone(TEACHER_BACKBONE, in_chans=12, weights=path, adapt_first_conv=True)
    w3, w12 = source.conv1[0].weight, adapted.conv1[0].weight
    torch.testing.assert_close(w12, w3.repeat(1, 4, 1, 1) * (3 / 12))  # tiled and divided by the tiles
    with pytest.raises(ForgeryKDError, match="not a timm model"):
        create_backbone("no_such_net")
    with pytest.raises(ForgeryKDError, match="do not exist"):
        create_backbone(TEACHER_BACKBONE, weights=tmp_path / "missing.pth")
