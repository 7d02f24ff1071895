import numpy as np
import pytest
import torch
from skimage import data as skdata
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from difflab_core.data import (
    PHOTO_NAMES,
    EpochSampler,
    ImageCaptionDataset,
    _to_float_rgb,
    compose_digit,
    digits,
    epoch_seed,
    sample_photo,
    weighted_sampler,
)
from difflab_core.errors import DifflabError


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_every_photo_is_float_rgb_in_unit_range(name):
    photo = sample_photo(name)
    assert photo.dtype == torch.float32
    assert photo.ndim == 3 and photo.shape[0] == 3
    assert photo.min() >= 0.0 and photo.max() <= 1.0
    assert photo.std() > 0.01  # a real image, not a constant


def test_photo_matches_skimage_pixels():
    raw = skdata.astronaut()
    photo = sample_photo("astronaut")
    assert photo.shape == (3, *raw.shape[:2])
    expected = torch.from_numpy(raw.astype(np.float32) / 255.0).permute(2, 0, 1)
    assert torch.equal(photo, expected)


def test_grey_photo_is_repeated_to_three_channels():
    raw = skdata.camera()
    photo = sample_photo("camera")
    expected = torch.from_numpy(raw.astype(np.float32) / 255.0)
    for c in range(3):
        assert torch.equal(photo[c], expected)


def test_rgba_composited_over_white():
    # The bundled logo is RGBA (fully opaque): it keeps its RGB channels.
    raw = skdata.logo()
    assert raw.shape[-1] == 4
    expected = torch.from_numpy(raw[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)
    assert torch.allclose(sample_photo("logo"), expected, atol=1e-6)
    # Partial transparency blends towards white: 0.2 * 1 + 0.8 * rgb.
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = [[0, 51, 255], [255, 255, 0]]
    out = _to_float_rgb(rgba)
    alpha = rgba[..., 3] / 255.0
    for c, value in enumerate((1.0, 0.0, 0.0)):
        np.testing.assert_allclose(out[c].numpy(), value * alpha + (1 - alpha), atol=1e-6)
    assert torch.all(out[:, 0, 0] == 1.0)  # fully transparent → white


def test_photo_resized_square_and_deterministic():
    a = sample_photo("chelsea", size=64)
    b = sample_photo("chelsea", size=64)
    assert a.shape == (3, 64, 64)
    assert torch.equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    # Centre crop then shrink: the mean colour matches the centre square of the original.
    full = sample_photo("chelsea")
    h, w = full.shape[1:]
    side = min(h, w)
    left = (w - side) // 2
    centre = full[:, :, left : left + side]
    assert torch.allclose(a.mean(dim=(1, 2)), centre.mean(dim=(1, 2)), atol=0.01)


def test_photo_same_size_is_crop_only():
    raw = skdata.chelsea()  # 300 x 451
    photo = sample_photo("chelsea", size=300)
    left = (451 - 300) // 2
    expected = torch.from_numpy(raw[:, left : left + 300].astype(np.float32) / 255.0).permute(2, 0, 1)
    assert torch.equal(photo, expected)


def test_returned_photo_is_a_fresh_copy():
    a = sample_photo("coffee")
    a.zero_()
    assert sample_photo("coffee").max() > 0


def test_unknown_photo_lists_names():
    with pytest.raises(DifflabError) as err:
        sample_photo("lena")
    message = str(err.value)
    assert "lena" in message
    for name in PHOTO_NAMES:
        assert name in message


def test_bad_size_rejected():
    with pytest.raises(DifflabError, match="size"):
        sample_photo("coffee", size=0)


def test_digits_count_range_and_values():
    images, labels = digits()
    assert images.shape == (1797, 1, 8, 8)
    assert images.dtype == torch.float32 and labels.dtype == torch.long
    bunch = load_digits()
    assert torch.equal(labels, torch.from_numpy(bunch.target).long())
    assert torch.allclose(images[:, 0], torch.from_numpy(bunch.images / 16.0).float())
    assert images.min() == 0.0 and images.max() == 1.0


def test_digits_class_filter():
    images, labels = digits(classes=[3, 7])
    target = load_digits().target
    assert len(labels) == int(np.isin(target, [3, 7]).sum())
    assert set(labels.tolist()) == {3, 7}
    all_images, all_labels = digits()
    assert torch.equal(images, all_images[(all_labels == 3) | (all_labels == 7)])
    with pytest.raises(DifflabError, match=r"0\.\.9"):
        digits(classes=[10])


def test_digits_resized_and_deterministic():
    a, la = digits(size=16, classes=[0])
    b, lb = digits(size=16, classes=[0])
    assert a.shape == (len(la), 1, 16, 16)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.min() >= 0.0 and a.max() <= 1.0
    small, _ = digits(classes=[0])
    # Bilinear upsampling by exactly 2 keeps the per-image mean (up to the edge clamp).
    assert torch.allclose(a.mean(dim=(1, 2, 3)), small.mean(dim=(1, 2, 3)), atol=0.03)


def test_compose_digit_colours_pixels():
    images, _ = digits(classes=[1])
    digit = images[0]
    fg, bg = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    out = compose_digit(digit, size=20, fg_rgb=fg, bg_rgb=bg, top_left=(5, 9))
    assert out.shape == (3, 20, 20)
    mask = torch.zeros(20, 20)
    mask[5:13, 9:17] = digit[0]
    bright, dark = mask == 1.0, mask == 0.0
    assert bright.any()
    assert torch.all(out[:, bright] == torch.tensor(fg)[:, None])
    assert torch.all(out[:, dark] == torch.tensor(bg)[:, None])
    # Everything outside the pasted box is background.
    assert torch.all(out[:, :5] == torch.tensor(bg)[:, None, None])
    # Intermediate intensities blend linearly.
    mid = (mask > 0) & (mask < 1)
    expected = (1 - mask[mid]) * torch.tensor(bg)[:, None] + mask[mid] * torch.tensor(fg)[:, None]
    assert torch.allclose(out[:, mid], expected)


def test_compose_digit_rejects_out_of_canvas():
    digit = torch.ones(1, 8, 8)
    with pytest.raises(DifflabError, match="does not fit"):
        compose_digit(digit, size=10, fg_rgb=(1, 1, 1), bg_rgb=(0, 0, 0), top_left=(3, 0))
    with pytest.raises(DifflabError, match="fg_rgb"):
        compose_digit(digit, size=10, fg_rgb=(2, 1, 1), bg_rgb=(0, 0, 0), top_left=(0, 0))


def test_image_caption_dataset_items_and_batches():
    images = torch.rand(5, 3, 4, 4)
    captions = [f"image {i}" for i in range(5)]
    ds = ImageCaptionDataset(images, captions)
    item = ds[3]
    assert torch.equal(item["pixel_values"], images[3])
    assert item["caption"] == "image 3" and item["index"] == 3
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["pixel_values"].shape == (2, 3, 4, 4)
    assert batch["caption"] == ["image 0", "image 1"]
    assert batch["index"].tolist() == [0, 1]
    with pytest.raises(DifflabError, match="captions"):
        ImageCaptionDataset(images, captions[:4])


def test_weighted_sampler_seeded_and_respects_weights():
    weights = [0.0, 1.0, 0.0, 3.0]
    a = list(weighted_sampler(weights, 400, seed=1))
    b = list(weighted_sampler(weights, 400, seed=1))
    c = list(weighted_sampler(weights, 400, seed=2))
    assert a == b and a != c
    assert set(a) <= {1, 3}
    assert 0.65 < a.count(3) / len(a) < 0.85  # expected 0.75
    sampler = weighted_sampler(weights, 50, seed=1)
    first, second = list(sampler), list(sampler)
    assert first != second  # a new pass draws anew
    sampler.set_epoch(1)
    assert list(sampler) == second  # ... and set_epoch replays it
    ds = ImageCaptionDataset(torch.zeros(4, 1, 2, 2), list("abcd"), weights=weights)
    assert list(ds.sampler(400, seed=1)) == a


def test_epoch_sampler_orders():
    sampler = EpochSampler(10, seed=3)
    e0, e1 = list(sampler), list(sampler)
    assert sorted(e0) == list(range(10)) and e0 != e1
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(epoch_seed(3, 1))).tolist()
    assert e1 == expected
    sampler.set_epoch(0)
    assert list(sampler) == e0
    assert list(EpochSampler(4, shuffle=False)) == [0, 1, 2, 3]
    assert epoch_seed(3, 1) != epoch_seed(3, 2) and epoch_seed(3, 1) != epoch_seed(4, 1)
