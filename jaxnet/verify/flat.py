"""Pytrees as flat vectors, float64 required, and jit for programs that run once."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Every check's programs run once, so compiling fast beats running fast (as for the trainer's
# initial state): on CPU, LLVM's costly passes are off.
_RUN_ONCE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# XLA:CPU's older loop emitters compile the checks' programs 2-3x faster than its MLIR fusion
# emitters (jaxlib 0.10: 0.5 s against 1.3-1.8 s for three of the suite's); an XLA without the
# option refuses it, and then keeps its default.
_LEGACY_EMITTERS = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def _cpu_options() -> dict:
    try:
        options = {**_RUN_ONCE, **_LEGACY_EMITTERS}
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
        return options
    except jax.errors.JaxRuntimeError:
        return _RUN_ONCE


def jit_once(f, **options):
    """jax.jit for a program that runs once: compiled cheaply on CPU."""
    compiler = _cpu_options() if jax.default_backend() == "cpu" else None
    return jax.jit(f, compiler_options=compiler, **options)


def require_x64():
    """Raise unless float64 is on: derivative checks need it."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "derivative checks need float64: call jax.config.update('jax_enable_x64', True) "
            "before creating arrays"
        )


def flat(f, x):
    """f as a map between flat vectors, and the flat point.

    Flattened with numpy: no per-shape kernels.
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    x_flat = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])
    if not np.issubdtype(x_flat.dtype, np.floating):
        raise TypeError(
            f"derivatives are taken with respect to floating-point inputs, got dtype {x_flat.dtype}"
        )
    shapes = [np.shape(leaf) for leaf in leaves]
    splits = np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1]

    def unravel(v):
        return jax.tree_util.tree_unflatten(
            treedef, [p.reshape(s) for p, s in zip(jnp.split(v, splits), shapes)]
        )

    def f_flat(v):
        return jnp.concatenate(
            [jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(f(unravel(v)))]
        )

    return f_flat, x_flat.astype(np.float64)


def shape_str(tree) -> str:
    """'3x4' for one array, '{3x4, 4}' for a pytree, '()' for a scalar."""
    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) == 1:
        return "x".join(map(str, np.shape(leaves[0]))) or "()"
    return "{" + ", ".join("x".join(map(str, np.shape(leaf))) or "()" for leaf in leaves) + "}"
