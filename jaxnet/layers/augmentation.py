"""Data augmentation as stochastic layers: random crops and horizontal flips of NHWC images.

Like dropout, they act only when given a PRNG key (training) and are the identity without one,
so they run on the device inside the compiled training step, a fresh draw per example and step,
and evaluation sees the images as they are. For a fixed key each is a linear map that moves
pixels, so its Jacobian is a 0/1 selection matrix, written below beside the forward code.

- RandomCrop(padding): zero-pad by `padding` on each side of H and W, then cut an H x W window
  at an offset (o_h, o_w) drawn uniformly from [0, 2 padding]^2: the "pad 4 and crop 32" of
  CIFAR-10 training (He et al. 2016). Equivalently y[i, j] = x[i + o_h - p, j + o_w - p], 0
  outside the image.
- RandomFlip: mirror each image left to right with probability 1/2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.layers import _windows as win
from jaxnet.layers.base import Layer


def _check_images(name, x):
    if x.ndim != 4:
        raise ValueError(f"{name} expects images (N, H, W, C), got an input of shape {x.shape}")


def _image_shape(name, input_shape):
    if len(input_shape) != 3:
        raise ValueError(f"{name} expects images (H, W, C), got example shape {input_shape}")
    return tuple(input_shape)


def crop_offsets(key, n: int, padding: int):
    """Per-example shifts d = (o_h - p, o_w - p), each entry uniform in [-p, p]: (n, 2) int32."""
    return jax.random.randint(key, (n, 2), -padding, padding + 1)


def shift(x, offsets, padding: int):
    """y[n, i, j] = x[n, i + d_h, j + d_w], 0 outside the image, (d_h, d_w) = offsets[n]."""
    _, h, w, c = x.shape
    padded = win.pad_hw(x, ((padding, padding), (padding, padding)))
    cut = lambda img, d: jax.lax.dynamic_slice(img, (padding + d[0], padding + d[1], 0), (h, w, c))
    return jax.vmap(cut)(padded, offsets)


def unshift(g, offsets, padding: int):
    """The transpose of `shift`: each g[n, i, j] added back at x[n, i + d_h, j + d_w]."""
    n, h, w, c = g.shape
    zeros = jnp.zeros((h + 2 * padding, w + 2 * padding, c), g.dtype)
    put = lambda gi, d: jax.lax.dynamic_update_slice(zeros, gi, (padding + d[0], padding + d[1], 0))
    return win.crop_hw(jax.vmap(put)(g, offsets), ((padding, padding), (padding, padding)), (h, w))


def shift_jacobian(d, shape, dtype):
    """dy_{ijc}/dx_{i'j'c'} = [i' = i + d_h] [j' = j + d_w] [c = c'] for one example."""
    h, w, c = shape
    rows = jax.nn.one_hot(jnp.arange(h) + d[0], h, dtype=dtype)  # all 0 where i + d_h is outside
    cols = jax.nn.one_hot(jnp.arange(w) + d[1], w, dtype=dtype)
    return jnp.einsum("ia,jb,cd->ijcabd", rows, cols, jnp.eye(c, dtype=dtype))


def RandomCrop(padding: int) -> Layer:
    """Random H x W crops of the images zero-padded by `padding`, when called with a key."""
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"RandomCrop padding must be an int >= 0, got {padding!r}")

    def offsets(x, key):
        if key is None:
            return jnp.zeros((x.shape[0], 2), jnp.int32)
        return crop_offsets(key, x.shape[0], padding)

    def init(rng, input_shape):
        return _image_shape("RandomCrop", tuple(input_shape)), ()

    def apply(params, x, *, key=None):
        _check_images("RandomCrop", x)
        return x if key is None else shift(x, offsets(x, key), padding)

    def jacobians(params, x, n, *, key=None):
        return (), shift_jacobian(offsets(x, key)[n], x.shape[1:], x.dtype)

    def vjp(params, x, g, *, key=None):
        return (), g if key is None else unshift(g, offsets(x, key), padding)

    return Layer("random_crop", init, apply, jacobians, vjp, {"padding": padding})


def flips(key, n: int):
    """Which of n images are mirrored: Bernoulli(1/2) each."""
    return jax.random.bernoulli(key, 0.5, (n,))


def _random_flip() -> Layer:
    """Each image mirrored left to right with probability 1/2, when called with a key."""

    def mirror(x, key):
        return jnp.where(flips(key, x.shape[0])[:, None, None, None], x[:, :, ::-1], x)

    def init(rng, input_shape):
        return _image_shape("RandomFlip", tuple(input_shape)), ()

    def apply(params, x, *, key=None):
        _check_images("RandomFlip", x)
        return x if key is None else mirror(x, key)

    def jacobians(params, x, n, *, key=None):
        """Identity; mirrored: dy_{ijc}/dx_{i'j'c'} = [i = i'] [j' = W - 1 - j] [c = c']."""
        eye = jnp.eye(x[n].size, dtype=x.dtype).reshape(x.shape[1:] * 2)
        if key is None:
            return (), eye
        return (), jnp.where(flips(key, x.shape[0])[n], eye[:, ::-1], eye)

    def vjp(params, x, g, *, key=None):
        return (), g if key is None else mirror(g, key)  # a mirror is its own transpose

    return Layer("random_flip", init, apply, jacobians, vjp, {})


RandomFlip = _random_flip()
