"""Spec §5 test 11: learning sanity — the dual teacher learns forgery traces that transfer to unseen sources."""

from forgery_kd.synthetic import make_synthetic_forgeries
from forgery_kd.train import DataConfig, TeacherTrainConfig, evaluate, train_teacher


def test_dual_teacher_generalises_to_unseen_sources(tmp_path):
    info = make_synthetic_forgeries(
        tmp_path / "data", {"train": 48, "val": 2, "test": 24}, frames=4, size=32, seed=0, difficulty=0.0
    )
    data = DataConfig(str(info.json_dir), (info.name,), str(info.root), frame_num=4, img_size=32)
    cfg = TeacherTrainConfig(
        out_dir=str(tmp_path / "teacher"),
        data=data,
        spatial="test_resnet",
        frequency="test_resnet",
        steps=120,
        batch_size=16,
        lr=2e-3,
    )
    teacher = train_teacher(cfg).teacher
    test_auc = evaluate(teacher, data.dataset("test"))["frame"]["auc"]
    assert test_auc > 0.75  # test videos are made from sources the teacher never saw
