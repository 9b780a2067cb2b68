"""Random crops and flips: their pixels, their Jacobians, and that evaluation skips them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import layers as L
from jaxnet.layers import augmentation
from jaxnet.verify import check_jacobian, relative_error


def _images(key, shape=(5, 6, 7, 2)):
    return jax.random.normal(key, shape)


def test_random_crop_moves_pixels_by_offsets_within_the_padding(key):
    k_x, k_aug = jax.random.split(key)
    x, padding = _images(k_x), 3
    y = L.RandomCrop(padding).apply((), x, key=k_aug)
    offsets = np.asarray(augmentation.crop_offsets(k_aug, x.shape[0], padding))
    assert np.abs(offsets).max() <= padding
    xn = np.asarray(x)
    for n, (dh, dw) in enumerate(offsets):  # the definition, pixel by pixel
        expected = np.zeros_like(xn[n])
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                if 0 <= i + dh < x.shape[1] and 0 <= j + dw < x.shape[2]:
                    expected[i, j] = xn[n, i + dh, j + dw]
        np.testing.assert_array_equal(np.asarray(y[n]), expected)


def test_random_flip_mirrors_about_half_the_images(key):
    k_x, k_aug = jax.random.split(key)
    x = _images(k_x, (400, 2, 3, 1))
    y = np.asarray(L.RandomFlip.apply((), x, key=k_aug))
    mirrored = np.all(y == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(y == np.asarray(x), axis=(1, 2, 3))
    assert np.all(mirrored | kept)
    assert 150 < mirrored.sum() < 250  # Bernoulli(1/2) over 400 images: 10 sigma either side


@pytest.mark.parametrize("layer", [L.RandomCrop(2), L.RandomCrop(0), L.RandomFlip])
def test_augmentation_is_the_identity_without_a_key(layer, key):
    x = _images(key)
    np.testing.assert_array_equal(np.asarray(layer.apply((), x)), np.asarray(x))
    assert layer.init(key, x.shape[1:])[0] == x.shape[1:]


@pytest.mark.parametrize("layer", [L.RandomCrop(2), L.RandomFlip])
@pytest.mark.parametrize("with_key", [True, False])
def test_augmentation_jacobians_and_vjp_match_autodiff(layer, with_key, key):
    k_x, k_aug, k_g = jax.random.split(key, 3)
    x, aug = _images(k_x, (3, 4, 5, 2)), (k_aug if with_key else None)
    n = 1
    _, J_x = layer.jacobians((), x, n, key=aug)
    result = check_jacobian(lambda x_n: layer.apply((), x.at[n].set(x_n), key=aug)[n], J_x, x[n])
    assert result.passed, result
    g = jax.random.normal(k_g, x.shape)
    _, pullback = jax.vjp(lambda x_: layer.apply((), x_, key=aug), x)
    assert relative_error(layer.vjp((), x, g, key=aug)[1], pullback(g)[0]) < 1e-15


def test_augmentation_rejects_what_is_not_an_image(key):
    with pytest.raises(ValueError, match=r"RandomCrop padding must be an int >= 0, got -1"):
        L.RandomCrop(-1)
    with pytest.raises(ValueError, match=r"RandomFlip expects images \(H, W, C\), got example"):
        L.RandomFlip.init(key, (10,))
    with pytest.raises(ValueError, match=r"RandomCrop expects images \(N, H, W, C\)"):
        L.RandomCrop(1).apply((), jnp.ones((2, 3)), key=key)
