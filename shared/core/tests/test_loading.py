import json

import pytest
import torch

from difflab_core.errors import DifflabError
from difflab_core.loading import load_model, load_pipeline, load_transformers_model, read_json


@pytest.fixture(scope="module")
def saved_pipe(tmp_path_factory, sd_pipes):
    folder = tmp_path_factory.mktemp("pipe") / "tiny-sd1"
    sd_pipes["sd1"].save_pretrained(folder)
    return folder


def test_pipeline_round_trip_offline(saved_pipe, sd_pipes):
    pipe = load_pipeline(saved_pipe, device="cpu")
    ref = sd_pipes["sd1"]
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    for a, b in zip(pipe.unet.parameters(), ref.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert pipe.tokenizer("a photo").input_ids == ref.tokenizer("a photo").input_ids


def test_separate_unet_folder(saved_pipe):
    from diffusers import UNet2DConditionModel

    pipe = load_pipeline(saved_pipe, unet=saved_pipe / "unet", device="cpu")
    assert isinstance(pipe.unet, UNet2DConditionModel)
    unet = load_model(saved_pipe, UNet2DConditionModel, subfolder="unet")
    assert unet.config.sample_size == 16


def test_missing_and_wrong_folders_name_the_path(tmp_path, saved_pipe):
    from diffusers import UNet2DConditionModel

    with pytest.raises(DifflabError, match=r"nope.*not found"):
        load_pipeline(tmp_path / "nope")
    with pytest.raises(DifflabError, match=r"model_index\.json is missing"):
        load_pipeline(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "X", "unet": ["diffusers", "U"]}))
    with pytest.raises(DifflabError, match="no folder: unet"):
        load_pipeline(broken)
    with pytest.raises(DifflabError, match=r"config\.json is missing"):
        load_model(tmp_path, UNet2DConditionModel)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(DifflabError, match=r"empty.*no weights"):
        load_transformers_model(empty)
    with pytest.raises(DifflabError, match="single-file"):
        load_pipeline(saved_pipe / "model_index.json")


def test_text_encoder_folder(saved_pipe):
    from transformers import CLIPTextModel

    enc = load_transformers_model(saved_pipe / "text_encoder", CLIPTextModel)
    assert enc.config.vocab_size == 49408


def test_read_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DifflabError, match=r"bad.json.*not valid JSON"):
        read_json(bad)
    listy = tmp_path / "list.json"
    listy.write_text("[1]")
    with pytest.raises(DifflabError, match="expected a JSON object"):
        read_json(listy)
