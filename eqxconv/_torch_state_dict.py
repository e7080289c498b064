"""PyTorch interop for whole models: [`eqxconv.load_torch_state_dict`][].

It never imports torch: a state dict of numpy arrays (say read with safetensors)
loads without it.
"""

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._conv import Conv
from ._conv_transpose import ConvTranspose
from ._torch_convert import to_jax, to_numpy, transpose_weight_layout


def _is_target(node: Any) -> bool:
    return isinstance(node, Conv | ConvTranspose)


def _find_layers(model: Any) -> dict[str, Any]:
    """Every `Conv` and `ConvTranspose` in `model`, by `jax.tree_util.keystr` path
    (`''` for `model` itself), in tree-traversal order."""
    found = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_target)[0]
    return {
        jax.tree_util.keystr(path): node for path, node in found if _is_target(node)
    }


def _torch_layer_prefixes(state_dict: Mapping[str, Any]) -> list[str]:
    """Prefixes of the `state_dict` entries that look like convolution weights (a
    `weight` of 3 to 5 dimensions), in the `state_dict`'s order; `''` for the bare
    `weight` of a single layer's own state dict."""
    prefixes = []
    for key, value in state_dict.items():
        prefix, _, name = key.rpartition(".")
        if name == "weight" and len(np.shape(value)) in (3, 4, 5):
            prefixes.append(prefix)
    return prefixes


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _read(
    state_dict: Mapping[str, Any],
    key: str,
    expected: tuple[int, ...],
    layer: str,
    *,
    if_missing: str = "",
    layout: str = "",
) -> np.ndarray:
    """`state_dict[key]` as an array of shape `expected`, or an error naming the
    key and the eqxconv `layer` it is for."""
    if key not in state_dict:
        raise KeyError(f"state_dict has no key {key!r} for the {layer}{if_missing}.")
    value = to_numpy(state_dict[key], f"state_dict[{key!r}]")
    if tuple(value.shape) != expected:
        raise ValueError(
            f"state_dict[{key!r}] has shape {tuple(value.shape)}, but the {layer} "
            f"expects {expected}{layout}."
        )
    return value


def _load_layer(
    layer: Conv | ConvTranspose, path: str, prefix: str, state_dict: Mapping[str, Any]
) -> Conv | ConvTranspose:
    """`layer` with its weight and bias from `state_dict[prefix + '.weight'/'.bias']`
    (no dot for the empty prefix)."""
    name = f"{type(layer).__name__} at {path or 'the root'}"
    weight_key, bias_key = _key(prefix, "weight"), _key(prefix, "bias")
    transposed = isinstance(layer, ConvTranspose)
    if transposed:
        shape = (layer.in_channels, layer.out_channels // layer.groups)
        layout = "torch's transposed layout (in, out // groups, *kernel_size)"
    else:
        shape = tuple(layer.weight.shape[:2])
        layout = "(out, in // groups, *kernel_size)"
    weight = _read(
        state_dict,
        weight_key,
        (*shape, *layer.kernel_size),
        name,
        if_missing=f" (mapped to the torch prefix {prefix!r})",
        layout=f", {layout}, for in_channels={layer.in_channels}, "
        f"out_channels={layer.out_channels}, groups={layer.groups} and "
        f"kernel_size={layer.kernel_size}",
    )
    if transposed:
        weight = transpose_weight_layout(weight, layer.groups)
    new_weight = to_jax(weight, layer.weight.dtype)
    if layer.bias is None:
        if bias_key in state_dict:
            raise ValueError(
                f"state_dict has {bias_key!r}, but the {name} has use_bias=False."
            )
        return eqx.tree_at(lambda m: m.weight, layer, new_weight)
    bias = _read(
        state_dict,
        bias_key,
        (layer.out_channels,),
        name,
        if_missing=", which has a bias (construct it with use_bias=False if the "
        "torch layer has bias=False)",
    )
    new_bias = to_jax(bias, layer.bias.dtype, layer.bias.shape)
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (new_weight, new_bias))


def _pairs_in_order(
    layers: dict[str, Any], state_dict: Mapping[str, Any]
) -> dict[str, str]:
    prefixes = _torch_layer_prefixes(state_dict)
    if len(prefixes) != len(layers):
        weights = [_key(p, "weight") for p in prefixes]
        raise ValueError(
            f"The model has {len(layers)} eqxconv Conv/ConvTranspose layers "
            f"({list(layers)}) but the state_dict has {len(prefixes)} "
            f"convolution weights ({weights}): pass a `mapping` from torch prefixes "
            "to layers."
        )
    return dict(zip(layers, prefixes, strict=True))


def _mapped_path(model: Any, layers: dict[str, Any], prefix: str, target: Any) -> str:
    """The path of the layer that `mapping[prefix] = target` names."""
    if callable(target):
        chosen = target(model)
        path = next((p for p, layer in layers.items() if layer is chosen), None)
        if path is None:
            raise ValueError(
                f"mapping[{prefix!r}] selects a {type(chosen).__name__}, not an "
                "eqxconv Conv or ConvTranspose of the model; its layers are at "
                f"{list(layers)}."
            )
        return path
    if target not in layers:
        raise ValueError(
            f"mapping[{prefix!r}] = {target!r} is not the path of an eqxconv Conv or "
            f"ConvTranspose of the model; its layers are at {list(layers)}."
        )
    return target


def _pairs_by_mapping(
    model: Any,
    layers: dict[str, Any],
    mapping: Mapping[str, str | Callable[[Any], Any]],
    strict: bool,
) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for prefix, target in mapping.items():
        path = _mapped_path(model, layers, prefix, target)
        if path in pairs:
            raise ValueError(
                f"mapping fills the layer at {path} twice (from {pairs[path]!r} "
                f"and {prefix!r})."
            )
        pairs[path] = prefix
    missing = [path for path in layers if path not in pairs]
    if strict and missing:
        raise ValueError(
            f"strict load: `mapping` leaves the eqxconv layers at {missing} "
            "unfilled (pass strict=False to keep their current parameters)."
        )
    return pairs


def load_torch_state_dict(
    model: Any,
    state_dict: Mapping[str, Any],
    mapping: Mapping[str, str | Callable[[Any], Any]] | None = None,
    *,
    strict: bool = True,
) -> Any:
    """Fill the convolution layers of an Equinox model from a PyTorch `state_dict`.

    Every [`eqxconv.Conv`][] and `eqxconv.ConvTranspose` inside `model` (found
    by tree traversal, through any nesting of modules, lists, tuples and dicts; or
    `model` itself, when it is one layer) is a target. Each is paired with a torch
    module prefix, and takes its weight from `state_dict[prefix + '.weight']`
    (converted from PyTorch's `(in, out // groups, *k)` layout for a
    `ConvTranspose`) and its bias from `state_dict[prefix + '.bias']`, cast to the
    layer's dtype; the empty prefix `''` stands for the keys `'weight'` and `'bias'`
    of a single torch layer's own `state_dict`. Shapes are checked against the layer,
    and a mismatch is reported with the offending key. Only arrays are loaded: the
    configuration (stride, padding, ...) is the model's, as a `state_dict` does not
    hold it. Other entries (linear layers, normalisation, ...) are left for you,
    e.g. with `eqx.tree_at`.

    With `mapping=None`, the targets are paired in tree-traversal order (the order
    of the fields, as declared) with the `state_dict`'s convolution-like entries
    (a `weight` of 3 to 5 dimensions) in its order, which is the order the torch
    modules were registered in; the two counts must agree. This suits models
    written in the same order in both libraries; for anything else give `mapping`.

    A design note: a `mapping` from torch prefixes to layers keeps the loader
    independent of the model's structure (any Equinox model, any nesting) and of
    torch itself (a `state_dict` of numpy arrays, say from safetensors, works
    without PyTorch), while the shape checks catch a wrong pairing at once.

    **Arguments:**

    - `model`: any PyTree (usually an `equinox.Module`) holding eqxconv layers, or
        one eqxconv layer.
    - `state_dict`: a mapping from keys to torch tensors or arrays, as
        `torch_module.state_dict()` returns.
    - `mapping`: `None` (pair in order, see above), or a mapping from a torch
        module prefix (e.g. `'features.3'`) to the eqxconv layer it fills, given
        either as a function `model -> layer` (as for `eqx.tree_at`, e.g.
        `lambda m: m.layers[3]`) or as the layer's path as
        `jax.tree_util.keystr` writes it (e.g. `'.layers[3]'`).
    - `strict`: with `mapping`, whether every eqxconv layer in `model` must be
        filled. (With `mapping=None` every layer always is.)

    **Returns:**

    A copy of `model` with the parameters replaced.

    **Raises:**

    `KeyError` for a missing key; `ValueError` for a shape mismatch (naming the key,
    the shape found and the shape expected), a bias in the `state_dict` for a layer
    without one, a `mapping` entry that names no eqxconv layer of `model`, a
    `strict` load that leaves a layer unfilled, or (with `mapping=None`) counts of
    layers and entries that differ.
    """
    layers = _find_layers(model)
    if mapping is None:
        pairs = _pairs_in_order(layers, state_dict)
    else:
        pairs = _pairs_by_mapping(model, layers, mapping, strict)
    new_layers = {
        path: _load_layer(layers[path], path, prefix, state_dict)
        for path, prefix in pairs.items()
    }

    def replace(path: Any, node: Any) -> Any:
        if _is_target(node):
            return new_layers.get(jax.tree_util.keystr(path), node)
        return node

    return jax.tree_util.tree_map_with_path(replace, model, is_leaf=_is_target)
