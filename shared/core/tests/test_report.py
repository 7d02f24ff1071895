"""Tests of difflab_core.report: JSON conversion, heat-map overlays, grids and the self-contained HTML report."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab_core.errors import DifflabError
from difflab_core.report import HtmlReport, colormap, heatmap_overlay, image_grid, to_jsonable, write_json


@dataclasses.dataclass
class _Cfg:
    name: str
    steps: int
    out: Path


def test_write_json_roundtrip(tmp_path: Path) -> None:
    data = {
        "f32": np.float32(0.25),
        "i64": np.int64(7),
        "arr": np.arange(6, dtype=np.int16).reshape(2, 3),
        "t0": torch.tensor(1.5),
        "t": torch.tensor([[1.0, 2.0]], requires_grad=True),
        "bf": torch.tensor([0.5], dtype=torch.bfloat16),
        "path": Path("a/b.png"),
        "cfg": _Cfg("x", 3, Path("o")),
        "tuple": (1, np.bool_(True)),
        np.int32(5): "numpy key",
        "nested": [{"x": np.float64(2.0)}],
    }
    path = write_json(tmp_path / "sub" / "out.json", data)
    assert path == tmp_path / "sub" / "out.json"
    loaded = json.loads(path.read_text())
    assert loaded == {
        "f32": 0.25,
        "i64": 7,
        "arr": [[0, 1, 2], [3, 4, 5]],
        "t0": 1.5,
        "t": [[1.0, 2.0]],
        "bf": [0.5],
        "path": "a/b.png",
        "cfg": {"name": "x", "steps": 3, "out": "o"},
        "tuple": [1, True],
        "5": "numpy key",
        "nested": [{"x": 2.0}],
    }
    assert type(loaded["i64"]) is int
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left behind


def test_write_json_is_atomic_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_json(path, {"ok": 1})
    with pytest.raises(DifflabError, match="object"):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert to_jsonable({1, 3, 2}) == [1, 2, 3]


def test_colormap_endpoints_and_monotone_brightness() -> None:
    c = colormap(np.linspace(0, 1, 11)).astype(int)
    assert c.shape == (11, 3) and c.dtype == np.int64
    assert c[0].sum() < 30 and c[-1].sum() > 600
    assert (np.diff(c.sum(axis=1)) > 0).all()
    assert (colormap(np.array([-1.0, 2.0])) == colormap(np.array([0.0, 1.0]))).all()


@pytest.mark.parametrize("kind", ["tensor", "numpy", "pil"])
def test_heatmap_overlay_changes_hot_quadrant_most(kind: str) -> None:
    h, w = 32, 48
    gen = torch.Generator().manual_seed(0)
    img_t = torch.rand(3, h, w, generator=gen) * 0.1  # dark: the cold colour (near black) barely changes it
    img_u8 = (img_t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = {"tensor": img_t, "numpy": img_u8, "pil": Image.fromarray(img_u8)}[kind]
    heat = np.zeros((8, 8))
    heat[:4, 4:] = 5.0  # top-right quadrant hot (scale is arbitrary)
    out = heatmap_overlay(image, heat, alpha=0.5)
    assert out.size == (w, h) and out.mode == "RGB"
    change = np.abs(np.asarray(out, dtype=float) - img_u8.astype(float)).sum(axis=-1)
    quads = {
        "tl": change[: h // 2, : w // 2].mean(),
        "tr": change[: h // 2, w // 2 :].mean(),
        "bl": change[h // 2 :, : w // 2].mean(),
        "br": change[h // 2 :, w // 2 :].mean(),
    }
    assert quads["tr"] > 2 * max(quads["tl"], quads["bl"], quads["br"])
    # far from the quadrant edge, the blend is exactly (image + colour) / 2
    expected = 0.5 * img_u8[2, -3].astype(float) + 0.5 * colormap(np.array(1.0)).astype(float)
    assert np.abs(np.asarray(out)[2, -3].astype(float) - expected).max() <= 1.0
    assert np.array_equal(np.asarray(heatmap_overlay(image, heat, alpha=0.0)), img_u8)
    # any scale and tensor dtype: an affine rescale of a bf16 [1,h,w] map gives the same overlay
    heat_t = torch.tensor(heat * 0.5 - 3.0, dtype=torch.bfloat16)[None]
    assert np.array_equal(np.asarray(heatmap_overlay(image, heat_t, alpha=0.5)), np.asarray(out))


def test_heatmap_overlay_rejects_bad_input() -> None:
    img = torch.zeros(3, 4, 4)
    with pytest.raises(DifflabError, match="alpha"):
        heatmap_overlay(img, np.zeros((2, 2)), alpha=1.5)
    with pytest.raises(DifflabError, match="NaN"):
        heatmap_overlay(img, np.full((2, 2), np.nan))
    with pytest.raises(DifflabError, match="channels first"):
        heatmap_overlay(torch.zeros(4, 4, 3), np.zeros((2, 2)))


def test_image_grid_layout() -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30), (200, 100, 50)]
    imgs = [Image.new("RGB", (10, 8), c) for c in colors]
    grid = image_grid(imgs, ncols=3, pad=2)
    assert grid.size == (3 * 10 + 2 * 2, 2 * 8 + 1 * 2)
    a = np.asarray(grid)
    for i, c in enumerate(colors):
        r, col = divmod(i, 3)
        assert tuple(a[r * 10 + 4, col * 12 + 5]) == c
    assert tuple(a[10 + 4, 2 * 12 + 5]) == (255, 255, 255)  # empty last cell
    assert image_grid(imgs[:2], ncols=5, pad=0).size == (20, 8)


def _decode_pngs(doc: str) -> list[Image.Image]:
    out = []
    for b64 in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', doc):
        raw = base64.b64decode(b64, validate=True)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        out.append(Image.open(io.BytesIO(raw)))
    return out


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    rep = HtmlReport("Attack <b>results</b> & more")
    rep.add_heading("Section <1>")
    rep.add_text("a < b\nline two")
    rep.add_table([{"method": "<x>", "auc": np.float64(0.91234567)}, {"method": "y", "tpr": 0.5}])
    rep.add_image(torch.rand(3, 12, 20), caption="tensor <img>")
    rep.add_images(
        [np.zeros((7, 9, 3), np.uint8), Image.new("RGB", (5, 6)), torch.ones(1, 4, 4)],
        captions=["a", "b", "c"],
    )
    rep.add_json({"k": np.arange(3), "s": "</pre><script>"})
    doc = rep.render()

    assert "<title>Attack &lt;b&gt;results&lt;/b&gt; &amp; more</title>" in doc
    assert "Section &lt;1&gt;" in doc and "a &lt; b" in doc and "&lt;x&gt;" in doc
    assert "<script>" not in doc and "&lt;/pre&gt;&lt;script&gt;" in doc
    assert "0.9123" in doc and "<th>tpr</th>" in doc
    assert "http://" not in doc and "https://" not in doc
    assert doc.count("data:image/png;base64,") == 4
    sizes = [im.size for im in _decode_pngs(doc)]
    assert sizes == [(20, 12), (9, 7), (5, 6), (4, 4)]

    path = rep.save(tmp_path / "r" / "report.html")
    assert path.read_text(encoding="utf-8") == doc

    with pytest.raises(DifflabError, match="captions"):
        rep.add_images([torch.zeros(3, 2, 2)], captions=["a", "b"])


def test_html_plot_svg_polyline() -> None:
    rep = HtmlReport("plot")
    xs = np.linspace(0, 1, 17)
    rep.add_plot(
        {"loss <train>": (xs, np.exp(-xs)), "val": (torch.arange(5), [3.0, 2.0, 2.5, 1.0, 0.5])},
        title="Loss",
        xlabel="step",
        ylabel="value",
    )
    doc = rep.render()
    assert doc.count("<svg") == 1 and "</svg>" in doc
    assert "http://" not in doc and "https://" not in doc
    lines = re.findall(r'<polyline data-series="([^"]*)"[^>]*points="([^"]*)"', doc)
    assert [name for name, _ in lines] == ["loss &lt;train&gt;", "val"]
    pts = [np.array([[float(v) for v in p.split(",")] for p in pts.split()]) for _, pts in lines]
    assert [len(p) for p in pts] == [17, 5]
    # pixel coordinates preserve order: x increases; y decreases (SVG y grows downward) as loss falls
    assert (np.diff(pts[0][:, 0]) > 0).all() and (np.diff(pts[0][:, 1]) > 0).all()
    # the points are an affine image of the data: equal x spacing maps to equal pixel spacing
    assert np.allclose(np.diff(pts[0][:, 0]), np.diff(pts[0][:, 0])[0], atol=0.02)

    with pytest.raises(DifflabError, match="equal lengths"):
        HtmlReport("x").add_plot({"bad": ([1, 2], [1])})


def test_package_versions_reports_installed_and_missing_distributions():
    import torch

    from difflab_core.report import package_versions

    found = package_versions("torch", "no-such-distribution-xyz")
    assert found["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert found["no-such-distribution-xyz"] == "not installed"
