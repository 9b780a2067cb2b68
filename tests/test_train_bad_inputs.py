"""train.py against a table of bad inputs: one line on stderr each, a non-zero exit, no traceback.

Every case is a real `python train.py ...` subprocess; they run a few at a time. A case passes if
the exit status is the expected one, stderr is exactly one line that contains the expected text,
nothing on either stream is a traceback, and a workdir that did not exist before still does not.
"""

import concurrent.futures
import fcntl
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.dataset.name=digits",
    "--config.model.kind=mlp",
    "--config.dataset.validation_size=0.1",
    "--config.epochs=1",
    "--config.batch_size=64",
    "--config.devices.strategy=single",
    "--config.compilation_cache_dir=",
]
DID_YOU_MEAN = "did you mean"

# (flags after TINY, expected exit status, text the one stderr line must contain)
FLAG_CASES = [
    (
        ["--config.lerning_rate=0.1"],
        2,
        "config.lerning_rate; did you mean config.optimizer.learning_rate",
    ),
    (["--config.optimizer.lerning_rate=0.1"], 2, DID_YOU_MEAN),
    (["--config.optimiser.name=sgd"], 2, "unknown config key config.optimiser.name"),
    (["--config.model.hiden=(8,)"], 2, "did you mean config.model.hidden"),
    (["--config.epoch=3"], 2, "did you mean config.epochs"),
    (["--config.optimizer=sgd"], 2, "config.optimizer is a group of keys"),
    (["--config.epochs=abc"], 2, "epochs"),
    (["--config.batch_size=1.5"], 2, "batch_size"),
    (["--config.model.hidden=abc"], 2, "model.hidden"),
    (["--config.model.hidden=(0,)"], 2, "config.model.hidden=(0,)"),
    (["--config.model.hidden=(8,-2)"], 2, "config.model.hidden=(8, -2)"),
    (["--config.optimizer.learning_rate=0"], 2, "config.optimizer.learning_rate=0.0: out of range"),
    (["--config.optimizer.learning_rate=-1"], 2, "config.optimizer.learning_rate"),
    (["--config.optimizer.learning_rate=nan"], 2, "config.optimizer.learning_rate=nan"),
    (["--config.optimizer.learning_rate=inf"], 2, "config.optimizer.learning_rate=inf"),
    (["--config.optimizer.b1=1.5"], 2, "config.optimizer.b1=1.5: out of range [0.0, 1.0)"),
    (["--config.optimizer.b1=-0.1"], 2, "config.optimizer.b1"),
    (["--config.optimizer.b2=1.0"], 2, "config.optimizer.b2"),
    (["--config.optimizer.eps=-1"], 2, "config.optimizer.eps"),
    (["--config.optimizer.eps=0"], 2, "config.optimizer.eps"),
    (["--config.optimizer.momentum=1.0"], 2, "config.optimizer.momentum"),
    (["--config.optimizer.mu_max=2"], 2, "config.optimizer.mu_max"),
    (["--config.model.dropout=1.0"], 2, "config.model.dropout"),
    (["--config.model.dropout=-0.5"], 2, "config.model.dropout"),
    (["--config.model.init_std=0"], 2, "config.model.init_std"),
    (["--config.weight_decay.lam=-1"], 2, "config.weight_decay.lam"),
    (["--config.epochs=0"], 2, "config.epochs=0"),
    (["--config.batch_size=0"], 2, "config.batch_size=0"),
    (["--config.batch_size=-2"], 2, "config.batch_size=-2"),
    (["--config.steps_per_chunk=0"], 2, "config.steps_per_chunk=0"),
    (["--config.schedule.plateau_patience=0"], 2, "config.schedule.plateau_patience=0"),
    (["--config.schedule.plateau_factor=1.0"], 2, "config.schedule.plateau_factor"),
    (["--config.schedule.step_factor=0"], 2, "config.schedule.step_factor"),
    (["--config.schedule.step_epochs=0"], 2, "config.schedule.step_epochs"),
    (["--config.schedule.warmup_epochs=-1"], 2, "config.schedule.warmup_epochs"),
    (["--config.early_stopping.patience=-1"], 2, "config.early_stopping.patience"),
    (["--config.checkpoint.keep=0"], 2, "config.checkpoint.keep"),
    (["--config.checkpoint.every_steps=-1"], 2, "config.checkpoint.every_steps"),
    (["--config.checkpoint.every_seconds=-5"], 2, "config.checkpoint.every_seconds"),
    (["--config.seed=-1"], 2, "config.seed=-1"),
    (["--config.log_every_seconds=-1"], 2, "config.log_every_seconds"),
    (["--config.dataset.validation_size=-0.1"], 2, "config.dataset.validation_size"),
    (["--config.dataset.validation_size=1.5"], 2, "config.dataset.validation_size"),
    (["--config.optimizer.name=adagrad"], 2, "config.optimizer.name='adagrad': choose one of"),
    (["--config.model.kind=resnet"], 2, "config.model.kind='resnet'"),
    (["--config.model.activation=gelu"], 2, "config.model.activation='gelu'"),
    (["--config.loss=hinge"], 2, "config.loss='hinge'"),
    (["--config.schedule.name=linear"], 2, "config.schedule.name='linear'"),
    (["--config.devices.strategy=tpu"], 2, "config.devices.strategy='tpu'"),
    (["--config.dataset.name=imagenet"], 2, "config.dataset.name='imagenet'"),
    (["--config.model.init=xavier"], 2, "config.model.init='xavier'"),
    (["--config.optimizer.momentum_schedule=linear"], 2, "config.optimizer.momentum_schedule"),
    (["--config.model.output_activation=relu"], 2, "config.model.output_activation='relu'"),
    (["--config.model.output_activation=sigmoid"], 2, "config.loss='cross_entropy' needs"),
    (["--config.schedule.name=cosine", "--config.schedule.warmup_epochs=1"], 2, "warmup_epochs=1"),
    (["--config.model.kind=cnn", "--config.model.channels=(4,4,4,4)"], 2, "does not fit 8x8x1"),
    (["--config.model.kind=cnn", "--config.model.channels=()"], 2, "config.model.channels=()"),
    (["--config.batch_size=100000"], 2, "config.batch_size=100000 exceeds"),
    (["--config.dataset.validation_size=5000"], 2, "config.dataset.validation_size=5000"),
    (
        # an empty cache and a closed port as the mirror: the same case on a networked machine
        [
            "--config.dataset.name=mnist",
            "--config.dataset.data_dir=/nonexistent",
            "--config.dataset.cache_dir=/nonexistent",
            "--config.dataset.mirror=http://127.0.0.1:1",
        ],
        2,
        "'mnist' not found (its download failed: the download host 127.0.0.1:1 is unreachable",
    ),
    (["--config.model.hidden=(1000000000,)"], 2, "GiB, more than the"),
    (
        [
            "--config.dataset.name=mnist",
            "--config.dataset.data_dir=/etc/passwd",
            "--config.dataset.download=False",
        ],
        2,
        "not found (nothing is downloaded)",
    ),
    (["--config.model.kind=layers"], 2, "config.model.kind='layers' needs config.model.layers"),
    (["--config.model.layers=flatten"], 2, "config.model.layers is set, but config.model.kind"),
    (
        ["--config.model.kind=layers", "--config.model.layers=('flatten', 'dens(8)')"],
        2,
        "config.model.layers[1] = 'dens(8)': unknown layer 'dens'; did you mean 'dense'?",
    ),
    (
        ["--config.model.kind=layers", "--config.model.layers=('conv2d(4, windw=3)',)"],
        2,
        "config.model.layers[0] = 'conv2d(4, windw=3)': Conv2D() got an unexpected keyword "
        "argument 'windw'",
    ),
    (
        ["--config.model.kind=layers", "--config.model.layers=('flatten', 'dense(8')"],
        2,
        "config.model.layers[1] = 'dense(8': not a layer spec: '(' was never closed",
    ),
    (
        ["--config.model.kind=layers", "--config.model.layers=('flatten', 'dense(2**3)')"],
        2,
        "config.model.layers[1] = 'dense(2**3)': argument 2**3 is not a literal",
    ),
    (
        ["--config.model.kind=layers", "--config.model.layers=('conv2d(4, 3)', 'dense(8)')"],
        2,
        "config.model.layers[1] = 'dense(8)' gets input 6x6x4 (from 8x8x1 inputs): ValueError: "
        "Dense expects a flat input shape (d,), got (6, 6, 4); add 'flatten' before it",
    ),
    (
        ["--config.model.kind=layers", "--config.model.layers=conv2d(4, 3)"],
        2,
        "config.model.layers[0] = 'conv2d(4, 3)' gives 6x6x4 outputs, which the output layer",
    ),
    (
        ["--config.model.kind=builder", "--config.model.builder=nocolon"],
        2,
        "config.model.builder='nocolon': expected 'module.path:function'",
    ),
    (
        ["--config.model.kind=builder", "--config.model.builder=no_such_module_xyz:net"],
        2,
        "cannot import no_such_module_xyz: ModuleNotFoundError: No module named",
    ),
    (
        ["--config.model.kind=builder", "--config.model.builder=jaxnet.models:no_such_net"],
        2,
        "config.model.builder='jaxnet.models:no_such_net': jaxnet.models has no function",
    ),
    (["--mode=bogus"], 2, "mode"),
    (["--nonexistent_flag=1"], 2, "nonexistent_flag"),
    (["positional"], 2, "unexpected arguments"),
]

CONFIG_FILES = {  # file text, expected text
    "syntax.py": ("def get_config(:\n    pass\n", "syntax.py line 1"),
    "no_get_config.py": ("x = 1\n", "defines no get_config() function"),
    "raises.py": ("def get_config():\n    raise RuntimeError('boom')\n", "RuntimeError: boom"),
    "returns_dict.py": ("def get_config():\n    return {}\n", "returned a dict"),
    "bad_import.py": (
        "import no_such_module_xyz\n",
        "failed to load (line 1): ModuleNotFoundError",
    ),
    "typo.py": (
        "from jaxnet.training.config import base_config\n\ndef get_config():\n"
        "    c = base_config()\n    c.optimizer.lerning_rate = 0.1\n    return c\n",
        "config.optimizer.lerning_rate; did you mean config.optimizer.learning_rate",
    ),
    "wrong_type.py": (
        "from jaxnet.training.config import base_config\n\ndef get_config():\n"
        "    c = base_config()\n    c.epochs = 'ten'\n    return c\n",
        "get_config() raised (line 5)",
    ),
}


BUILDER_FILES = {  # builder file text, expected text
    "builder_raises.py": (
        "def net(model_config, num_classes):\n    raise RuntimeError('no net')\n",
        "net(model_config, num_classes) raised RuntimeError: no net",
    ),
    "builder_list.py": (
        "def net(model_config, num_classes):\n    return []\n",
        "net(model_config, num_classes) returned a list, not a jaxnet Layer",
    ),
    "builder_five.py": (
        "from jaxnet import layers as L\n\ndef net(model_config, num_classes):\n"
        "    return L.serial(L.Flatten, L.Dense(5))\n",
        "builder_five.py:net' gives 5 outputs: expected 10 logits",
    ),
}


def _run(args, workdir, env_extra=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **(env_extra or {})}
    argv = [sys.executable, os.path.join(ROOT, "train.py"), *args]
    if workdir is not None:
        argv.insert(2, f"--workdir={workdir}")
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


def _problems(case, result, expected_status, text, workdir_existed, workdir):
    problems = []
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != expected_status:
        problems.append(f"exit {result.returncode}, expected {expected_status}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines: {result.stderr[-600:]!r}")
    elif text not in lines[0]:
        problems.append(f"{text!r} not in {lines[0]!r}")
    if "Traceback" in result.stderr + result.stdout:
        problems.append("a traceback")
    if workdir is not None and not workdir_existed and os.path.exists(workdir):
        problems.append("left a workdir behind")
    return [f"{case}: {p}" for p in problems]


def _npz_cases(tmp_path):
    """(name, flags after TINY, text) of bad npz files and dataset.path settings."""
    import numpy as np

    x, y = np.linspace(0, 1, 40).reshape(20, 2), np.arange(20) % 3
    good = {"x_train": x, "y_train": y, "x_test": x[:5], "y_test": y[:5]}
    nan = x.copy()
    nan[3, 1] = np.nan
    negative = y.copy()
    negative[4] = -1
    files = {  # file name: arrays, or the text of a file that is no npz
        "no_y_test.npz": {k: v for k, v in good.items() if k != "y_test"},
        "lengths.npz": {**good, "y_train": y[:19]},
        "shapes.npz": {**good, "x_test": np.zeros((5, 3))},
        "negative.npz": {**good, "y_train": negative},
        "nan.npz": {**good, "x_val": nan, "y_val": y},
        "only_x_val.npz": {**good, "x_val": x},
        "text.npz": "x_train,y_train\n1,2\n",
    }
    for name, content in files.items():
        if isinstance(content, str):
            (tmp_path / name).write_text(content)
        else:
            np.savez(tmp_path / name, **content)
    npz = lambda name: ["--config.dataset.name=npz", f"--config.dataset.path={tmp_path / name}"]
    where = lambda name: f"{tmp_path / name}: "
    return [
        ("npz missing", npz("missing.npz"), where("missing.npz") + "no such file"),
        ("npz text", npz("text.npz"), where("text.npz") + "not an npz file"),
        ("npz no y_test", npz("no_y_test.npz"), where("no_y_test.npz") + "no array 'y_test'"),
        ("npz lengths", npz("lengths.npz"), "x_train has 20 examples but y_train has 19 labels"),
        ("npz shapes", npz("shapes.npz"), "x_test examples have shape (3,), x_train's (2,)"),
        ("npz negative", npz("negative.npz"), "y_train[4] = -1 is negative"),
        ("npz nan", npz("nan.npz"), where("nan.npz") + "x_val[3, 1] = nan is not a finite"),
        ("npz x_val", npz("only_x_val.npz"), "x_val without y_val: give both, or neither"),
        ("npz no path", ["--config.dataset.name=npz"], "needs config.dataset.path=FILE.npz"),
        (
            "path for digits",
            [f"--config.dataset.path={tmp_path / 'no_y_test.npz'}"],
            "is only read with config.dataset.name='npz', not 'digits'",
        ),
    ]


def _cases(tmp_path):
    """(name, args, workdir or None, env, expected status, text, workdir existed)."""
    cases = []
    for name, flags, text in _npz_cases(tmp_path):
        cases.append((name, TINY + flags, str(tmp_path / name.replace(" ", "-")), None, 2, text))
    for i, (flags, status, text) in enumerate(FLAG_CASES):
        workdir = str(tmp_path / f"flags{i}")
        cases.append((" ".join(flags), TINY + flags, workdir, None, status, text))
    for name, (source, text) in CONFIG_FILES.items():
        path = tmp_path / name
        path.write_text(source)
        cases.append(
            (name, [f"--config={path}", *TINY], str(tmp_path / f"w-{name}"), None, 2, text)
        )
    for name, (source, text) in BUILDER_FILES.items():
        path = tmp_path / name
        path.write_text(source)
        flags = ["--config.model.kind=builder", f"--config.model.builder={path}:net"]
        cases.append((name, TINY + flags, str(tmp_path / f"w-{name}"), None, 2, text))
    missing, folder = str(tmp_path / "missing.py"), str(tmp_path)
    cases.append(
        ("missing file", [f"--config={missing}"], None, None, 2, "missing.py does not exist")
    )
    cases.append(("folder as file", [f"--config={folder}"], None, None, 2, "is not a file"))
    default = os.path.join(ROOT, "configs", "default.py")
    args = [f"--config={default}:extra", *TINY]
    cases.append(("config argument", args, None, None, 2, "get_config() raised TypeError"))
    cases.append(("unwritable workdir", TINY, "/proc/jaxnet-test/run", None, 2, "cannot write"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases.append(("workdir is a file", TINY, str(a_file), None, 2, "is a file, but the workdir"))
    (tmp_path / "ckfile").mkdir()
    (tmp_path / "ckfile" / "checkpoints").write_text("x")
    cases.append(
        ("checkpoints is a file", TINY, str(tmp_path / "ckfile"), None, 2, "checkpoint folder")
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append(("evaluate empty", ["--mode=evaluate"], str(empty), None, 2, "holds no run"))
    cases.append(("evaluate no workdir", ["--mode=evaluate"], None, None, 2, "needs --workdir"))
    env = {"JAX_COORDINATOR_ADDRESS": "localhost:1"}
    cases.append(("coordinator only", TINY, str(tmp_path / "coord"), env, 2, "JAX_NUM_PROCESSES"))
    return cases


def test_sixty_and_more_bad_inputs_each_get_one_line_and_a_nonzero_exit(tmp_path):
    cases = _cases(tmp_path)
    assert len(cases) >= 60
    existed = {c[2]: c[2] is not None and os.path.exists(c[2]) for c in cases}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: _run(c[1], c[2], c[3]), cases))
    problems = []
    for (name, _, workdir, _, status, text), result in zip(cases, results):
        problems += _problems(name, result, status, text, existed[workdir], workdir)
    assert not problems, "\n".join(problems)


def test_resume_and_workdir_conflicts_get_one_line(tmp_path):
    workdir = tmp_path / "run"
    first = _run(TINY, workdir)
    assert first.returncode == 0, first.stderr
    cases = [
        (TINY + ["--config.optimizer.learning_rate=0.1"], "optimizer.learning_rate: 0.001 -> 0.1"),
        (TINY + ["--config.model.hidden=(16,)"], "model.hidden: (128,) -> (16,)"),
        (TINY + ["--config.batch_size=32"], "batch_size: 64 -> 32"),
        (["--config.optimizer.name=sgd"], "optimizer.name: 'adam' -> 'sgd'"),
    ]
    for args, text in cases:
        result = _run(args, workdir)
        assert not _problems(args, result, 2, text, True, workdir), result.stderr
        assert "another --workdir" in result.stderr
    with open(workdir / ".lock", "a+") as held:  # another run holds the workdir
        fcntl.flock(held, fcntl.LOCK_EX)
        result = _run([], workdir)
    assert not _problems("locked", result, 2, "in use by another run", True, workdir)
    evaluated = _run(["--mode=evaluate"], workdir)  # the workdir alone is enough
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test accuracy" in evaluated.stdout


def test_keys_mode_lists_every_key_with_default_and_allowed_values():
    from jaxnet.training import config as config_lib

    result = _run(["--mode=keys"], None)
    assert result.returncode == 0, result.stderr
    for name, key in config_lib.KEYS.items():
        assert f" {name} = " in result.stdout and key.check.allowed in result.stdout, name
