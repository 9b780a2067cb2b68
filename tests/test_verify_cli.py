"""jaxnet-verify on the user's own code: module:function targets and a file of CHECKS."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxnet import verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODULE = """
import jax.numpy as jnp

def f(x):
    return jnp.sum(jnp.tanh(x) ** 2)

def grad(x):
    return 2 * jnp.tanh(x) * (1 - jnp.tanh(x) ** 2)

def wrong(x):
    return 2 * jnp.tanh(x)  # forgot the chain rule

def jac_sin(x):
    return jnp.diag(jnp.cos(x))

def neg_log(p):
    return -jnp.sum(jnp.log(p))

def neg_log_grad(p):
    return -1 / p
"""

CHECKS = """
import jax.numpy as jnp
from mymod import f, grad, wrong

CHECKS = [
    {"name": "tanh^2", "f": f, "gradient": grad, "x": (3, 2)},
    {"name": "sin", "f": jnp.sin, "jacobian": lambda x: jnp.diag(jnp.cos(x)),
     "x": jnp.array([0.1, 2.0])},
    {"name": "relu at 0", "f": lambda x: jnp.maximum(x, 0), "jacobian": lambda x: jnp.eye(2),
     "x": jnp.zeros(2), "at_kink": "right"},
]
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "mymod.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "my_checks.py").write_text(textwrap.dedent(CHECKS))
    (tmp_path / "bad_checks.py").write_text(CHECKS + "\nCHECKS.append({'f': f, 'x': (2,)})\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _command(*args, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "jaxnet.verify", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_a_user_module_from_the_command_line(user_dir):
    run = _command("mymod:f", "--gradient", "mymod:grad", "--shape", "3,4", cwd=user_dir)
    assert run.returncode == 0, run.stderr
    assert "mymod:f vs mymod:grad" in run.stdout and "3x4 -> ()" in run.stdout
    assert "1 passed, 0 failed" in run.stdout
    wrong = _command("mymod:f", "--gradient", "mymod:wrong", "--shape", "3", "--json", cwd=user_dir)
    assert wrong.returncode == 1, wrong.stderr
    (check,) = json.loads(wrong.stdout)["checks"]
    assert check["passed"] is False and "worst element" in check["message"]


def test_bad_usage_exits_2_with_one_line(user_dir):
    run = _command("nosuchmodule:f", "--gradient", "mymod:grad", cwd=user_dir)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "cannot import module 'nosuchmodule'" in run.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["mymod:nope", "--gradient", "mymod:grad"], "'mymod' has no function 'nope'"),
        (["mymod:f", "--gradient", "mymod:grad", "--shape", "3,x"], "--shape '3,x'"),
        (["mymod:f", "--gradient", "mymod:grad", "--shape", "0"], "positive integers"),
        (["mymod:f"], "give --jacobian"),
        (["mymod", "--gradient", "mymod:grad"], "expected module:function"),
        (["mymod:f", "--gradient", "mymod:grad", "--point", "1,a"], "--point '1,a'"),
        (["mymod:f", "--gradient", "mymod:grad", "--shape", "2", "--point", "1"], "needs 2"),
        (["--shape", "3"], "need a target"),
        (["--checks", "missing.py"], "no such file"),
        (["--checks", "mymod.py"], "defines no CHECKS"),
        (["--checks", "bad_checks.py"], "CHECKS[3]"),
        (["mymod:f", "--gradient", "mymod:grad", "--at-kink", "middle"], "--at-kink"),
        (["mymod:jac_sin", "--gradient", "mymod:grad", "--shape", "3"], "scalar function"),
    ],
)
def test_each_bad_usage_names_its_cause(user_dir, capsys, args, says):
    assert verify.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("jaxnet-verify: error: ") and says in captured.err


def test_a_file_path_target_a_point_and_a_jacobian(user_dir, capsys):
    path = str(user_dir / "mymod.py")
    args = [f"{path}:neg_log", "--gradient", f"{path}:neg_log_grad", "--point", "1e-10,1e-6,0.5"]
    assert verify.main(args) == 0
    assert "3 -> ()" in capsys.readouterr().out
    assert verify.main(["mymod:jac_sin", "--jacobian", "mymod:jac_sin", "--shape", "2"]) == 1
    assert verify.main(["jax.numpy:sin", "--jacobian", "mymod:jac_sin", "--shape", "2"]) == 0


def test_a_checks_file_streams_its_table_and_json(user_dir, capsys):
    assert verify.main(["--checks", "my_checks.py", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for name in ("tanh^2", "sin", "relu at 0"):
        assert name in out
    assert "pass*" in out and "not differentiable at element (root)[0, 0]" in out
    assert verify.main(["--checks", "my_checks.py", "--json", "--at-kink", "left"]) == 0
    report = json.loads(capsys.readouterr().out)  # the file's at_kink wins over the command's
    assert report["passed"] and [c["name"] for c in report["checks"]][-1] == "relu at 0"
