"""Spec §5 test 8: face cropping with scikit-image's bundled LBP cascade."""

import pytest
from PIL import Image
from skimage import data

from forgery_kd import FaceCropper, ForgeryKDError
from forgery_kd.faces import extract_frames

ASTRONAUT_FACE = (70, 180, 90)  # (top, left, side) of Eileen Collins' face, read off the 512×512 photo


def test_astronaut_face_is_found_and_cropped():
    cropper = FaceCropper("skimage-lbp", margin=1.3, size=64)
    image = Image.fromarray(data.astronaut())
    boxes = cropper.detect(image)
    top, left, side = ASTRONAUT_FACE
    assert any(abs(b[0] - top) <= 20 and abs(b[1] - left) <= 20 and abs(b[2] - side) <= 20 for b in boxes)
    crop = cropper(image)
    assert crop.face_found and crop.image.size == (64, 64)
    assert crop.box[2] == pytest.approx(1.3 * boxes[0][2], abs=1)


def test_coffee_falls_back_to_a_centre_crop():
    crop = FaceCropper("skimage-lbp", size=32)(Image.fromarray(data.coffee()))
    assert not crop.face_found
    assert crop.box == (0, 100, 400)  # 400×600 photo: the centre square


def test_opencv_haar_and_bad_arguments(tmp_path):
    import cv2

    astronaut = Image.fromarray(data.astronaut())
    if hasattr(cv2, "CascadeClassifier"):
        assert FaceCropper("opencv-haar", size=32)(astronaut).face_found
    else:
        with pytest.raises(ForgeryKDError, match="CascadeClassifier"):
            FaceCropper("opencv-haar", size=32)(astronaut)
    with pytest.raises(ForgeryKDError, match="unknown"):
        FaceCropper("dlib")
    with pytest.raises(ForgeryKDError, match="does not exist"):
        extract_frames(tmp_path / "missing.mp4")
