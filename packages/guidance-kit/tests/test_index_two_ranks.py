"""A two-rank index build under ``accelerate launch`` (CPU, gloo) equals a single-process build."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from difflab_core.loading import file_sha256
from difflab_core.tiny import seeded, tiny_vae
from guidance_kit import NeighbourIndex
from guidance_kit.index import load_vae

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("GUIDANCE_KIT_SLOW") != "1",
        reason="starts three Python processes (about 2 minutes on 2 cores); GUIDANCE_KIT_SLOW=1 runs it",
    ),
]


class TinyEmbedder(torch.nn.Module):
    """A stand-in for SSCD's TorchScript file: [B, 3, H, W] → [B, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """11 random 32×32 PNGs (an odd count: the ranks get 6 and 5), a tiny VAE folder and a TorchScript
    embedder."""
    root = tmp_path_factory.mktemp("two_ranks")
    images = root / "images"
    images.mkdir()
    gen = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(gen.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    tiny_vae().save_pretrained(root / "vae")
    with seeded(0):
        torch.jit.trace(TinyEmbedder().eval(), torch.rand(1, 3, 224, 224)).save(str(root / "embedder.pt"))
    return root


def _args(root, out):
    return [
        "build-index",
        str(root / "images"),
        str(out),
        "--backend",
        "pixel",
        "--backend",
        "sscd",
        "--sscd",
        str(root / "embedder.pt"),
        "--vae",
        str(root / "vae"),
        "--pixel-size",
        "16",
    ]


def test_two_rank_build_equals_single_process_build(inputs, tmp_path):
    out = tmp_path / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port()), "-m", "guidance_kit"]
    # ACCELERATE_USE_CPU: Accelerate's gloo process group on CPU (MULTI_CPU), also on a machine with GPUs
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(launch + _args(inputs, out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 2 and all(r["count"] == 11 for r in reports)  # both ranks ran and see all rows

    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    for shard in manifest["shards"]:
        assert file_sha256(out / shard["file"]) == shard["sha256"]
    from safetensors.torch import load_file

    rank_rows = [load_file(str(out / s["file"]))["rows"].tolist() for s in manifest["shards"]]
    assert rank_rows == [list(range(6)), list(range(6, 11))]

    single_dir = tmp_path / "single"
    NeighbourIndex.build(
        inputs / "images",
        single_dir,
        backends=("pixel", "sscd"),
        sscd_path=inputs / "embedder.pt",
        pixel_size=16,
        vae=load_vae(inputs / "vae"),
    )
    two, one = NeighbourIndex.load(out), NeighbourIndex.load(single_dir)
    assert len(two) == len(one) == 11
    assert torch.equal(two.pixels(range(11)), one.pixels(range(11)))
    assert torch.equal(two.labels, one.labels)
    assert two.items == one.items
    torch.testing.assert_close(two.keys["sscd"].float(), one.keys["sscd"].float(), rtol=0, atol=1e-3)
    torch.testing.assert_close(two.latents(range(11)), one.latents(range(11)), rtol=0, atol=2e-3)
    single_manifest = json.loads((single_dir / "manifest.json").read_text())
    strip = ("shards",)
    assert {k: v for k, v in manifest.items() if k not in strip} == {
        k: v for k, v in single_manifest.items() if k not in strip
    }
    query = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(two.search(query, 4)[1], one.search(query, 4)[1])
