import pytest
import torch

from difflab_core.attention import (
    AttentionCapture,
    cross_attention_layers,
    eos_index,
    eos_indices,
    select_layers,
)
from difflab_core.errors import DifflabError
from difflab_core.tiny import clip_tokenizer


@pytest.mark.parametrize(
    "prompt",
    ["a photo of a cat", "", "naïve café 🐱 über straße", " ".join(["word"] * 100)],
)
@pytest.mark.parametrize("pad", ["eos", "!"])
def test_eos_index_is_first_eos(prompt, pad):
    tok = clip_tokenizer(pad=pad)
    e = eos_index(tok, prompt)
    assert e == min(len(tok.encode(prompt)), 77) - 1
    ids = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[e] == 49407
    if e < 76:
        assert ids[e + 1] == (49407 if pad == "eos" else 0)


def test_eos_known_values(tokenizer):
    assert eos_index(tokenizer, "a photo of a cat") == 6
    assert eos_index(tokenizer, "") == 1
    assert eos_index(tokenizer, " ".join(["word"] * 100)) == 76
    assert eos_indices(tokenizer, ["a photo of a cat", ""], 2).tolist() == [6, 6, 1, 1]


def test_eos_index_rejects_non_clip_tokenizer(tokenizer):
    class Fake:
        model_max_length = 77
        eos_token_id = 5

        def __call__(self, prompt, **kw):
            class R:
                input_ids = [1, 2, 3] + [0] * 74

            return R()

    with pytest.raises(DifflabError, match="EOS"):
        eos_index(Fake(), "x")


def test_layer_selection(sd_pipes):
    sd1 = [i.name for i in select_layers(sd_pipes["sd1"].unet, "down-highest")]
    assert sd1 == [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
        "down_blocks.0.attentions.1.transformer_blocks.0.attn2",
    ]
    test_layout = select_layers(sd_pipes["diffusers-test"].unet, "down-highest")
    assert [i.name for i in test_layout] == [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "down_blocks.1.attentions.1.transformer_blocks.0.attn2",
    ]
    assert {i.downsample for i in test_layout} == {2}
    highest = select_layers(sd_pipes["sd1"].unet, "highest")
    assert {i.path for i in highest} == {"down", "up"} and {i.downsample for i in highest} == {1}
    # Heads come from the module: sd2 uses 2 heads in block 0 and 4 in block 1.
    heads = {i.block: i.heads for i in cross_attention_layers(sd_pipes["sd2"].unet) if i.path == "down"}
    assert heads == {0: 2, 1: 4}
    layers = cross_attention_layers(sd_pipes["sd1"].unet)
    assert [i.call_order for i in layers] == list(range(len(layers)))
    assert [i.path for i in layers] == sorted((i.path for i in layers), key=["down", "mid", "up"].index)


def test_layer_spec_errors(sd_pipes):
    unet = sd_pipes["sd1"].unet
    with pytest.raises(DifflabError, match="matches no"):
        select_layers(unet, "nothing_like_this")
    with pytest.raises(DifflabError, match="no cross-attention layer named"):
        select_layers(unet, ["down_blocks.9.attn2"])
    assert len(select_layers(unet, lambda info: info.path == "mid")) == 1


def _run(pipe, prompts, *, steps=3, n=1, capture=None, guidance_scale=3.0, eta=0.0, collect=None):
    kwargs = {}
    if collect is not None:

        def on_step(p, i, t, cb):
            collect.append(cb["latents"].clone())
            return cb

        kwargs = {"callback_on_step_end": on_step, "callback_on_step_end_tensor_inputs": ["latents"]}
    return pipe(
        prompts,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        num_images_per_prompt=n,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        eta=eta,
        **kwargs,
    ).images


@pytest.mark.parametrize("layout", ["sd1", "diffusers-test", "sd2"])
def test_capture_equals_independent_recomputation(sd_pipes, layout):
    pipe = sd_pipes[layout]
    prompts = ["a photo of a cat", "the rocket"]
    cols = eos_indices(pipe.tokenizer, prompts, 2)
    layers = select_layers(pipe.unet, "down-highest")
    saved = {}

    def saver(name):
        def hook(module, args, kwargs):
            saved[name] = (args[0].detach().clone(), kwargs["encoder_hidden_states"].detach().clone())

        return hook

    handles = [
        pipe.unet.get_submodule(info.name).register_forward_pre_hook(saver(info.name), with_kwargs=True)
        for info in layers
    ]
    try:
        with AttentionCapture(
            pipe.unet, layers, scheduler=pipe.scheduler, columns=cols, query_mean=True
        ) as cap:
            _run(pipe, prompts, n=2)
    finally:
        for h in handles:
            h.remove()
    assert cap.captured_steps == [2]
    expected_maps, expected_mass = [], []
    for info in layers:
        attn = pipe.unet.get_submodule(info.name)
        hidden, context = saved[info.name]
        hidden, context = hidden.chunk(2)[1], context.chunk(2)[1]  # conditional half
        q = attn.to_q(hidden)
        k = attn.to_k(context)
        b, nq, inner = q.shape
        d = inner // attn.heads
        q = q.view(b, nq, attn.heads, d).permute(0, 2, 1, 3)
        k = k.view(b, -1, attn.heads, d).permute(0, 2, 1, 3)
        probs = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1).mean(dim=1)  # [B, Q, K]
        side = int(nq**0.5)
        expected_maps.append(probs[torch.arange(b), :, cols].reshape(b, side, side))
        expected_mass.append(probs.mean(dim=1))
        got = cap.records[(info.name, 2)].columns[:, 0]
        torch.testing.assert_close(got, expected_maps[-1], atol=1e-6, rtol=0)
    torch.testing.assert_close(cap.column_map()[:, 0], torch.stack(expected_maps).mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        cap.token_distribution(), torch.stack(expected_mass).mean(0), atol=1e-6, rtol=0
    )
    assert torch.allclose(cap.token_distribution().sum(-1), torch.ones(4))


@pytest.mark.parametrize("layout", ["sd1", "diffusers-test"])
def test_capture_does_not_change_outputs(sd_pipes, layout):
    pipe = sd_pipes[layout]
    before_procs = dict(pipe.unet.attn_processors)
    plain_latents, captured_latents = [], []
    plain = _run(pipe, ["a cat"], collect=plain_latents, eta=1.0)
    cols = eos_indices(pipe.tokenizer, ["a cat"])
    with AttentionCapture(
        pipe.unet, "all", scheduler=pipe.scheduler, steps="all", columns=cols, query_mean=True
    ):
        captured = _run(pipe, ["a cat"], collect=captured_latents, eta=1.0)
    assert torch.equal(plain, captured)
    assert all(torch.equal(a, b) for a, b in zip(plain_latents, captured_latents, strict=True))
    after = pipe.unet.attn_processors
    assert all(after[k] is v for k, v in before_procs.items())


@pytest.mark.parametrize("n_steps", [1, 2, 3, 7])
def test_steps_last_and_all(sd_pipes, n_steps):
    pipe = sd_pipes["sd1"]
    cols = eos_indices(pipe.tokenizer, ["a cat"])
    with AttentionCapture(pipe.unet, scheduler=pipe.scheduler, columns=cols) as last:
        _run(pipe, ["a cat"], steps=n_steps)
    assert last.captured_steps == [n_steps - 1]
    with AttentionCapture(pipe.unet, scheduler=pipe.scheduler, steps="all", columns=cols) as every:
        _run(pipe, ["a cat"], steps=n_steps)
        assert every.captured_steps == list(range(n_steps))
        every.reset()
        assert every.counter.calls == 0 and not every.records
        _run(pipe, ["a cat"], steps=2)
        assert every.captured_steps == [0, 1]


def test_capture_errors(sd_pipes):
    pipe = sd_pipes["sd1"]
    cols = eos_indices(pipe.tokenizer, ["a cat"])
    with pytest.raises(DifflabError, match="records nothing"):
        AttentionCapture(pipe.unet, scheduler=pipe.scheduler)
    with (
        pytest.raises(DifflabError, match="CFG-doubled"),
        AttentionCapture(pipe.unet, scheduler=pipe.scheduler, columns=cols),
    ):
        _run(pipe, ["a cat"], guidance_scale=1.0)
    with (
        pytest.raises(DifflabError, match="one column index per image"),
        AttentionCapture(pipe.unet, scheduler=pipe.scheduler, columns=torch.tensor([1, 2, 3])),
    ):
        _run(pipe, ["a cat"])
    # processors were restored despite the errors
    assert not any(type(p).__name__ == "_CaptureProcessor" for p in pipe.unet.attn_processors.values())
