import numpy as np
import pytest
import torch

from difflab_core.attention import eos_indices
from difflab_core.testbed.planted import PlantedAttention
from mem_locate.errors import MemLocateError
from mem_locate.localize import (
    BrightEnding,
    binarize,
    normalize_maps,
    otsu_threshold,
    ren_le_layer,
    upsample_map,
)

KW = {"num_inference_steps": 2, "guidance_scale": 3.0}


@pytest.mark.parametrize("layout", ["diffusers-test", "sd1"])
def test_planted_region_is_localized(pipes, layout):
    pipe = pipes[layout]
    prompts = ["a photo of a cat", "a red square"]
    mask = torch.zeros(2, 16, 16)
    mask[0, :8, :8] = 1
    mask[1, 8:, 4:12] = 1
    eos = eos_indices(pipe.tokenizer, prompts, 1)
    be = BrightEnding(pipe)
    res = be(prompts, **KW, inner_context=PlantedAttention(pipe.unet, mask, eos, strength=8.0))
    side = 8 if layout == "diffusers-test" else 16
    assert res.maps.shape == (2, side, side) and res.maps.dtype == torch.float32
    pred = res.binarize("otsu", size=16)
    for b in range(2):
        inter = (pred[b] * mask[b]).sum()
        union = ((pred[b] + mask[b]) > 0).sum()
        assert inter / union > 0.8
    assert res.eos_index.tolist() == eos.tolist()
    assert res.layers == [info.name for info in be.layers]


def test_seeds_are_per_prompt_and_batching_free(pipes):
    pipe = pipes["sd1"]
    be = BrightEnding(pipe)
    both = be(["a cat", "a dog"], **KW, num_images_per_prompt=2, seed=5, eta=1.0)
    second = be("a dog", **KW, num_images_per_prompt=2, seed=6, eta=1.0)
    assert torch.allclose(both.maps[2:], second.maps, atol=1e-6)
    assert torch.allclose(both.images[2:], second.images, atol=1e-5)
    # the two images of one prompt come from one generator call: different latents
    assert not torch.allclose(both.images[0], both.images[1])


def test_scheduler_swapped_only_during_the_call(pipes):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    pipe = pipes["sd1"]
    saved = pipe.scheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(saved.config)
    try:
        seen = []
        res = BrightEnding(pipe)(
            "a cat", **KW, callback_on_step_end=lambda p, i, t, kw: (seen.append(type(p.scheduler)), kw)[1]
        )
        assert seen == [DDIMScheduler, DDIMScheduler]
        assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
        ddim = DDIMScheduler.from_config(saved.config)
        ddim.set_timesteps(2)
        assert res.timestep == float(ddim.timesteps[-1])
    finally:
        pipe.scheduler = saved


def test_bad_inputs(pipes):
    pipe = pipes["sd1"]
    be = BrightEnding(pipe)
    with pytest.raises(MemLocateError, match="eos_index"):
        be(prompt_embeds=torch.zeros(1, 77, 32), **KW)
    with pytest.raises(MemLocateError, match="num_inference_steps"):
        be("a", num_inference_steps=0)
    with pytest.raises(MemLocateError, match="guidance_scale"):
        be("a", num_inference_steps=2, guidance_scale=1.0)
    with pytest.raises(MemLocateError, match="matches no cross-attention"):
        BrightEnding(pipe, layers=r"^nothing\.here$")

    class Stub:
        transformer = object()
        tokenizer = object()

    with pytest.raises(MemLocateError, match="BE needs a UNet with cross-attention"):
        BrightEnding(Stub())


def test_prompt_embeds_with_eos_index(pipes):
    pipe = pipes["sd1"]
    be = BrightEnding(pipe)
    ref = be("a photo of a cat", **KW)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "")
    res = be(prompt_embeds=cond, negative_prompt_embeds=uncond, eos_index=int(ref.eos_index[0]), **KW)
    assert torch.allclose(res.maps, ref.maps, atol=1e-6)


def test_ren_le_layer(pipes):
    assert ren_le_layer(pipes["sd1"].unet).name == "down_blocks.1.attentions.1.transformer_blocks.0.attn2"
    # diffusers-test has only up/down block-1 layers: index 3 exists among 5 attn2 layers
    names = [n for n, m in pipes["diffusers-test"].unet.named_modules() if n.endswith("attn2")]
    assert ren_le_layer(pipes["diffusers-test"].unet).name in names


def test_map_helpers():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.2, 0.05, 500), rng.normal(0.8, 0.05, 300)])
    assert abs(otsu_threshold(x) - threshold_otsu(x)) < 1e-9
    maps = torch.rand(3, 4, 4)
    n = normalize_maps(maps)
    assert torch.allclose(n.amin(dim=(1, 2)), torch.zeros(3)) and torch.allclose(
        n.amax(dim=(1, 2)), torch.ones(3)
    )
    assert torch.allclose(normalize_maps(maps, "mean").mean(dim=(1, 2)), torch.ones(3))
    g = normalize_maps(maps, per_image=False)
    assert float(g.min()) == 0 and float(g.max()) == 1
    assert torch.equal(normalize_maps(torch.ones(1, 2, 2)), torch.zeros(1, 2, 2))
    up = upsample_map(maps, 8)
    ref = torch.nn.functional.interpolate(maps[:, None], size=(8, 8), mode="bilinear", align_corners=False)[
        :, 0
    ]
    assert torch.equal(up, ref)
    assert torch.equal(binarize(maps, 0.5), (maps > 0.5).float())
