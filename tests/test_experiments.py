"""experiments/: each experiment in its reduced (--quick) form.

Each asserts its key numbers against the notes'.
"""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # experiments/ lives at the repository root, beside jaxnet/

from experiments import report  # noqa: E402
from experiments.__main__ import main  # noqa: E402


def _run(name, tmp_path):
    result = main([name, "--out", str(tmp_path), "--quick"])[name]
    for figure in result["figures"]:
        with open(tmp_path / figure, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / f"{name}.json").read_text())["rows"] == result["rows"]
    assert (tmp_path / f"{name}.md").read_text().startswith(f"# {result['title']}")
    return result


def test_learning_slowdown_matches_the_slides(tmp_path):
    rows = {(r["cost"], r["start"]): r for r in _run("slowdown", tmp_path)["rows"]}
    quad_easy, quad_hard = rows[("quadratic", "w=0.6, b=0.9")], rows[("quadratic", "w=b=2.0")]
    assert quad_easy["a at epoch 0"] == pytest.approx(0.82, abs=0.005)  # "initial output is 0.82"
    assert quad_hard["a at epoch 0"] == pytest.approx(0.98, abs=0.005)  # "initial output is 0.98"
    assert quad_easy["a at epoch 300"] == pytest.approx(
        0.09, abs=0.005
    )  # "achieves output of 0.09"
    assert (
        quad_hard["a at epoch 0"] - quad_hard["a at epoch 150"] < 0.06
    )  # "little change in the first 150 epochs"
    for start in ("w=0.6, b=0.9", "w=b=2.0"):  # the cross-entropy does not stall: a - y drives it
        assert rows[("cross-entropy", start)]["a at epoch 150"] < 0.05


def test_softmax_exercise_and_the_80_20_case(tmp_path):
    result = _run("softmax_exercise", tmp_path)
    for row in result["rows"]:
        assert round(row["Prob"], 2) == row["notes' Prob"]
        assert round(row["d log Prob(2) / dz"], 2) == row["notes' gradient"]
    assert result["sum_exp"] == pytest.approx(30.193, abs=5e-4)
    (case,) = result["more_tables"].values()
    for row in case:
        assert row["output after training"] == pytest.approx(0.8, abs=1e-3)


def test_information_curves(tmp_path):
    rows = {r["quantity"]: r["jaxnet"] for r in _run("information", tmp_path)["rows"]}
    assert rows["l(1, 1/2) in bits"] == pytest.approx(1.0) and rows[
        "l(0, 1/2) in bits"
    ] == pytest.approx(1.0)
    assert rows["max |l(1, p) - l(0, 1 - p)|"] < 1e-5
    assert rows["H(0)"] == 0 and rows["H(1)"] == 0 and rows["H(1/2)"] == pytest.approx(1.0)
    sigma4 = 1 / (1 + np.exp(-4.0))
    assert rows["cross-entropy dC/dz at z = 4 (a = 0.98)"] == pytest.approx(sigma4, rel=1e-5)
    assert rows["quadratic dC/dz at z = 4 (a = 0.98)"] == pytest.approx(
        sigma4**2 * (1 - sigma4), rel=1e-5
    )


def test_activations_and_the_vanishing_gradient(tmp_path):
    result = _run("activations", tmp_path)
    for row in result["rows"]:
        assert row["max |hand-written f' - jax.grad|"] < 1e-6
    assert {r["activation"]: r["f'(0)"] for r in result["rows"]} == {
        "sigmoid": 0.25,
        "tanh": 1.0,
        "relu": 1.0,
        "swish": 0.5,
    }
    norms = {name: np.array(g) for name, g in result["gradient_norms"].items()}
    assert np.all(np.diff(norms["sigmoid"]) > 0)  # smaller at every step towards the input
    assert result["first_over_last"]["sigmoid"] < 1e-4 < 0.1 < result["first_over_last"]["relu"]


def test_cnn_arithmetic_from_formulas_and_from_jax(tmp_path):
    rows = _run("cnn_arithmetic", tmp_path)["rows"]
    for row in rows:
        if isinstance(row["notes"], int):
            assert row["jaxnet"] == row["notes"], row
        if row["measured"] != "-":
            assert str(row["measured"]) == str(row["jaxnet"]), row
    rows = {r["quantity"]: r for r in rows}
    assert rows["parameters, fully connected 224x224x3 -> 224x224x96"]["jaxnet"] > 725e9
    assert rows["feature maps (padding 2)"]["measured"] == "55x55x96"


def test_unknown_experiment_is_named_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["no_such_thing", "--out", "unused"])
    assert "no_such_thing" in capsys.readouterr().err


def test_markdown_table_formats_floats_and_never_prints_minus_zero():
    table = report.markdown_table([{"a": -0.0, "b": 1 / 3, "c": "x"}])
    assert table.splitlines()[2] == "| 0 | 0.3333 | x |"


def test_simplex_outputs_stay_on_the_simplex_and_move_to_their_corners(tmp_path):
    result = _run("simplex", tmp_path)
    before, after = result["rows"]
    for row in (before, after):
        assert row["max |sum p - 1|"] < 1e-5 and row["min p"] >= 0
    assert after["accuracy"] > max(before["accuracy"], 0.85)
    assert after["mean max p"] > before["mean max p"]
    np.testing.assert_allclose(
        result["softmax_of_equal_scores"], [1 / 3] * 3, rtol=1e-6
    )  # the unit point 1/e


def test_momentum_schedule_values_and_the_optimizers_ranking(tmp_path):
    result = _run("momentum", tmp_path)
    (schedule,) = result["more_tables"].values()
    for row in schedule:  # 0.5, 0.75, 0.833, 0.875, ...: jaxnet's schedule against the closed form
        assert row["mu_t"] == pytest.approx(row["1 - 1 / (2 floor(t / 250) + 2)"], rel=1e-6)
    rows = {r["optimizer"]: r for r in result["rows"]}
    for name, row in rows.items():
        assert row["mean risk, last 100 steps"] < row["mean risk, first 100 steps"], name
    sgd = rows["SGD"]["mean risk, last 100 steps"]
    assert (
        rows["momentum 0.9"]["mean risk, last 100 steps"] < sgd
        and rows["Adam 1e-3"]["mean risk, last 100 steps"] < sgd
    )


def test_nielsen_mlp_table_has_the_slides_numbers_and_the_cross_entropy_learns_faster(tmp_path):
    result = _run("nielsen_mlp", tmp_path)
    rows = {r["network and cost"]: r for r in result["rows"]}
    assert sorted(r["slides (MNIST)"] for r in result["rows"]) == [0.9542, 0.9549, 0.9659, 0.9682]
    for width in (30, 100):  # 3 epochs of digits: the quadratic cost's slowdown is plain to see
        ce, quad = (
            rows[f"cross-entropy 64-{width}-10"]["test accuracy"],
            rows[f"quadratic 64-{width}-10"]["test accuracy"],
        )
        assert ce > 0.8 and ce > quad


def test_nielsen_mlp_picks_a_dataset_without_waiting_on_a_network():
    import time

    from experiments import nielsen_mlp
    from jaxnet.data import DatasetNotFoundError, load_dataset

    tic = time.perf_counter()
    chosen = nielsen_mlp.pick_dataset()
    assert time.perf_counter() - tic < 20
    try:
        load_dataset("mnist", validation_size=0, log=lambda *a: None)
        assert chosen == "mnist"
    except DatasetNotFoundError:
        assert chosen == "fashion_mnist"


def test_overfitting_regularisers_and_early_termination(tmp_path):
    result = _run("overfitting", tmp_path)
    rows = {r["regulariser"]: r for r in result["rows"]}
    for row in rows.values():
        assert 1 <= row["at epoch"] <= result["epochs"]
        assert row["best validation error"] <= row["final validation error"]
        assert row["test accuracy at that epoch"] > 0.7
    assert (
        rows["dropout"]["final train risk"] > rows["plain"]["final train risk"]
    )  # dropout resists memorising
    assert (
        rows["weight decay"]["final train risk"] > rows["plain"]["final train risk"]
    )  # so does (lambda/2) sum w^2


def test_hidden_geometry_makes_xor_separable_or_shows_a_local_minimum(tmp_path):
    result = _run("hidden_geometry", tmp_path)
    rows = result["rows"]
    assert (
        rows[0]["step"] == 0 and rows[-1]["accuracy"] >= 0.99
    )  # the seed shown separates XOR (up to a noisy point)
    assert rows[-1]["risk"] < 0.05 < rows[0]["risk"]
    (seeds,) = result["more_tables"].values()
    assert result["solved"] == sum(r["separates XOR"] for r in seeds) >= 1
    for r in seeds:
        if not r[
            "separates XOR"
        ]:  # a local minimum: a cluster or two on the wrong side, the risk stuck well above 0
            assert r["final accuracy"] <= 0.8 and r["final risk"] > 0.3
        else:
            assert r["final accuracy"] >= 0.99
