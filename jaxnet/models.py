"""Networks named by a config: four fixed kinds, a list of layer specs, or a user's builder.

`model.kind` is one of `KINDS`: a kind in `NETWORKS` (an MLP of given widths, three CNNs);
"layers", the network written as layer-spec strings in Python call syntax, each built from the
`LAYERS` registry (`parse_layer`); or "builder", a user's function named by `model.builder`
('module.path:function' or 'path/file.py:function') that returns the whole network. Each
registry below maps a config string to what it names; configs validate against these keys,
so the allowed values are defined here once. Errors are `SpecError`s: one line naming the key.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import zlib

import jax

from jaxnet import layers as L

ACTIVATIONS = {"sigmoid": L.Sigmoid, "tanh": L.Tanh, "relu": L.Relu, "swish": L.Swish()}


def _nielsen(key, shape, dtype):
    """Nielsen's 'improved' initialisation: N(0, 1 / n_in) for weights (d, e), fan-in first."""
    return jax.random.normal(key, shape, dtype) / jax.numpy.sqrt(shape[0] * 1.0)


INITIALIZERS = {
    "glorot": lambda std: jax.nn.initializers.glorot_normal(),
    "he": lambda std: jax.nn.initializers.he_normal(),
    "normal": jax.nn.initializers.normal,
    "nielsen": lambda std: _nielsen,
}


def initializer(name: str, std: float = 0.01):
    """The weight initialiser a config names; fan-in first, as jax.nn.initializers expect."""
    return INITIALIZERS[name](std)


def _mlp(c, act, dense, conv):
    stack = [L.Flatten]
    for width in c.hidden:
        stack += [dense(width), act]
    return stack


def _cnn(c, act, dense, conv):
    """conv-relu-pool blocks, then dense layers."""
    stack = []
    for channels in c.channels:
        stack += [conv(channels, 3, 1, "same"), act, L.MaxPool(2)]
    return stack + _mlp(c, act, dense, conv)


def _lenet(c, act, dense, conv):
    """LeCun et al. 1998, with ReLU and max-pooling."""
    stack = [conv(6, 5, 1, "same"), act, L.MaxPool(2), conv(16, 5, 1, "valid"), act, L.MaxPool(2)]
    return stack + [L.Flatten, dense(120), act, dense(84), act]


def _cifar_cnn(c, act, dense, conv):
    """Two conv-conv-pool blocks, then dense layers."""
    stack = []
    for channels in c.channels:
        pair = [conv(channels, 3, 1, "same"), act, conv(channels, 3, 1, "same"), act]
        stack += pair + [L.MaxPool(2)]
    return stack + _mlp(c, act, dense, conv)


NETWORKS = {"mlp": _mlp, "cnn": _cnn, "lenet": _lenet, "cifar_cnn": _cifar_cnn}
CONV_BLOCK_KINDS = ("cnn", "cifar_cnn")  # the kinds whose conv blocks model.channels sets
KINDS = (*NETWORKS, "layers", "builder")

# What a layer spec may name, each by its jaxnet name in lower case: a factory (called with the
# spec's arguments) or a Layer (named bare). Factories with a W_init argument get model.init's
# initialiser.
LAYERS = {
    "dense": L.Dense,
    "conv2d": L.Conv2D,
    "maxpool": L.MaxPool,
    "avgpool": L.AvgPool,
    "flatten": L.Flatten,
    "dropout": L.Dropout,
    "relu": L.Relu,
    "sigmoid": L.Sigmoid,
    "tanh": L.Tanh,
    "swish": L.Swish,
    "identity": L.Identity,
    "serial": L.serial,
    "reshape": L.Reshape,
    "conv1d": L.Conv1D,
    "globalavgpool": L.GlobalAvgPool,
    "layernorm": L.LayerNorm,
    "batchnorm": L.BatchNorm,
    "elman": L.Elman,
    "gru": L.GRU,
    "fanout": L.FanOut,
    "faninsum": L.FanInSum,
    "faninconcat": L.FanInConcat,
    "parallel": L.parallel,
    "residual": L.Residual,
    "randomcrop": L.RandomCrop,
    "randomflip": L.RandomFlip,
}


class SpecError(ValueError):
    """A model spec (layer string or builder) that does not build; str() is one line."""


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------------------------- layer specs


def parse_layer(spec: str, W_init=None) -> L.Layer:
    """The Layer a spec such as "conv2d(32, 3, padding='same')" names (parsed, never evaluated).

    A spec is a LAYERS name, bare or called; arguments are literals or nested specs, as in
    "residual(conv2d(8, 3, padding='same'), relu)". `W_init` goes to factories that take one.
    """
    if not isinstance(spec, str):
        raise SpecError(f"expected a layer-spec string, got {type(spec).__name__}")
    source = spec.strip()
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError as error:
        raise SpecError(f"not a layer spec: {error.msg}") from None
    return _build(node, source, W_init, nested=False)


def _build(node, source: str, W_init, *, nested: bool) -> L.Layer:
    """The layer of one Name or Call node; errors of a nested node quote that node."""
    where = f"in {ast.get_source_segment(source, node)!r}: " if nested else ""
    try:
        name, arg_nodes, keyword_nodes = _call_parts(node, source)
        entry = _lookup(name)
    except SpecError as error:
        raise SpecError(f"{where}{error}") from None
    args = [_argument(a, source, W_init) for a in arg_nodes]
    kwargs = {k.arg: _argument(k.value, source, W_init) for k in keyword_nodes}
    if isinstance(entry, L.Layer):
        if args or kwargs:
            raise SpecError(f"{where}{name} takes no arguments: write {name!r}")
        return entry
    try:
        return entry(*args, **_with_initializer(entry, args, kwargs, W_init))
    except Exception as error:  # noqa: BLE001  (a factory's own check, or the call's TypeError)
        named = isinstance(error, (TypeError, ValueError))  # their messages name the layer
        kind = "" if named else f"{type(error).__name__}: "
        raise SpecError(f"{where}{kind}{_first_line(error)}") from None


def _call_parts(node, source: str):
    """(name, argument nodes, keyword nodes) of `name` or `name(...)`."""
    if isinstance(node, ast.Name):
        return node.id, [], []
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        text = ast.get_source_segment(source, node)
        raise SpecError(f"expected a layer name or call such as 'dense(128)', got {text!r}")
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise SpecError(f"*{ast.get_source_segment(source, arg.value)}: give each argument")
    for keyword in node.keywords:
        if keyword.arg is None:
            raise SpecError("**keywords: give each keyword argument")
    return node.func.id, node.args, node.keywords


def _with_initializer(entry, args, kwargs, W_init) -> dict:
    """kwargs plus W_init where the factory takes one; the spec may not give initialisers."""
    signature = inspect.signature(entry)
    try:
        given = signature.bind_partial(*args, **kwargs).arguments
    except TypeError:
        return kwargs  # the call reports it, in Python's words
    initialisers = [name for name in given if name.endswith("_init")]
    if initialisers:
        raise SpecError(f"{', '.join(initialisers)}: initialisers are set by config.model.init")
    if W_init is None or "W_init" not in signature.parameters:
        return kwargs
    return {**kwargs, "W_init": W_init}


def _lookup(name: str):
    if name not in LAYERS:
        known = ", ".join(sorted(LAYERS))
        raise SpecError(f"unknown layer {name!r}{_did_you_mean(name)} (the layers: {known})")
    return LAYERS[name]


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), LAYERS, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def _argument(node, source: str, W_init):
    """A literal, or the layer of a nested spec (a name or a call)."""
    if isinstance(node, (ast.Name, ast.Call)):
        if isinstance(node, ast.Name) and node.id not in LAYERS:  # often an unquoted string
            raise SpecError(
                f"argument {node.id} is no layer{_did_you_mean(node.id)} (a string? quote it)"
            )
        return _build(node, source, W_init, nested=True)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        text = ast.get_source_segment(source, node)
        raise SpecError(
            f"argument {text} is not a literal (a number, string, tuple, list, dict, True, "
            "False or None) nor a layer spec"
        ) from None


def spec_layers(model_config) -> list[L.Layer]:
    """One layer per entry of model.layers; a SpecError names the key, the index and the spec."""
    c = model_config
    W_init = initializer(c.init, c.init_std)
    stack = []
    for index, spec in enumerate(c.layers):
        try:
            stack.append(parse_layer(spec, W_init))
        except SpecError as error:
            raise SpecError(f"config.model.layers[{index}] = {spec!r}: {error}") from None
    return stack


# -------------------------------------------------------------------------------------- builders


def builder_function(text: str):
    """The function 'module.path:function' or 'path/file.py:function' names (files: from the
    current directory), imported; a SpecError naming config.model.builder says why not."""
    where = f"config.model.builder={text!r}"
    target, _, name = text.rpartition(":")
    if not target or not name.isidentifier():
        raise SpecError(f"{where}: expected 'module.path:function' or 'path/to/file.py:function'")
    module = _builder_module(target, where)
    function = getattr(module, name, None)
    if function is None:
        public = [n for n in dir(module) if callable(getattr(module, n)) and n[0] != "_"]
        close = difflib.get_close_matches(name, public, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise SpecError(f"{where}: {target} has no function {name!r}{hint}")
    if not callable(function):
        raise SpecError(f"{where}: {target}.{name} is a {type(function).__name__}, not a function")
    return function


def _builder_module(target: str, where: str):
    """The module 'module.path' imports, or the one 'path/file.py' (from the cwd) defines."""
    if target.endswith(".py"):
        return _load_file(target, where)
    try:
        return importlib.import_module(target)
    except Exception as error:  # noqa: BLE001  (whatever the module raises is its problem)
        is_file = os.path.isfile(target.replace(".", os.sep) + ".py")
        hint = f" (the file? give it as {target.replace('.', '/')}.py:...)" if is_file else ""
        problem = f"{type(error).__name__}: {_first_line(error)}"
        raise SpecError(f"{where}: cannot import {target}: {problem}{hint}") from None


def _load_file(target: str, where: str):
    path = os.path.abspath(target)
    if not os.path.isfile(path):
        raise SpecError(f"{where}: {target} is not a file (looked in {os.getcwd()})")
    # registered under a name of its own, as imports are (dataclasses look their module up)
    name = f"jaxnet_user_builder_{zlib.crc32(path.encode()):08x}"
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location(name, path, loader=loader)
    )
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException as error:
        del sys.modules[name]
        if isinstance(error, SyntaxError):
            raise SpecError(f"{where}: {target} line {error.lineno}: {error.msg}") from None
        if not isinstance(error, Exception):
            raise
        problem = f"{type(error).__name__}: {_first_line(error)}"
        raise SpecError(f"{where}: {target} failed to load: {problem}") from None
    return module


def _built_by_builder(model_config, num_classes: int) -> L.Layer:
    """function(model_config, num_classes), checked to be a Layer."""
    text = model_config.builder
    function = builder_function(text)
    name = text.rpartition(":")[2]
    try:
        network = function(model_config, num_classes)
    except Exception as error:  # noqa: BLE001  (whatever the builder raises is its problem)
        problem = f"{type(error).__name__}: {_first_line(error)}"
        raise SpecError(
            f"config.model.builder={text!r}: {name}(model_config, num_classes) raised {problem}"
        ) from None
    if not isinstance(network, L.Layer):
        raise SpecError(
            f"config.model.builder={text!r}: {name}(model_config, num_classes) returned a "
            f"{type(network).__name__}, not a jaxnet Layer"
        )
    return network


# ---------------------------------------------------------------------------------- the network


def body(model_config) -> list[L.Layer]:
    """The layers before the output head: a NETWORKS kind's, or model.layers' (kind=layers)."""
    c = model_config
    if c.kind == "layers":
        return spec_layers(c)
    W_init = initializer(c.init, c.init_std)
    dense = functools.partial(L.Dense, W_init=W_init)
    conv = functools.partial(L.Conv2D, W_init=W_init)
    return NETWORKS[c.kind](c, ACTIVATIONS[c.activation], dense, conv)


def head(model_config, num_classes: int) -> list[L.Layer]:
    """What every kind but builder ends with: dropout (model.dropout > 0), then the logits."""
    c = model_config
    dropout = [L.Dropout(c.dropout)] if c.dropout > 0 else []
    return dropout + [L.Dense(num_classes, W_init=initializer(c.init, c.init_std))]


def build_model(model_config, num_classes: int) -> L.Layer:
    """The network `model_config` describes, ending in `num_classes` logits.

    The output activation (model.output_activation) is applied by the loss, not here, so that
    cross-entropies are computed stably from logits (`jaxnet.training.build`).
    """
    if model_config.kind == "builder":
        return _built_by_builder(model_config, num_classes)
    return L.serial(*body(model_config), *head(model_config, num_classes))
