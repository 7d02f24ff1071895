import json

import numpy as np
import pytest
import torch
from PIL import Image

from guidance_kit import CaptionStats, GuidanceKitError, NeighbourIndex, normalise_caption, read_captions


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A folder of 12 bundled-photo crops (scikit-image) as PNGs in two subfolders."""
    from skimage import data

    root = tmp_path_factory.mktemp("images")
    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    for i in range(12):
        photo = photos[i % 3]
        crop = photo[20 * i : 20 * i + 48, 10 * i : 10 * i + 48]
        sub = root / f"part{i % 2}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(sub / f"img{i:02d}.png")
    return root


def test_build_reload_and_search_equal_brute_force(image_folder, tmp_path):
    built = NeighbourIndex.build(image_folder, tmp_path / "index", pixel_size=32, shard_size=5)
    assert len(list((tmp_path / "index").glob("shard-*.safetensors"))) == 3
    loaded = NeighbourIndex.load(tmp_path / "index")
    assert len(loaded) == 12 and loaded.pixel_size == 32
    assert torch.equal(loaded.pixels(range(12)), built.pixels(range(12)))
    queries = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    scores, rows = loaded.search(queries, 5)
    q = torch.nn.functional.interpolate(
        queries, size=(32, 32), mode="bilinear", antialias=True, align_corners=False
    )
    brute = ((q.flatten(1)[:, None] - loaded.flat_pixels()[None]) ** 2).mean(-1).sqrt()
    expected, expected_rows = brute.sort(dim=1)
    torch.testing.assert_close(scores, expected[:, :5], atol=1e-5, rtol=0)
    assert torch.equal(rows, expected_rows[:, :5])
    items = [json.loads(x) for x in (tmp_path / "index" / "items.jsonl").read_text().splitlines()]
    assert items[0]["path"] == "part0/img00.png" and len(items[0]["sha256"]) == 64


def test_index_errors(image_folder, tmp_path):
    with pytest.raises(GuidanceKitError, match="manifest"):
        NeighbourIndex.load(tmp_path)
    NeighbourIndex.build(image_folder, tmp_path / "idx", pixel_size=16)
    shard = next((tmp_path / "idx").glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    with pytest.raises(GuidanceKitError, match="sha256"):
        NeighbourIndex.load(tmp_path / "idx")
    manifest = tmp_path / "idx" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"format_version": 99}))
    with pytest.raises(GuidanceKitError, match="format version"):
        NeighbourIndex.load(tmp_path / "idx")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GuidanceKitError, match="no readable images"):
        NeighbourIndex.build(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    Image.new("RGB", (8, 8)).save(broken / "b.png")
    with pytest.raises(GuidanceKitError, match="unreadable"):
        NeighbourIndex.build(broken)
    index = NeighbourIndex.build(torch.rand(3, 3, 8, 8))
    with pytest.raises(GuidanceKitError, match="backend"):
        index.search(torch.rand(1, 3, 8, 8), 1, "sscd")


def test_caption_formats_and_normalisation(image_folder, tmp_path):
    index = NeighbourIndex.build(image_folder, tmp_path / "index")
    paths = [item["path"] for item in index.items]
    texts = ["A  photo of a CAT!" if i % 2 else "“a photo of a cat”" for i in range(len(paths))]
    (tmp_path / "c.jsonl").write_text(
        "\n".join(json.dumps({"file_name": p, "text": t}) for p, t in zip(paths, texts, strict=True))
    )
    (tmp_path / "c.csv").write_text(
        "file,caption\n" + "\n".join(f"{p},{t.replace(',', ' ')}" for p, t in zip(paths, texts, strict=True))
    )
    (tmp_path / "c.tsv").write_text(
        "image\tcaption\n" + "\n".join(f"{p}\t{t}" for p, t in zip(paths, texts, strict=True))
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"file": paths, "caption": texts}), tmp_path / "c.parquet")
    sidecars = tmp_path / "sidecars"
    for p, t in zip(paths, texts, strict=True):
        (sidecars / p).parent.mkdir(parents=True, exist_ok=True)
        (sidecars / p).with_suffix(".txt").write_text(t)
    for source in ("c.jsonl", "c.csv", "c.tsv", "c.parquet", "sidecars"):
        stats = CaptionStats.build(tmp_path / source, index, tmp_path / "stats")
        assert stats.norms == ["a photo of a cat"] and int(stats.counts[0]) == 12, source
    reloaded = CaptionStats.load(tmp_path / "stats")
    assert reloaded.caption_of(3) == stats.caption_of(3)
    assert reloaded.dup_caption(torch.arange(12)[None], min_count=12) == [stats.texts[0]]
    assert reloaded.dup_caption(torch.arange(12)[None], min_count=13) == [None]
    assert reloaded.dup_caption(torch.arange(12)[None], min_count=12, mode="nearest") == [stats.texts[0]]
    assert normalise_caption("  ＂Ｈello,   World.＂ ") == "hello, world"
    (tmp_path / "dup.jsonl").write_text(
        '{"file": "a.png", "caption": "x"}\n{"file": "a.png", "caption": "y"}\n'
    )
    with pytest.raises(GuidanceKitError, match="lines 1 and 2"):
        read_captions(tmp_path / "dup.jsonl")
