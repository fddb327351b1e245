import numpy as np
import pytest

from vfnb.data.channels import crop_or_pad_to_cube, make_input_channels, random_cube_offset, window


def test_windows_match_reference_definition():
    hu = np.array([-1000, -60, 40, 140, 500, -350, 400, 1150, 3000], dtype=np.int16)
    soft = window(hu, 40, 200)
    np.testing.assert_allclose(soft[:5], [0.0, 0.0, 0.5, 1.0, 1.0])
    bone = window(hu, 400, 1500)
    np.testing.assert_allclose(bone[5:], [0.0, 0.5, 1.0, 1.0])
    assert soft.dtype == np.float32


def test_input_channels_shape_and_position_code():
    image = np.full((4, 5, 6), 400, dtype=np.int16)
    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1:3, 1:3, 1:4] = 1
    x = make_input_channels(image, mask, label=20)
    assert x.shape == (3, 4, 5, 6) and x.dtype == np.float32
    assert set(np.unique(x[2])) == {0.0, np.float32(20 / 28)}
    assert x[2].sum() == pytest.approx(mask.sum() * 20 / 28)
    np.testing.assert_allclose(x[0], 1.0)
    np.testing.assert_allclose(x[1], 0.5)
    with pytest.raises(ValueError, match="shape"):
        make_input_channels(image, mask[:2], 20)


def test_crop_or_pad_centred_and_offset():
    x = np.arange(1 * 6 * 2 * 4, dtype=np.float32).reshape(1, 6, 2, 4)
    cube = crop_or_pad_to_cube(x, 4)
    assert cube.shape == (1, 4, 4, 4)
    # axis 0 cropped from 1 (centred), axis 1 padded by 1 before, axis 2 unchanged
    np.testing.assert_array_equal(cube[0, :, 1:3, :], x[0, 1:5, :, :])
    assert cube[0, :, 0, :].sum() == 0 and cube[0, :, 3, :].sum() == 0
    shifted = crop_or_pad_to_cube(x, 4, offset=(2, 0, 0))
    np.testing.assert_array_equal(shifted[0, :, 0:2, :], x[0, 2:6, :, :])
    with pytest.raises(ValueError):
        crop_or_pad_to_cube(x, 4, offset=(3, 0, 0))


def test_random_offsets_stay_in_range():
    rng = np.random.default_rng(0)
    for _ in range(50):
        off = random_cube_offset((10, 3, 8), 8, rng)
        assert 0 <= off[0] <= 2 and 0 <= off[1] <= 5 and off[2] == 0
        crop_or_pad_to_cube(np.zeros((3, 10, 3, 8)), 8, off)
