"""experiments/: each experiment in its reduced (--quick) form, asserting its key numbers against the notes'."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # experiments/ lives at the repository root, beside jaxnet/

from experiments import EXPERIMENTS, report  # noqa: E402
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
    assert quad_easy["a at epoch 300"] == pytest.approx(0.09, abs=0.005)  # "achieves output of 0.09"
    assert quad_hard["a at epoch 0"] - quad_hard["a at epoch 150"] < 0.06  # "little change in the first 150 epochs"
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
    assert rows["l(1, 1/2) in bits"] == pytest.approx(1.0) and rows["l(0, 1/2) in bits"] == pytest.approx(1.0)
    assert rows["max |l(1, p) - l(0, 1 - p)|"] < 1e-5
    assert rows["H(0)"] == 0 and rows["H(1)"] == 0 and rows["H(1/2)"] == pytest.approx(1.0)
    sigma4 = 1 / (1 + np.exp(-4.0))
    assert rows["cross-entropy dC/dz at z = 4 (a = 0.98)"] == pytest.approx(sigma4, rel=1e-5)
    assert rows["quadratic dC/dz at z = 4 (a = 0.98)"] == pytest.approx(sigma4**2 * (1 - sigma4), rel=1e-5)


def test_activations_and_the_vanishing_gradient(tmp_path):
    result = _run("activations", tmp_path)
    for row in result["rows"]:
        assert row["max |hand-written f' - jax.grad|"] < 1e-6
    assert {r["activation"]: r["f'(0)"] for r in result["rows"]} == {"sigmoid": 0.25, "tanh": 1.0, "relu": 1.0, "swish": 0.5}
    norms = {name: np.array(g) for name, g in result["gradient_norms"].items()}
    assert np.all(np.diff(norms["sigmoid"]) > 0)  # smaller at every step towards the input
    assert result["first_over_last"]["sigmoid"] < 1e-4 < 0.1 < result["first_over_last"]["relu"]


def test_cnn_arithmetic_from_formulas_and_from_jax(tmp_path):
    for row in _run("cnn_arithmetic", tmp_path)["rows"]:
        if isinstance(row["notes"], int):
            assert row["jaxnet"] == row["notes"], row
        if row["measured"] != "-":
            assert str(row["measured"]) == str(row["jaxnet"]), row
    rows = {r["quantity"]: r for r in _run("cnn_arithmetic", tmp_path)["rows"]}
    assert rows["parameters, fully connected 224x224x3 -> 224x224x96"]["jaxnet"] > 725e9
    assert rows["feature maps (padding 2)"]["measured"] == "55x55x96"


def test_every_listed_experiment_is_a_module_with_run():
    import importlib

    for name, module in EXPERIMENTS.items():
        assert callable(importlib.import_module(module).run), name


def test_unknown_experiment_is_named_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["no_such_thing", "--out", "unused"])
    assert "no_such_thing" in capsys.readouterr().err


def test_markdown_table_formats_floats_and_never_prints_minus_zero():
    table = report.markdown_table([{"a": -0.0, "b": 1 / 3, "c": "x"}])
    assert table.splitlines()[2] == "| 0 | 0.3333 | x |"
