"""The layout of a Jacobian: jax.jacrev's pytree, or the flat (out, in) matrix; checked first."""

from __future__ import annotations

import jax
import numpy as np

LAYOUTS = ("jacrev", "matrix")


def jacrev_layout(out, x):
    """The shapes jax.jacrev(f)(x) has when f(x) is `out`: per output leaf, x's tree of
    out_shape + in_shape blocks (for a scalar f, x's own structure: jax.grad's layout)."""
    block = lambda o, i: jax.ShapeDtypeStruct(tuple(o.shape) + tuple(np.shape(i)), np.float64)
    return jax.tree_util.tree_map(lambda o: jax.tree_util.tree_map(lambda i: block(o, i), x), out)


def _leaves_with_paths(tree):
    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(jax.tree_util.keystr(path) or "(root)", leaf) for path, leaf in pairs]


def structure_mismatch(given, out, x, layout: str, what: str = "Jacobian"):
    """None if `given` has the expected layout, else one line naming the leaf and the shapes."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "matrix":
        return _matrix_mismatch(given, out, x, what)
    expected = [(p, s.shape) for p, s in _leaves_with_paths(jacrev_layout(out, x))]
    try:
        given_leaves = [(p, np.shape(leaf)) for p, leaf in _leaves_with_paths(given)]
    except (TypeError, ValueError) as error:  # a leaf numpy cannot shape
        return f"{what}: a leaf is not an array ({error})"
    for i, ((path, shape), (given_path, given_shape)) in enumerate(zip(expected, given_leaves)):
        if path != given_path:
            return (
                f"{what} structure differs from {_reference(what)} at leaf {i}: expected {path} "
                f"of shape {shape}, given {given_path} of shape {given_shape}"
            )
        if tuple(shape) != tuple(given_shape):
            return (
                f"{what} leaf {path}: expected shape {tuple(shape)} ({_reference(what)} layout: "
                f"out_shape + in_shape), given {tuple(given_shape)}"
            )
    if len(expected) != len(given_leaves):
        return (
            f"{what} structure differs from {_reference(what)}: expected {len(expected)} leaves "
            f"{[p for p, _ in expected]}, given {len(given_leaves)}"
        )
    want = jax.tree_util.tree_structure(jacrev_layout(out, x))
    have = jax.tree_util.tree_structure(given)
    if want != have:
        return f"{what} structure differs from {_reference(what)}: expected {want}, given {have}"
    return None


def _sizes(out, x):
    size = lambda tree: sum(
        int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(tree)
    )
    return size(out), size(x)


def _matrix_mismatch(given, out, x, what):
    m, n = _sizes(out, x)
    scalar = (
        not jax.tree_util.tree_leaves(out)
        or all(np.shape(o) == () for o in jax.tree_util.tree_leaves(out))
        and len(jax.tree_util.tree_leaves(out)) == 1
    )
    want = (n,) if scalar and what == "gradient" else (m, n)
    if not hasattr(given, "shape"):
        kind = type(given).__name__
        return f"{what}: layout='matrix' expects one array of shape {want}, given a {kind}"
    if tuple(given.shape) != want:
        return (
            f"{what}: expected shape {want} (layout='matrix': out size, in size), "
            f"given {tuple(given.shape)}"
        )
    return None


def as_matrix(given, out, x, layout: str):
    """The given Jacobian (already checked) as an (out, in) float64 matrix."""
    m, n = _sizes(out, x)
    if layout == "matrix":
        return np.reshape(np.asarray(given, np.float64), (m, n))
    return jacobian_matrix(given, out)


def jacobian_matrix(jac, out):
    """A Jacobian in jax.jacrev's layout as an (out, in) matrix.

    The layout: out_shape + in_shape, a pytree of such leaves for a pytree input, and for a
    pytree output one such block per output leaf, nested outside. `out` is the output (arrays
    or shapes), or its size when it is one array.
    """
    if isinstance(out, (int, np.integer)):
        blocks, sizes = [jac], [int(out)]
    else:
        out_leaves, out_def = jax.tree_util.tree_flatten(out)
        blocks, sizes = out_def.flatten_up_to(jac), [int(np.prod(o.shape)) for o in out_leaves]
    return np.concatenate(
        [
            np.concatenate(
                [
                    np.reshape(np.asarray(J, np.float64), (size, -1))
                    for J in jax.tree_util.tree_leaves(block)
                ],
                axis=1,
            )
            for block, size in zip(blocks, sizes)
        ],
        axis=0,
    )


def element_name(out, x, row: int, col: int) -> str:
    """The leaf path and index in jax.jacrev's layout of entry (row, col) of the matrix."""
    out_leaves, x_leaves = jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(x)
    a, r = _locate([np.shape(o) for o in out_leaves], row)
    b, c = _locate([np.shape(i) for i in x_leaves], col)
    paths = [p for p, _ in _leaves_with_paths(jacrev_layout(out, x))]
    path = paths[a * len(x_leaves) + b]
    index = r + c
    return f"{path}[{', '.join(map(str, index))}]" if index else path


def _locate(shapes, flat_index):
    """(leaf number, index tuple within it) of a flat index over leaves of `shapes`."""
    for k, shape in enumerate(shapes):
        size = int(np.prod(shape))
        if flat_index < size:
            return k, tuple(int(i) for i in np.unravel_index(flat_index, shape)) if shape else ()
        flat_index -= size
    raise IndexError(flat_index)


def _reference(what):
    return "jax.grad's" if what == "gradient" else "jax.jacrev's"
