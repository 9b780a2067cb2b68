"""Tests of jaxnet.shapes (CNN arithmetic, notes 002 Sec. 3).

Against the formulas, against real forward passes of jaxnet's Conv2D / MaxPool / AvgPool (and
jax.lax's own 'SAME' / 'VALID' padding), against a brute-force receptive field, and against the
notes' numbers (13 / 169, 34,944, 55 x 55 x 96, 27 x 27 x 96).

Random sizes come from a numpy generator seeded by the test's `key`.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import layers as L
from jaxnet import shapes
from jaxnet.layers import AvgPool, Conv2D, Dense, MaxPool, serial


def rng_from(key):
    """A numpy generator seeded by the test's fresh JAX key."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)))


def formula_pads(n, k, s, padding):
    """The padding each style adds, written out independently of the library.

    'same' is checked separately.
    """
    if padding == "valid":
        return (0, 0)
    if padding == "full":
        return (k - 1, k - 1)
    return tuple(padding)


def formula_size(n, k, s, pads):
    lo, hi = pads
    return (n + lo + hi - k) // s + 1


def random_geometry(rng, padding, pool=False):
    """n, k, s and a padding argument valid for that style."""
    k = int(rng.integers(1, 6))
    s = int(rng.integers(1, 5))
    if padding == "valid":
        n = int(rng.integers(k, 21))
    else:
        n = int(rng.integers(1, 21))
    if padding == "explicit":
        limit = k if pool else 4  # pooling: padding smaller than the window
        while True:
            lo, hi = int(rng.integers(0, limit)), int(rng.integers(0, limit))
            if n + lo + hi >= k:
                return n, k, s, (lo, hi)
            n += 1
    return n, k, s, padding


# ------------------------------------------------------------------------- output sizes


@pytest.mark.parametrize("padding", ["valid", "full", "explicit"])
def test_output_size_formula(key, padding):
    rng = rng_from(key)
    for _ in range(200):
        n, k, s, p = random_geometry(rng, padding)
        assert shapes.padding_pair(n, k, s, p) == formula_pads(n, k, s, p)
        assert shapes.output_size(n, k, s, p) == formula_size(n, k, s, formula_pads(n, k, s, p))


def test_output_size_same_is_ceil_n_over_s(key):
    rng = rng_from(key)
    for _ in range(300):
        n, k, s, _ = random_geometry(rng, "same")
        lo, hi = shapes.padding_pair(n, k, s, "same")
        assert (
            shapes.output_size(n, k, s, "same")
            == math.ceil(n / s)
            == formula_size(n, k, s, (lo, hi))
        )
        # the least padding giving ceil(n / s) outputs, the odd element after the input (as XLA /
        # TensorFlow)
        assert lo >= 0 and hi - lo in (0, 1)
        assert lo + hi == max((math.ceil(n / s) - 1) * s + k - n, 0)
    # stride 1, odd window: the classic k // 2 on each side
    assert shapes.padding_pair(17, 5, 1, "same") == (2, 2)
    assert shapes.output_size(17, 5, 1, "same") == 17


def test_full_with_stride_one_gives_n_plus_k_minus_1(key):
    rng = rng_from(key)
    for _ in range(50):
        n, k = int(rng.integers(1, 30)), int(rng.integers(1, 8))
        assert shapes.output_size(n, k, 1, "full") == n + k - 1
        if n >= k:
            assert shapes.output_size(n, k, 1, "valid") == n - k + 1


def test_padding_style_is_case_insensitive():
    assert shapes.output_size(10, 3, 2, "SAME") == shapes.output_size(10, 3, 2, "same") == 5
    assert shapes.output_size(10, 3, 2, "Valid") == 4


def test_conv_output_shape_formula(key):
    rng = rng_from(key)
    for padding in ["valid", "same", "full", "explicit"]:
        for _ in range(30):
            (h, kh, sh, ph), (w, kw, sw, pw) = (
                random_geometry(rng, padding),
                random_geometry(rng, padding),
            )
            c, m = int(rng.integers(1, 5)), int(rng.integers(1, 9))
            pad_arg = (ph, pw) if padding == "explicit" else padding
            if padding == "same":
                expected = (math.ceil(h / sh), math.ceil(w / sw))
            else:
                expected = (
                    formula_size(h, kh, sh, formula_pads(h, kh, sh, ph)),
                    formula_size(w, kw, sw, formula_pads(w, kw, sw, pw)),
                )
            assert shapes.conv_output_shape(
                (h, w, c), (kh, kw), m, (sh, sw), pad_arg
            ) == expected + (m,)
            assert shapes.conv_output_shape(
                (h, w, c), (kh, kw), None, (sh, sw), pad_arg
            ) == expected + (c,)
            assert shapes.conv_output_shape((7, h, w, c), (kh, kw), m, (sh, sw), pad_arg) == (
                7,
            ) + expected + (m,)
    # default stride 1
    assert shapes.conv_output_shape((9, 8, 3), (3, 2), 4) == (7, 7, 4)


# ------------------------------------------------------------------------- real forward passes


LAX_PADDING = {"same": "SAME", "valid": "VALID"}


def lax_pairs(padding, window):
    if padding in LAX_PADDING:
        return LAX_PADDING[padding]
    if padding == "full":
        return tuple((k - 1, k - 1) for k in window)
    return tuple(padding)


def numpy_init(rng):
    """A jax.nn.initializers-style initialiser drawing from numpy (no per-shape XLA compilation)."""
    return lambda key, shape, dtype: jnp.asarray(rng.normal(size=shape), dtype)


@pytest.mark.parametrize("padding", ["valid", "same", "full", "explicit"])
def test_conv2d_shapes_match_forward_pass(key, padding):
    rng = rng_from(key)
    for case in range(4):
        (h, kh, sh, ph), (w, kw, sw, pw) = (
            random_geometry(rng, padding),
            random_geometry(rng, padding),
        )
        c, m = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        pad_arg = (ph, pw) if padding == "explicit" else padding
        layer = Conv2D(
            m, (kh, kw), (sh, sw), pad_arg, W_init=numpy_init(rng), b_init=numpy_init(rng)
        )
        out_shape, params = layer.init(jax.random.fold_in(key, case), (h, w, c))
        expected = shapes.conv_output_shape((h, w, c), (kh, kw), m, (sh, sw), pad_arg)
        assert out_shape == expected
        assert params["W"].shape == (kh, kw, c, m) and params["b"].shape == (m,)

        @jax.jit
        def forward_and_reference(params, x):
            # XLA's convolution with its own padding rule for 'SAME' / 'VALID'
            ref = jax.lax.conv_general_dilated(
                x,
                params["W"],
                (sh, sw),
                lax_pairs(pad_arg, (kh, kw)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            return layer.apply(params, x), ref + params["b"][None, None, None, :]

        y, ref = forward_and_reference(params, jnp.asarray(rng.normal(size=(2, h, w, c))))
        assert y.shape == (2,) + expected
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
        if padding == "same":
            assert y.shape[1:3] == (math.ceil(h / sh), math.ceil(w / sw))
        assert (
            shapes.param_count(params)
            == shapes.conv_param_count((kh, kw), c, m)
            == m * (c * kh * kw + 1)
        )


@pytest.mark.parametrize("pool", [MaxPool, AvgPool], ids=["MaxPool", "AvgPool"])
@pytest.mark.parametrize("padding", ["valid", "same", "full", "explicit"])
def test_pooling_shapes_match_forward_pass(key, pool, padding):
    rng = rng_from(key)
    for case in range(4):
        (h, kh, sh, ph), (w, kw, sw, pw) = (
            random_geometry(rng, padding, pool=True),
            random_geometry(rng, padding, pool=True),
        )
        c = int(rng.integers(1, 4))
        pad_arg = (ph, pw) if padding == "explicit" else padding
        strides = None if case == 0 else (sh, sw)  # default stride: the window
        layer = pool((kh, kw), strides, pad_arg)
        out_shape, params = layer.init(jax.random.fold_in(key, case), (h, w, c))
        assert params == ()
        expected = shapes.conv_output_shape((h, w, c), (kh, kw), None, strides or (kh, kw), pad_arg)
        assert out_shape == expected
        pads = lax_pairs(pad_arg, (kh, kw))
        pads = pads if isinstance(pads, str) else ((0, 0),) + pads + ((0, 0),)
        dims, steps = (1, kh, kw, 1), (1,) + (strides or (kh, kw)) + (1,)

        @jax.jit
        def forward_and_reference(x):
            # XLA's reduce_window with its own padding rule for 'SAME' / 'VALID'
            if pool is MaxPool:
                ref = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, steps, pads)
            else:
                ref = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, steps, pads) / (kh * kw)
            return layer.apply((), x), ref

        y, ref = forward_and_reference(jnp.asarray(rng.normal(size=(2, h, w, c))))
        assert y.shape == (2,) + expected
        np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-14)
        assert np.all(np.isfinite(y))


# ------------------------------------------------------------------------- receptive field


def test_receptive_field_notes_figure_3():
    """k1 = k2 = 5, s = 2: r = (k2 - 1) s + k1 = 13, i.e. 169 pixels in two dimensions."""
    r = shapes.receptive_field([(5, 2), (5, 1)])
    assert r == (5 - 1) * 2 + 5 == 13
    assert r**2 == 169
    # the span of the k2 strided activations: s (k2 - 1) + 1 = 9 outputs of the first convolution
    assert 2 * (5 - 1) + 1 == 9


def test_receptive_field_two_layers(key):
    rng = rng_from(key)
    for _ in range(100):
        (k1, s1), (k2, s2) = rng.integers(1, 8, size=(2, 2))
        assert (
            shapes.receptive_field([(int(k1), int(s1)), (int(k2), int(s2))]) == (k2 - 1) * s1 + k1
        )


def brute_force_field(stack):
    """Input indices that one output of a 1-D (window, stride) stack depends on.

    Found by propagating the index set down.
    """
    indices = {0}
    for k, s in reversed(stack):
        indices = {i * s + p for i in indices for p in range(k)}
    return indices


def test_receptive_field_random_stacks_brute_force(key):
    rng = rng_from(key)
    assert shapes.receptive_field([]) == 1
    for _ in range(200):
        depth = int(rng.integers(1, 6))
        stack = [(int(rng.integers(1, 6)), int(rng.integers(1, 4))) for _ in range(depth)]
        field = brute_force_field(stack)
        assert shapes.receptive_field(stack) == max(field) - min(field) + 1
        if all(k >= s for k, s in stack):  # no gaps: every input in the span matters
            assert shapes.receptive_field(stack) == len(field)


def positive_init(key, shape, dtype):
    return jax.random.uniform(key, shape, dtype, 0.5, 1.5)


def influence_count(stack, n, out_index):
    """Nonzero entries of d y[out_index] / d x for a stack of Conv2D layers, positive kernels."""
    net = serial(*[Conv2D(1, win, st, "valid", W_init=positive_init) for win, st in stack])
    in_shape = (n[0], n[1], 1)
    out_shape, params = net.init(jax.random.PRNGKey(0), in_shape)
    grad = jax.jit(jax.grad(lambda x: net.apply(params, x)[(0,) + out_index + (0,)]))(
        jnp.ones((1,) + in_shape)
    )
    nz = np.argwhere(np.asarray(grad)[0, :, :, 0] != 0)
    return out_shape, nz


def test_receptive_field_matches_gradient_of_jaxnet_convolutions(key):
    rng = rng_from(key)
    for _ in range(3):
        depth = int(rng.integers(1, 4))
        stack = [(int(rng.integers(1, 5)), int(rng.integers(1, 3))) for _ in range(depth)]
        stack = [(max(k, s), s) for k, s in stack]  # k >= s: no gaps
        r = shapes.receptive_field(stack)
        n = r + int(rng.integers(0, 6))
        # one dimension: windows (k, 1) over an n x 1 image
        out_shape, nz = influence_count([((k, 1), (s, 1)) for k, s in stack], (n, 1), (0, 0))
        assert out_shape[0] >= 1
        assert len(nz) == r
        assert nz[:, 0].max() - nz[:, 0].min() + 1 == r


def test_receptive_field_notes_stack_in_two_dimensions():
    """The notes' cascade on a 17 x 17 image: each output depends on a 13 x 13 = 169-pixel patch."""
    out_shape, nz = influence_count([((5, 5), (2, 2)), ((5, 5), (1, 1))], (17, 17), (1, 2))
    assert out_shape == (3, 3, 1)
    assert len(nz) == 169
    assert tuple(nz.min(axis=0)) == (2, 4) and tuple(nz.max(axis=0)) == (
        14,
        16,
    )  # rows 2..14, cols 4..16


# ------------------------------------------------------ parameter counts, the notes' AlexNet layer


def test_alexnet_first_layer_param_count():
    assert shapes.conv_param_count((11, 11), 3, 96) == 34944 == 96 * (3 * 11**2 + 1)
    assert 3 * 11**2 == 363
    assert shapes.conv_param_count((11, 11), 3, 96, bias=False) == 96 * 363
    assert 224**2 * 3 == 150528


@pytest.mark.parametrize(
    "n,padding,expected",
    [
        (224, ((2, 2), (2, 2)), 55),  # the paper's 55 x 55
        (227, "valid", 55),
        (224, "same", 56),  # ceil(224 / 4)
        (224, "valid", 54),  # smaller than 55 (the notes' footnote)
    ],
    ids=["224-explicit", "227-valid", "224-same", "224-valid"],
)
def test_alexnet_first_layer_forward(key, n, padding, expected):
    rng = rng_from(key)
    layer = Conv2D(96, 11, 4, padding, W_init=numpy_init(rng), b_init=numpy_init(rng))
    out_shape, params = layer.init(key, (n, n, 3))
    assert out_shape == (expected, expected, 96)
    assert shapes.param_count(params) == 34944
    assert shapes.conv_output_shape((n, n, 3), (11, 11), 96, (4, 4), padding) == out_shape
    y = jax.jit(layer.apply)(params, jnp.ones((1, n, n, 3)))
    assert y.shape == (1, expected, expected, 96)
    if padding == "same":
        assert expected == math.ceil(224 / 4)


def test_alexnet_full_padding_is_larger_than_56():
    out = shapes.conv_output_shape((224, 224, 3), (11, 11), 96, (4, 4), "full")
    assert out[0] > 56 and out[1] > 56
    assert out == ((224 + 20 - 11) // 4 + 1,) * 2 + (96,)
    out_shape, _ = Conv2D(96, 11, 4, "full", W_init=jax.nn.initializers.ones).init(
        jax.random.PRNGKey(0), (224, 224, 3)
    )
    assert out_shape == out


def test_alexnet_layer_with_max_pooling(key):
    """55 x 55 x 96 maps, 3 x 3 stride-2 max-pooling: a 27 x 27 x 96 block, e = 27^2 96 = 69,984."""
    rng = rng_from(key)
    net = serial(Conv2D(96, 11, 4, ((2, 2), (2, 2)), W_init=numpy_init(rng)), MaxPool(3, 2))
    out_shape, params = net.init(key, (224, 224, 3))
    assert out_shape == (27, 27, 96)
    assert shapes.conv_output_shape((55, 55, 96), (3, 3), None, (2, 2)) == (27, 27, 96)
    assert math.prod(out_shape) == 27 * 27 * 96 == 69984
    assert 69984 < 150528 / 2  # "a bit less than half of the input dimensionality"
    assert shapes.param_count(params) == 34944
    x = jnp.asarray(rng.normal(size=(1, 224, 224, 3)))
    y = jax.jit(net.apply)(params, x)
    assert y.shape == (1, 27, 27, 96)


def test_dense_param_count(key):
    rng = rng_from(key)
    for _ in range(3):
        d, e = int(rng.integers(1, 50)), int(rng.integers(1, 20))
        assert shapes.dense_param_count(d, e) == e * (d + 1)
        assert shapes.dense_param_count(d, e, bias=False) == e * d
        out_shape, params = Dense(e, W_init=numpy_init(rng), b_init=numpy_init(rng)).init(key, (d,))
        assert out_shape == (e,)
        assert shapes.param_count(params) == shapes.dense_param_count(d, e)
    out_shape, params = Dense(30).init(key, (784,))  # the default initialisers
    assert out_shape == (30,) and shapes.param_count(params) == 30 * 785
    # the slides' MNIST network 784-30-10
    assert shapes.dense_param_count(784, 30) + shapes.dense_param_count(30, 10) == 23860


def test_param_count_of_pytrees():
    params = (
        {"W": jnp.zeros((3, 4)), "b": jnp.zeros(3)},
        (),
        [jnp.zeros((2, 2, 2))],
        jnp.zeros(()),
    )
    assert shapes.param_count(params) == 12 + 3 + 8 + 1
    assert shapes.param_count(()) == 0


# ------------------------------------------------------------------------- bad arguments


BAD_ARGUMENTS = [
    ("padding-output_size", lambda: shapes.output_size(10, 3, 1, "middle"), "middle"),
    (
        "padding-conv_output_shape",
        lambda: shapes.conv_output_shape((8, 8, 3), (3, 3), 4, (1, 1), "middle"),
        "middle",
    ),
    ("padding-Conv2D", lambda: Conv2D(4, 3, padding="middle"), "middle"),
    ("padding-MaxPool", lambda: MaxPool(2, padding="middle"), "middle"),
    ("padding-negative", lambda: shapes.output_size(10, 3, 1, (-1, 0)), "non-negative"),
    ("padding-not-a-pair", lambda: shapes.output_size(10, 3, 1, (1, 2, 3)), "pair"),
    (
        "padding-pairs-count",
        lambda: shapes.conv_output_shape((8, 8, 3), (3, 3), 4, (1, 1), ((1, 1),)),
        "pair",
    ),
    ("stride-0-output_size", lambda: shapes.output_size(10, 3, 0), "stride"),
    (
        "stride-0-conv_output_shape",
        lambda: shapes.conv_output_shape((8, 8, 3), (3, 3), 4, (0, 1)),
        "stride",
    ),
    ("stride-0-Conv2D", lambda: Conv2D(4, 3, strides=0), "strides"),
    ("stride-0-MaxPool", lambda: MaxPool(2, strides=0), "strides"),
    ("stride-0-receptive_field", lambda: shapes.receptive_field([(5, 2), (5, 0)]), "stride"),
    ("window-0", lambda: shapes.output_size(10, 0), "window"),
    ("window-too-large-output_size", lambda: shapes.output_size(3, 5, 1, "valid"), "window"),
    (
        "window-too-large-conv_output_shape",
        lambda: shapes.conv_output_shape((3, 8, 1), (5, 5), 2),
        "window",
    ),
    (
        "window-too-large-Conv2D",
        lambda: Conv2D(4, 5).init(jax.random.PRNGKey(0), (3, 3, 1)),
        "window",
    ),
    (
        "window-too-large-MaxPool",
        lambda: MaxPool(5).init(jax.random.PRNGKey(0), (3, 3, 1)),
        "window",
    ),
    ("input-size-0", lambda: shapes.output_size(0, 1), "input size"),
    ("input-shape-rank", lambda: shapes.conv_output_shape((8, 8), (3, 3), 4), "input_shape"),
    (
        "pool-padding-not-smaller-than-window",
        lambda: MaxPool(2, padding=((2, 0), (0, 0))),
        "smaller than the window",
    ),
]


@pytest.mark.parametrize(
    "make,fragment", [case[1:] for case in BAD_ARGUMENTS], ids=[case[0] for case in BAD_ARGUMENTS]
)
def test_bad_arguments_raise_value_error_naming_the_problem(make, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        make()


def test_window_larger_than_input_is_fine_with_same_or_full_padding():
    assert shapes.output_size(3, 5, 1, "same") == 3
    assert shapes.output_size(3, 5, 1, "full") == 7
    out_shape, _ = Conv2D(2, 5, 1, "same", W_init=jax.nn.initializers.ones).init(
        jax.random.PRNGKey(0), (3, 3, 1)
    )
    assert out_shape == (3, 3, 2)


def test_network_receptive_field_matches_the_gradient_footprint(key):
    # Average- rather than max-pooling: a max routes the gradient to one winner, hiding the rest of
    # the field.
    net = L.serial(
        L.Conv2D(1, 5, 2), L.Sigmoid, L.Conv2D(1, (5, 3)), L.AvgPool(2, 1), L.Flatten, L.Dense(2)
    )
    assert shapes.network_receptive_field(net) == (
        (5 - 1) * 2 + 5 + 1 * 2,
        5 + 2 * 2 + 1 * 2,
    )  # (15, 11)
    _, params = net.init(key, (31, 31, 1))
    # All-positive kernels, so no input's influence cancels; a sigmoid keeps every path alive.
    params = jax.tree_util.tree_map(lambda p: jnp.abs(p) + 0.1, params)
    conv_part = L.serial(*net.spec["layers"][:4])
    grad = jax.grad(lambda x: conv_part.apply(params[:4], x)[0, 3, 3, 0])(jnp.ones((1, 31, 31, 1)))[
        0, :, :, 0
    ]
    rows, cols = np.nonzero(np.asarray(grad))
    assert (
        rows.max() - rows.min() + 1,
        cols.max() - cols.min() + 1,
    ) == shapes.network_receptive_field(net)


def test_multiply_adds_alexnet_first_layer_and_nielsen_mlp():
    alexnet = Conv2D(96, 11, 4, ((2, 2), (2, 2)))
    assert shapes.multiply_adds(alexnet, (224, 224, 3)) == [
        55 * 55 * 11 * 11 * 3 * 96
    ]  # 105,415,200
    nielsen = serial(L.Flatten, Dense(30), L.Sigmoid, Dense(10))
    assert shapes.multiply_adds(nielsen, (28, 28, 1)) == [0, 784 * 30, 0, 30 * 10]


def _xla_flops(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def test_multiply_adds_agree_with_xla_cost_analysis(key):
    # with 'valid' padding every tap touches the input, so XLA's count (which skips padding) is
    # 2 x ours
    keys = jax.random.split(key, 8)
    for k in keys:
        h, w = (int(v) for v in jax.random.randint(k, (2,), 6, 20))
        c, o, kh, kw, s = (int(v) for v in jax.random.randint(jax.random.fold_in(k, 1), (5,), 1, 5))
        layer = Conv2D(o, (kh, kw), s, "valid")
        _, params = layer.init(k, (h, w, c))
        x = jnp.ones((1, h, w, c), params["W"].dtype)
        conv = lambda x, W: jax.lax.conv_general_dilated(
            x, W, (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )  # noqa: E731
        assert _xla_flops(conv, x, params["W"]) == 2 * shapes.multiply_adds(layer, (h, w, c))[0]
    dense = Dense(13)
    _, params = dense.init(key, (29,))
    assert (
        _xla_flops(lambda x, W: x @ W.T, jnp.ones((1, 29), params["W"].dtype), params["W"])
        == 2 * shapes.multiply_adds(dense, (29,))[0]
    )


def test_receptive_field_and_multiply_adds_of_a_sequence_network():
    net = L.serial(L.Conv1D(3, 5), L.Relu, L.Conv1D(4, 3, 2, "same"), L.GlobalAvgPool, L.Dense(2))
    # r = 1 + (5 - 1) 1 + (3 - 1) 1 (the notes' generalised rule), then global pooling sees all
    assert shapes.network_receptive_field(net) == (7,)
    # L' k C C' per conv: (10 - 4) 5 2 3, then ceil(6 / 2) 3 3 4; Dense 4 x 2
    assert shapes.multiply_adds(net, (10, 2)) == [180, 0, 108, 0, 8]
