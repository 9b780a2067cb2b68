"""Networks from a config: layer specs (model.kind='layers'), builders (model.kind='builder').

The spec parser must build exactly the network written by hand; every bad spec, builder or
shape misfit is one line naming the key, the index and the spec.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxnet import layers as L
from jaxnet import models
from jaxnet.data import Dataset
from jaxnet.training import build, trainer
from jaxnet.training import config as config_lib
from jaxnet.training.config import ConfigError, base_config


def layers_config(*specs, **overrides):
    c = base_config()
    c.model.kind, c.model.layers = "layers", tuple(specs)
    for name, value in overrides.items():
        config_lib.set_value(c, name, value)
    return c


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What network_problem reads of a dataset."""

    input_shape: tuple
    num_classes: int = 10


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def _assert_same_network(a, b, key, input_shape):
    """Same output shape, params tree and values, and outputs with and without dropout keys."""
    init_key, x_key, drop_key = jax.random.split(key, 3)
    (out_a, params_a), (out_b, params_b) = (
        a.init(init_key, input_shape),
        b.init(init_key, input_shape),
    )
    assert out_a == out_b
    assert jax.tree_util.tree_structure(params_a) == jax.tree_util.tree_structure(params_b)
    for p, q in zip(_leaves(params_a), _leaves(params_b), strict=True):
        np.testing.assert_array_equal(p, q)
    x = jax.random.normal(x_key, (3, *input_shape))
    for k in (None, drop_key):
        np.testing.assert_array_equal(a.apply(params_a, x, key=k), b.apply(params_b, x, key=k))


def test_specs_build_the_same_network_as_the_hand_written_serial(key):
    config = layers_config(
        "conv2d(4, 3, padding='same')",
        "relu",
        "maxpool(2)",
        "flatten",
        "dense(16)",
        "tanh",
        "dropout(0.5)",
        **{"model.init": "he", "model.dropout": 0.25},
    )
    config_lib.validate(config)
    he = jax.nn.initializers.he_normal()
    by_hand = L.serial(
        L.Conv2D(4, 3, padding="same", W_init=he),
        L.Relu,
        L.MaxPool(2),
        L.Flatten,
        L.Dense(16, W_init=he),
        L.Tanh,
        L.Dropout(0.5),
        L.Dropout(0.25),  # model.dropout, then the output layer, as for every kind
        L.Dense(10, W_init=he),
    )
    _assert_same_network(models.build_model(config.model, 10), by_hand, key, (8, 8, 1))


def test_specs_of_the_default_cnn_give_the_cnn(key):
    cnn = base_config()
    cnn.model.kind, cnn.model.channels, cnn.model.hidden = "cnn", (4,), (16,)
    specs = ("conv2d(4, 3, 1, 'same')", "relu", "maxpool(2)", "flatten", "dense(16)", "relu")
    as_layers = layers_config(*specs)
    a, b = models.build_model(cnn.model, 10), models.build_model(as_layers.model, 10)
    _assert_same_network(a, b, key, (8, 8, 1))


def test_nested_specs_and_literal_arguments_reach_the_layers(key):
    nested = models.parse_layer("serial(conv2d(4, (3, 2), strides=(1, 2), padding='same'), relu)")
    assert [layer.name for layer in nested.spec["layers"]] == ["conv", "relu"]
    conv = nested.spec["layers"][0]
    assert conv.spec["window"] == (3, 2) and conv.spec["strides"] == (1, 2)
    flat = L.serial(L.Conv2D(4, (3, 2), strides=(1, 2), padding="same"), L.Relu)
    _assert_same_network(nested, flat, key, (6, 6, 2))
    pool = models.parse_layer("avgpool(window=2, strides=1, padding=((1, 1), (0, 1)))")
    assert pool.spec == {"window": (2, 2), "strides": (1, 1), "padding": ((1, 1), (0, 1))}
    assert L.output_shape(pool, (4, 4, 3)) == (5, 4, 3)
    drop = models.parse_layer("dropout(rate=0.3, scale_at='test')")
    x = jax.random.normal(key, (2, 5))
    np.testing.assert_allclose(drop.apply((), x), 0.7 * x, rtol=1e-15)  # the notes' test rule
    swish = models.parse_layer("swish(beta=2.0)")
    np.testing.assert_allclose(swish.apply((), x), x * jax.nn.sigmoid(2.0 * x), rtol=1e-12)


# The spec and an input shape for entries that need arguments or a special input; an entry not
# listed here is parsed bare and traced on EXAMPLE_INPUT.
EXAMPLES = {
    "dense": ("dense(4)", (5,)),
    "conv2d": ("conv2d(4, 3)", (6, 6, 2)),
    "maxpool": ("maxpool(2)", (6, 6, 2)),
    "avgpool": ("avgpool(2)", (6, 6, 2)),
    "serial": ("serial(flatten, dense(3))", (6, 6, 2)),
    "conv1d": ("conv1d(4, 3)", (8, 2)),
    "elman": ("elman(4)", (6, 3)),
    "gru": ("gru(4)", (6, 3)),
    "residual": ("residual(relu)", (6, 6, 2)),
    "reshape": ("reshape(12, 6)", (6, 6, 2)),
    "fanout": ("serial(fanout(2), faninsum)", (6, 6, 2)),
    "faninsum": ("serial(fanout(2), faninsum)", (6, 6, 2)),
    "faninconcat": ("serial(fanout(2), faninconcat)", (6, 6, 2)),
    "parallel": ("serial(fanout(2), parallel(relu, tanh), faninsum)", (6, 6, 2)),
    "randomcrop": ("randomcrop(2)", (6, 6, 2)),
}
EXAMPLE_INPUT = (6, 6, 2)


@pytest.mark.parametrize("name", sorted(models.LAYERS))
def test_every_registry_entry_parses_with_its_defaults_and_traces(name):
    spec, shape = EXAMPLES.get(name, (name, EXAMPLE_INPUT))
    layer = models.parse_layer(spec)
    assert isinstance(layer, L.Layer)
    out = L.output_shape(layer, shape)
    assert all(isinstance(d, int) and d >= 1 for d in out)
    entry = models.LAYERS[name]
    if isinstance(entry, L.Layer) and spec == name:
        assert layer is entry
    elif spec == name:  # a bare factory name is the factory's defaults
        assert layer.spec == entry().spec


def test_model_init_reaches_every_dense_and_conv_layer(key):
    config = layers_config("conv2d(2, 3)", "flatten", "dense(3)", **{"model.init": "normal"})
    config.model.init_std = 1e-3
    _, params = models.build_model(config.model, 4).init(key, (5, 5, 1))
    weights = [p["W"] for p in params if p]
    assert len(weights) == 3  # conv, dense, the output dense
    assert all(0.3e-3 < float(np.std(w)) < 3e-3 for w in weights)  # glorot would give ~0.3


def _specs_error(*specs):
    with pytest.raises(ConfigError) as caught:
        config_lib.validate(layers_config(*specs))
    return str(caught.value)


@pytest.mark.parametrize(
    "specs, message",
    [
        (
            ("flatten", "relu", "relu", "conv2d(32, windw=3)"),
            "config.model.layers[3] = 'conv2d(32, windw=3)': Conv2D() got an unexpected keyword "
            "argument 'windw'",
        ),
        (("flatten", "dens(8)"), "config.model.layers[1] = 'dens(8)': unknown layer 'dens'; "),
        (("Dense(8)",), "config.model.layers[0] = 'Dense(8)': unknown layer 'Dense'; did you "),
        (("max_pool(2)",), "unknown layer 'max_pool'; did you mean 'maxpool'"),
        (("dense(8",), "config.model.layers[0] = 'dense(8': not a layer spec: '(' was never"),
        (("",), "config.model.layers[0] = '': not a layer spec: invalid syntax"),
        (("dense(2**3)",), "config.model.layers[0] = 'dense(2**3)': argument 2**3 is not a lit"),
        (("conv2d(4, 3, padding=same)",), "argument same is no layer (a string? quote it)"),
        (("serial(relu, rellu)",), "argument rellu is no layer; did you mean 'relu'?"),
        (("L.Dense(3)",), "expected a layer name or call such as 'dense(128)', got 'L.Dense(3)'"),
        (("dense(8)(3)",), "expected a layer name or call"),
        (("dense(*(8,))",), "*(8,): give each argument"),
        (("relu(3)",), "config.model.layers[0] = 'relu(3)': relu takes no arguments: write 'relu'"),
        (("dense",), "'dense': Dense() missing 1 required positional argument: 'out_features'"),
        (("dense(0)",), "'dense(0)': Dense out_features must be a positive int, got 0"),
        (("dense(4, W_init=1)",), "W_init: initialisers are set by config.model.init"),
        (("dense(4, 3)",), "'dense(4, 3)': W_init: initialisers are set by config.model.init"),
        (
            ("serial(flatten, conv2d(4, 3, windw=2))",),
            "config.model.layers[0] = 'serial(flatten, conv2d(4, 3, windw=2))': in "
            "'conv2d(4, 3, windw=2)': Conv2D() got an unexpected keyword argument 'windw'",
        ),
        ((), "config.model.kind='layers' needs config.model.layers"),
        ((3,), "config.model.layers=(3,): expected a tuple of layer-spec strings"),
    ],
)
def test_bad_specs_are_one_line_naming_the_key_the_index_and_the_spec(specs, message):
    error = _specs_error(*specs)
    assert message in error and "\n" not in error


def test_layers_or_builder_without_their_kind_are_refused():
    config = base_config()
    config.model.layers = ("flatten",)
    with pytest.raises(
        ConfigError, match="config.model.layers is set, but config.model.kind='cnn'"
    ):
        config_lib.validate(config)
    config = base_config()
    config.model.builder = "jaxnet.models:build_model"
    with pytest.raises(ConfigError, match="set model.kind='builder' to use it"):
        config_lib.validate(config)


@pytest.mark.parametrize(
    "specs, shape, message",
    [
        (
            ("conv2d(8, 3, padding='same')", "relu", "maxpool(2)", "conv2d(4, 3)", "dense(128)"),
            (28, 28, 1),
            "config.model.layers[4] = 'dense(128)' gets input 12x12x4 (from 28x28x1 inputs): "
            "ValueError: Dense expects a flat input shape (d,), got (12, 12, 4); add 'flatten' "
            "before it",
        ),
        (
            ("conv2d(4, 3)",),
            (8, 8, 1),
            "config.model.layers[0] = 'conv2d(4, 3)' gives 6x6x4 outputs, which the output layer "
            "dense(10) after it cannot take",
        ),
        (("conv2d(4, 3)", "flatten"), (16, 3), "config.model.layers[0] = 'conv2d(4, 3)' gets "),
        (("conv2d(4, 5)", "flatten"), (4, 4, 1), "'conv2d(4, 5)' gets input 4x4x1: ValueError"),
        (("maxpool(2)", "maxpool(2)", "flatten"), (2, 2, 1), "layers[1] = 'maxpool(2)' gets "),
    ],
)
def test_shape_misfits_name_the_key_the_index_the_spec_and_the_input(specs, shape, message):
    config = layers_config(*specs)
    config_lib.validate(config)  # parses: the shapes need the data
    problem = build.network_problem(config, Inputs(shape))
    assert message in problem and "\n" not in problem


@pytest.mark.parametrize(
    "kind, shape, message",
    [
        ("cnn", (64,), "config.model.kind='cnn', model.channels=(32, 64) cannot take the "
         "dataset's 64 inputs (a (d,) vector)"),
        ("cnn", (16, 3), "cannot take the dataset's 16x3 inputs (an (L, C) sequence)"),
        ("lenet", (16, 3), "config.model.kind='lenet' cannot take the dataset's 16x3 inputs"),
        ("cnn", (16, 1, 1), "config.model.kind='cnn', model.channels=(32, 64) does not fit "
         "16x1x1 inputs: layer 3 (max_pool) gets (16, 1, 32)"),
    ],
)  # fmt: skip
def test_fixed_kinds_on_inputs_they_cannot_take_name_kind_channels_and_shape(kind, shape, message):
    config = base_config()
    config.model.kind = kind
    problem = build.network_problem(config, Inputs(shape))
    assert message in problem
    config.model.kind = "mlp"
    assert build.network_problem(config, Inputs(shape)) is None


BUILDERS = """
from jaxnet import layers as L


def net(model_config, num_classes):
    return L.serial(L.Flatten, L.Dense(model_config.hidden[0]), L.Relu, L.Dense(num_classes))


def five(model_config, num_classes):
    return L.serial(L.Flatten, L.Dense(5))


def needs_flat(model_config, num_classes):
    return L.Dense(num_classes)


def raises(model_config, num_classes):
    raise RuntimeError("no network today\\nsecond line")


def not_a_layer(model_config, num_classes):
    return [L.Flatten]
"""


def builder_config(text):
    c = base_config()
    c.model.kind, c.model.builder, c.model.hidden = "builder", text, (6,)
    return c


def test_a_builder_from_a_module_and_from_a_file_gives_its_network(tmp_path, monkeypatch, key):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nets.py").write_text(BUILDERS)
    (tmp_path / "jaxnet_test_builders_mod.py").write_text(BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # file paths are relative to the current directory
    by_hand = L.serial(L.Flatten, L.Dense(6), L.Relu, L.Dense(10))
    for text in (
        "jaxnet_test_builders_mod:net",
        "sub/nets.py:net",
        str(tmp_path / "sub/nets.py:net"),
    ):
        config = builder_config(text)
        config_lib.validate(config)
        assert build.network_problem(config, Inputs((4, 4, 1))) is None
        network = models.build_model(config.model, 10)  # nothing appended
        assert [layer.name for layer in network.spec["layers"]] == [
            "flatten",
            "dense",
            "relu",
            "dense",
        ]
        _assert_same_network(network, by_hand, key, (4, 4, 1))


@pytest.mark.parametrize(
    "text, message",
    [
        ("nocolon", "config.model.builder='nocolon': expected 'module.path:function' or "),
        ("mod:", "expected 'module.path:function'"),
        ("no_such_module_xyz:net", "config.model.builder='no_such_module_xyz:net': cannot import "
         "no_such_module_xyz: ModuleNotFoundError: No module named 'no_such_module_xyz'"),
        ("missing.py:net", "config.model.builder='missing.py:net': missing.py is not a file"),
        ("sub/nets.py:nett", "sub/nets.py has no function 'nett'; did you mean net?"),
        ("sub/broken.py:net", "config.model.builder='sub/broken.py:net': sub/broken.py line 1: "),
        ("sub/fails.py:net", "sub/fails.py failed to load: ZeroDivisionError: division by zero"),
        ("jaxnet.models:LAYERS", "jaxnet.models.LAYERS is a dict, not a function"),
    ],
)  # fmt: skip
def test_builders_that_cannot_be_found_fail_validation_in_one_line(
    text, message, tmp_path, monkeypatch
):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nets.py").write_text(BUILDERS)
    (tmp_path / "sub" / "broken.py").write_text("def net(:\n")
    (tmp_path / "sub" / "fails.py").write_text("x = 1 / 0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        config_lib.validate(builder_config(text))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "function, message",
    [
        ("raises", "raises(model_config, num_classes) raised RuntimeError: no network today"),
        ("not_a_layer", "not_a_layer(model_config, num_classes) returned a list, not a jaxnet "),
        ("five", "config.model.builder='nets.py:five' gives 5 outputs: expected 10 logits"),
        ("needs_flat", "gives a network that does not fit 4x4x1 inputs: layer 1 (dense) gets "),
    ],
)
def test_builders_that_fail_or_misfit_are_named_by_the_network_check(
    function, message, tmp_path, monkeypatch
):
    (tmp_path / "nets.py").write_text(BUILDERS)
    monkeypatch.chdir(tmp_path)
    config = builder_config(f"nets.py:{function}")
    config_lib.validate(config)  # found: calling it needs num_classes, the dataset's
    problem = build.network_problem(config, Inputs((4, 4, 1)))
    assert message in problem and "\n" not in problem


def test_kind_choices_are_the_networks_and_layers_and_builder():
    assert models.KINDS == (*models.NETWORKS, "layers", "builder")
    allowed = config_lib.KEYS["model.kind"].check.allowed
    assert allowed == " | ".join(models.KINDS)
    assert config_lib.KEYS["model.layers"].default == ()
    assert config_lib.KEYS["model.builder"].default == ""
    assert all(name in config_lib.KEYS["model.layers"].check.allowed for name in models.LAYERS)


def toy_dataset(seed=0, shape=(6, 6, 1), classes=3):
    """Class prototypes plus noise, learnable in one epoch, as a user's arrays."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((classes, *shape)).astype(np.float32)

    def split(n):
        y = rng.integers(0, classes, n).astype(np.int32)
        return (protos[y] + 0.5 * rng.standard_normal((n, *shape))).astype(np.float32), y

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split(1024), split(128), split(128)
    return Dataset.from_arrays(
        x_train, y_train, x_test, y_test, x_val=x_val, y_val=y_val, num_classes=classes, name="toy"
    )


def test_a_layers_run_trains_saves_its_specs_and_refuses_other_layers_on_resume(tmp_path):
    specs = ("conv2d(4, 3, padding='same')", "relu", "maxpool(2)", "flatten", "dense(8)", "relu")
    overrides = {
        "epochs": 1,
        "batch_size": 32,
        "steps_per_chunk": 4,
        "optimizer.learning_rate": 0.02,
        "devices.strategy": "single",
        "compilation_cache_dir": "",
    }
    dataset = toy_dataset()
    run = lambda config: trainer.train_and_evaluate(
        config, str(tmp_path), dataset=dataset, log=lambda *a: None, progress=False
    )
    summary = run(layers_config(*specs, **overrides))
    assert summary["epochs_run"] == 1 and summary["test_accuracy"] > 0.9
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model.kind"] == "layers" and saved["model.layers"] == list(specs)
    restored = config_lib.from_json((tmp_path / "config.json").read_text())
    assert restored.model.layers == specs
    assert config_lib.resume_changes(restored, layers_config(*specs, **overrides)) == ([], [])
    other = (*specs[:-2], "dense(16)", "relu")
    with pytest.raises(ConfigError, match=r"another config \(model.layers: \(.*'dense\(8\)'"):
        run(layers_config(*other, **overrides))
