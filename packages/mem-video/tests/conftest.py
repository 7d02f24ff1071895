import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sprite_testbed(tmp_path_factory):
    """The sprite testbed at per_type=6, built once per session."""
    from mem_video.testbed import SpriteMemTestbed

    return SpriteMemTestbed(seed=0, per_type=6).build(cache_dir=tmp_path_factory.mktemp("testbed"))


@pytest.fixture(scope="session")
def testbed_index(sprite_testbed, tmp_path_factory):
    """An index of the testbed's training videos and images (tiny embedder, Farneback, 64×64 flows)."""
    from mem_video import ClipSource, VideoIndex

    out = tmp_path_factory.mktemp("index")
    return VideoIndex.build(
        ClipSource(sprite_testbed.videos + sprite_testbed.images), out, content_fps=None, flow_size=(64, 64)
    )


@pytest.fixture(scope="session")
def testbed_audit(sprite_testbed, testbed_index, tmp_path_factory):
    """The audit of every generated testbed video."""
    from mem_video import audit

    return audit(sprite_testbed.generated, testbed_index, tmp_path_factory.mktemp("audit"))


@pytest.fixture(scope="session")
def video_pipe():
    """The tiny TextToVideoSDPipeline of difflab_core."""
    from difflab_core.tiny import tiny_video_pipeline

    return tiny_video_pipeline()


@pytest.fixture(scope="session")
def animatediff_pipe():
    """A tiny AnimateDiffPipeline (UNet2DConditionModel + MotionAdapter, diffusers-test sizes)."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel

    from difflab_core.tiny import clip_tokenizer, sd_scheduler_config, seeded, tiny_text_encoder, tiny_vae

    with seeded(0):
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=2,
        )
        adapter = MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=2,
            motion_norm_num_groups=2,
            motion_num_attention_heads=4,
        )
    pipe = AnimateDiffPipeline(
        unet=unet,
        motion_adapter=adapter,
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(seed=1),
        tokenizer=clip_tokenizer(),
        scheduler=DDIMScheduler(**sd_scheduler_config()),
        feature_extractor=None,
        image_encoder=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
