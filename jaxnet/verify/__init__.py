"""Check hand-written derivatives against jax.jacrev (jax.jacfwd on request) and finite differences.

As a library: `check_jacobian(f, jacobian, x)` and `check_gradient(f, gradient, x)` compare a
formula of your own with JAX's autodiff and with finite differences, in float64, structure
first (jax.jacrev's pytree and leaf shapes, or layout="matrix"), then element by element;
`assert_jacobian` and `assert_gradient` are their pytest forms:

    import jax; jax.config.update("jax_enable_x64", True)
    from jaxnet.verify import assert_gradient
    assert_gradient(lambda w: jnp.sum(jnp.tanh(w) ** 2),
                    lambda w: 2 * jnp.tanh(w) * (1 - jnp.tanh(w) ** 2), w0)

As a command, `python -m jaxnet.verify` (or `jaxnet-verify`) checks every layer, loss and
activation of jaxnet and both forms of back-propagation, streaming a table, and exits with
status 1 if any check fails; `jaxnet-verify module:f --gradient module:grad_f --shape 3` checks
a formula of yours (jaxnet.verify.cli).

Modules: flat (pytrees as vectors, jit_once), finite_diff (domain-aware steps, Ridders),
structure (layouts), compare (element-by-element verdict, kinks), checks (the API), suite (the
built-in checks), table and cli (the command), user (the user's targets and checks files).
"""

from jaxnet.verify.checks import (
    DEFAULT_TOLERANCE,
    CheckResult,
    assert_gradient,
    assert_jacobian,
    check_gradient,
    check_jacobian,
)
from jaxnet.verify.cli import main
from jaxnet.verify.compare import relative_error
from jaxnet.verify.finite_diff import finite_difference_jacobian, finite_differences
from jaxnet.verify.flat import jit_once
from jaxnet.verify.structure import jacobian_matrix
from jaxnet.verify.suite import iter_checks, run_all
from jaxnet.verify.table import format_table

__all__ = [
    "DEFAULT_TOLERANCE",
    "CheckResult",
    "assert_gradient",
    "assert_jacobian",
    "check_gradient",
    "check_jacobian",
    "finite_difference_jacobian",
    "finite_differences",
    "format_table",
    "iter_checks",
    "jacobian_matrix",
    "jit_once",
    "main",
    "relative_error",
    "run_all",
]
