"""The verification API and the `python -m jaxnet.verify` command."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import verify
from jaxnet.training import xla_cpu


def test_check_gradient_accepts_a_right_formula_and_rejects_a_wrong_one(key):
    w = jax.random.normal(key, (5,))
    f = lambda w: jnp.sum(jnp.tanh(w) ** 2)
    right = lambda w: 2 * jnp.tanh(w) * (1 - jnp.tanh(w) ** 2)
    wrong = lambda w: 2 * jnp.tanh(w)  # forgot the chain rule
    good = verify.check_gradient(f, right, w)
    assert (
        good.passed and good.error_vs_autodiff < 1e-14 and good.error_vs_finite_differences < 1e-9
    )
    bad = verify.check_gradient(f, wrong, w)
    assert (
        not bad.passed and bad.error_vs_autodiff > 1e-2 and bad.error_vs_finite_differences > 1e-2
    )


def test_check_jacobian_on_pytrees_and_a_near_miss(key):
    params = {"W": jax.random.normal(key, (3, 2)), "b": jax.random.normal(key, (3,))}
    x = jax.random.normal(jax.random.fold_in(key, 1), (2,))
    f = lambda p: jnp.sin(p["W"] @ x + p["b"])
    a = params["W"] @ x + params["b"]
    eye = jnp.eye(3)
    right = {
        "W": (eye * jnp.cos(a)[:, None])[:, :, None] * x[None, None, :],
        "b": eye * jnp.cos(a)[:, None],
    }
    assert verify.check_jacobian(f, right, params).passed
    # An error of 1e-6 relative is caught at the default tolerance of 1e-7.
    near = jax.tree_util.tree_map(lambda J: J * (1 + 1e-6), right)
    assert not verify.check_jacobian(f, near, params).passed


def test_finite_differences_are_accurate_where_a_fixed_step_is_not(key):
    # -log p at small p (needs h << p) and a function of magnitude 1e4 (needs h >> eps |f|).
    p = jnp.array([1e-3, 0.02, 0.5])
    np.testing.assert_allclose(
        verify.finite_difference_jacobian(lambda p: -jnp.log(p), p), np.diag(-1 / p), rtol=1e-9
    )
    z = jnp.array([1e4, 0.0, 1e4 - 1.0])
    lse = lambda z: jax.scipy.special.logsumexp(z)
    p_exact = np.exp(np.asarray(z) - np.logaddexp(1e4, 1e4 - 1.0))
    np.testing.assert_allclose(
        verify.finite_difference_jacobian(lse, z)[0], p_exact, rtol=1e-7, atol=1e-12
    )
    # The textbook fixed step h = eps^(1/3) max(1, |z|) is 0.06 here, and misses by far more.
    h = np.finfo(np.float64).eps ** (1 / 3) * 1e4
    fixed = (lse(z.at[0].add(h)) - lse(z.at[0].add(-h))) / (2 * h)
    assert abs(fixed - p_exact[0]) / p_exact[0] > 1e-6
    # Outside f's domain the large steps give NaN; the estimate comes from the small ones.
    np.testing.assert_allclose(
        verify.finite_difference_jacobian(jnp.sqrt, jnp.array([0.01]))[0, 0], 0.5 / 0.1, rtol=1e-9
    )


def test_relative_error_definition():
    assert verify.relative_error(jnp.zeros(3), jnp.zeros(3)) == 0
    assert verify.relative_error(jnp.array([1.0, 2.0]), jnp.array([1.0, 2.2])) == pytest.approx(
        0.2 / 2.2
    )
    assert verify.relative_error(jnp.ones(2), jnp.ones(3)) == float("inf")
    assert verify.relative_error(jnp.array([jnp.nan]), jnp.array([1.0])) == float("inf")


def test_checks_refuse_float32_and_non_scalar_functions(key):
    with pytest.raises(ValueError, match="scalar"):
        verify.check_gradient(lambda x: x * 2, lambda x: 2 * jnp.ones_like(x), jnp.ones(3))
    with pytest.raises(TypeError, match="floating"):
        verify.check_gradient(lambda x: jnp.sum(x), lambda x: x, jnp.arange(3))
    code = (
        "import jax.numpy as jnp; from jaxnet import verify; "
        "verify.check_gradient(jnp.sum, jnp.ones_like, jnp.ones(2))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"JAX_PLATFORMS": "cpu", "PATH": ""},
    )
    assert run.returncode != 0 and "jax_enable_x64" in run.stderr


@pytest.fixture(scope="module")
def suite_results():
    """The results of `python -m jaxnet.verify --json --seed 1`, as users run it.

    In its own process, without the XLA:CPU convolution setting conftest applies: finite
    differences perturb conv kernels under vmap, which makes grouped convolutions, and XLA's
    own emitter took 10 minutes over them where the default one takes seconds.
    """
    flags = os.environ.get("XLA_FLAGS", "").replace(xla_cpu.FLAG, "")
    run = subprocess.run(
        [sys.executable, "-m", "jaxnet.verify", "--json", "--seed", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "XLA_FLAGS": flags},
        timeout=900,
    )
    report = json.loads(run.stdout)
    assert run.returncode == (0 if report["passed"] else 1), run.stderr
    fields = [f.name for f in dataclasses.fields(verify.CheckResult)]
    return [verify.CheckResult(**{f: check[f] for f in fields}) for check in report["checks"]]


def test_the_suite_covers_every_layer_loss_and_backprop_form_and_passes(suite_results):
    names = " | ".join(r.name for r in suite_results)
    for expected in [
        "Dense",
        "Conv2D",
        "'same'",
        "'valid'",
        "'full'",
        "explicit",
        "MaxPool",
        "AvgPool",
        "Flatten",
        "Sigmoid",
        "Tanh",
        "Relu",
        "Swish",
        "Softmax",
        "LogSoftmax",
        "Dropout",
        "dense + relu",
        "ReLU + max-pool",
        "quadratic",
        "binary cross-entropy",
        "cross-entropy on logits",
        "+-1e4",
        "weight decay",
        "Algorithm 1",
        "batched vjp",
        "CNN",
        "Conv1D",
        "GlobalAvgPool",
        "LayerNorm",
        "BatchNorm",
        "coupled batch",
        "Elman",
        "GRU",
        "BPTT",
        "FanOut",
        "FanInSum",
        "FanInConcat",
        "parallel",
        "Residual",
        "residual CNN",
        "branch MLP",
        "Reshape",
        "RandomCrop",
        "RandomFlip",
    ]:
        assert expected in names, expected
    failures = [r for r in suite_results if not r.passed]
    assert not failures, failures
    assert max(r.error_vs_autodiff for r in suite_results) < 1e-12


def test_the_suite_checks_every_layer_the_package_exports(suite_results):
    from jaxnet import layers as L

    names = " | ".join(r.name for r in suite_results)
    exported = [n for n in L.__all__ if n[0].isupper() and n not in ("Layer", "Stateful")]
    missing = [n for n in exported if n not in names]
    assert not missing, f"layers without a case in jaxnet.verify.suite._layer_checks: {missing}"


def test_the_suite_streams_its_rows(suite_results, monkeypatch, capsys):
    printed = []

    def checks(seed):
        for r in suite_results[:3]:
            yield r
            printed.append(capsys.readouterr().out)  # what was out before the next check ran

    monkeypatch.setattr(verify.suite, "iter_checks", checks)
    assert verify.main([]) == 0
    assert "vs finite diff" in printed[0] and suite_results[0].name in printed[0]
    assert suite_results[1].name in printed[1] and suite_results[2].name not in printed[1]


def test_the_command_prints_a_table_and_json_and_exits_1_on_failure(
    suite_results, monkeypatch, capsys
):
    monkeypatch.setattr(verify.suite, "iter_checks", lambda seed: iter(suite_results))
    assert verify.main([]) == 0
    table = capsys.readouterr().out
    assert "vs finite diff" in table and f"{len(suite_results)} passed, 0 failed" in table
    assert verify.main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and len(report["checks"]) == len(suite_results)
    broken = verify.CheckResult("broken formula", "3 -> 3", 0.5, 0.5, 1e-7)
    monkeypatch.setattr(verify.suite, "iter_checks", lambda seed: iter(suite_results + [broken]))
    assert verify.main([]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert verify.main(["--json"]) == 1
    assert json.loads(capsys.readouterr().out)["checks"][-1]["passed"] is False


def test_jaxnet_verify_is_an_installed_command():
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "jaxnet-verify"]
    assert entry.value == "jaxnet.verify:main" and entry.load() is verify.main
