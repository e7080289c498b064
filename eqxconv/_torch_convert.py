"""PyTorch interop, one module at a time: [`eqxconv.from_torch`][] and
[`eqxconv.to_torch`][].

`torch` is an optional dependency: it is imported inside the functions that need it,
never when `eqxconv` is imported.
"""

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._conv import Conv, Conv1d, Conv2d, Conv3d
from ._conv_local import ConvLocal
from ._conv_transpose import (
    ConvTranspose,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)
from ._geometry import (
    dilated_shape,
    Padding,
    PaddingPairs,
    resolve_padding,
    transposed_geometry,
)
from ._init import Initializer
from ._layer import apply_mask
from ._patches import ExtractPatches, FoldPatches


EqxconvModule: TypeAlias = Conv | ConvTranspose | ExtractPatches | FoldPatches
"""What [`eqxconv.from_torch`][] returns."""

_CONV = {1: Conv1d, 2: Conv2d, 3: Conv3d}
_CONV_TRANSPOSE = {1: ConvTranspose1d, 2: ConvTranspose2d, 3: ConvTranspose3d}
# Configuration that torch convolutions and eqxconv layers name and mean alike.
_SHARED_ARGUMENTS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "dilation",
    "groups",
)

# The torch padding module of each mode, by name without the `Nd`.
_PAD_MODULES = {
    "ZEROS": "ZeroPad",
    "REFLECT": "ReflectionPad",
    "REPLICATE": "ReplicationPad",
    "CIRCULAR": "CircularPad",
}
# On import, zero padding is recognised by ConstantPadNd, ZeroPadNd's base, so that
# a hand-written ConstantPadNd(p, 0) converts too.
_PAD_MODULES_READ = {**_PAD_MODULES, "ZEROS": "ConstantPad"}


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "eqxconv's PyTorch interop (`from_torch`, `to_torch`) needs PyTorch, "
            "which is not installed: install it with `pip install torch` (eqxconv "
            "itself does not depend on it)."
        ) from error
    return torch


# ----------------------------------------------------------------------------------
# Arrays
# ----------------------------------------------------------------------------------


def to_numpy(value: Any, name: str) -> np.ndarray:
    """A torch tensor (or anything array-like) as a numpy array, without importing
    torch, so that a state dict of numpy arrays needs no torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            # numpy has no bfloat16 of its own; float32 holds every bfloat16 exactly.
            return value.float().numpy().astype(jnp.bfloat16)
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as error:
        raise TypeError(
            f"{name} must be a torch tensor or an array, got {type(value).__name__}."
        ) from error


def transpose_weight_layout(weight: np.ndarray, groups: int) -> np.ndarray:
    """Between PyTorch's transposed-convolution weight `(in, out // groups, *k)` and
    eqxconv's `(out, in // groups, *k)`, either way: the map (swap the two channel
    axes within each group, flip the spatial axes) is its own inverse."""
    first, second, *kernel = weight.shape
    w = weight.reshape(groups, first // groups, second, *kernel)
    w = w.swapaxes(1, 2).reshape(groups * second, first // groups, *kernel)
    return np.ascontiguousarray(np.flip(w, axis=tuple(range(2, w.ndim))))


def to_jax(array: np.ndarray, dtype: Any, shape: Sequence[int] | None = None) -> Any:
    """`array` cast (and reshaped) on the host, then transferred: `jnp.asarray`
    would compile a copy for every new shape, which dominates loading a model."""
    array = array.astype(dtype)
    return jax.device_put(array if shape is None else array.reshape(shape))


def _check_x64(array: np.ndarray, name: str) -> None:
    wide = array.dtype in (np.dtype(np.float64), np.dtype(np.complex128))
    if wide and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            f"{name} is {array.dtype}, but JAX's 64-bit mode is off, so it would "
            "be silently truncated: turn it on with "
            "`jax.config.update('jax_enable_x64', True)`, or convert the torch "
            "module to float32 first (`module.float()`)."
        )


def _to_torch_tensor(torch: Any, array: Any) -> Any:
    host = np.array(array)  # a writable copy, as torch.from_numpy wants
    if host.dtype == jnp.bfloat16:
        return torch.from_numpy(host.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(host)


def _torch_dtype(torch: Any, array: Any) -> Any:
    if array.dtype == jnp.bfloat16:
        return torch.bfloat16
    return torch.from_numpy(np.zeros((), array.dtype)).dtype


# ----------------------------------------------------------------------------------
# from_torch
# ----------------------------------------------------------------------------------

# A converter takes the torch module, its number of spatial dimensions, and what
# the padding module beside it in a to_torch Sequential contributes: the (mode,
# pairs) of a pad before it, or the pairs that a crop after it removes; None alone.
Converter: TypeAlias = Callable[[Any, int, Any], EqxconvModule]
Dispatch: TypeAlias = dict[type, tuple[Converter, int]]


def _converters(torch: Any) -> tuple[Dispatch, Dispatch]:
    """from_torch's dispatch, torch class -> (converter, spatial dimensions), in two
    tables: the families a padding module may precede, and those a crop may follow."""
    padded: Dispatch = {torch.nn.Unfold: (_from_unfold, 2)}
    cropped: Dispatch = {torch.nn.Fold: (_from_fold, 2)}
    for n in (1, 2, 3):
        padded[getattr(torch.nn, f"Conv{n}d")] = (_from_conv, n)
        cropped[getattr(torch.nn, f"ConvTranspose{n}d")] = (_from_conv_transpose, n)
    return padded, cropped


def _pad_classes(torch: Any) -> dict[type, tuple[str, int]]:
    """Torch padding class -> (eqxconv padding mode, spatial dimensions)."""
    return {
        getattr(torch.nn, f"{prefix}{n}d"): (mode, n)
        for mode, prefix in _PAD_MODULES_READ.items()
        for n in (1, 2, 3)
    }


def _lookup(table: dict[type, Any], module: Any) -> Any:
    """`table`'s entry for `module`'s class or its nearest base class (so that torch
    subclasses, lazy modules say, convert too); `None` if there is none."""
    return next((table[c] for c in type(module).__mro__ if c in table), None)


def from_torch(module: Any) -> EqxconvModule:
    """Convert a PyTorch convolution or patch module to the equivalent eqxconv one.

    The result computes what `module` computes, on unbatched channels-first inputs
    (`module(x[None])[0] == result(x)` up to floating-point rounding), with the same
    weights and bias, exactly (in the same dtype).

    | PyTorch | eqxconv |
    |---|---|
    | `torch.nn.Conv1d/2d/3d` | [`eqxconv.Conv1d`][]/`Conv2d`/`Conv3d` |
    | `torch.nn.ConvTranspose1d/2d/3d` | `eqxconv.ConvTranspose1d/2d/3d` |
    | `torch.nn.Unfold` | `eqxconv.ExtractPatches` (2 spatial dimensions) |
    | `torch.nn.Fold` | `eqxconv.FoldPatches` (2 spatial dimensions) |
    | `Sequential(pad, conv)` | `eqxconv.Conv1d/2d/3d` |
    | `Sequential(pad, unfold)` | `eqxconv.ExtractPatches` |
    | `Sequential(conv, crop)` | `eqxconv.ConvTranspose1d/2d/3d` |
    | `Sequential(fold, crop)` | `eqxconv.FoldPatches` |

    Every `padding` PyTorch allows (ints, tuples, `'same'`, `'valid'`), every
    `padding_mode`, `dilation`, `groups`, `output_padding` and `bias=False` carry
    over. `'same'` becomes `'SAME'` and `'valid'` `'VALID'` (PyTorch allows `'same'`
    only at stride 1, where the two agree, odd extra padding at the end included).
    A transposed weight is converted from PyTorch's `(in, out // groups, *k)` layout
    to eqxconv's `(out, in // groups, *k)`: channel axes swapped within each group,
    spatial axes flipped. `torch.nn.Unfold` returns patches with the spatial axes
    flattened, `(C * prod(k), L)`; `ExtractPatches` keeps them,
    `(C * prod(k), *grid)`, in the same order, so `out.reshape(out.shape[0], -1)`
    is PyTorch's. Likewise `FoldPatches` takes PyTorch's `(C * prod(k), L)` reshaped
    to `(C * prod(k), *layer.in_spatial_shape)`.

    The two-module `torch.nn.Sequential`s that [`eqxconv.to_torch`][] returns for
    layers no single torch module expresses convert back too, so every layer round
    trips: an explicit padding module (`ZeroPadNd`/`ConstantPadNd` with value 0,
    `ReflectionPadNd`, `ReplicationPadNd`, `CircularPadNd`) followed by a
    convolution or `Unfold` becomes one layer with that padding (added to the
    convolution's own zero padding, if any); a transposed convolution or `Fold`
    followed by a `ZeroPadNd` with non-positive padding (a crop) becomes one layer
    whose padding includes the crop.

    **Arguments:**

    - `module`: a `torch.nn.Conv1d`, `Conv2d`, `Conv3d`, `ConvTranspose1d`,
        `ConvTranspose2d`, `ConvTranspose3d`, `Unfold` or `Fold` (or a subclass), or
        a `torch.nn.Sequential` as above. float64 weights need JAX's 64-bit mode
        (`jax_enable_x64`); bfloat16 ones are kept exactly.

    **Returns:**

    The eqxconv module, of the fixed-dimension class (`eqxconv.Conv2d` for a
    `torch.nn.Conv2d`, and so on).

    **Raises:**

    `ImportError` if PyTorch is not installed; `TypeError` for any other module;
    `ValueError` for a configuration PyTorch accepts at construction but cannot run
    (a string `padding` on a transposed convolution), float64 weights without
    `jax_enable_x64`, or a padding module and a convolution whose paddings do not
    combine into one (say reflect padding before a convolution that also pads).
    """
    torch = _import_torch()
    if isinstance(module, torch.nn.Sequential):
        return _from_sequential(torch, module)
    padded, cropped = _converters(torch)
    found = _lookup(padded, module) or _lookup(cropped, module)
    if found is None:
        raise TypeError(
            "from_torch converts torch.nn.Conv1d/2d/3d, ConvTranspose1d/2d/3d, "
            "Unfold and Fold (and the torch.nn.Sequential that to_torch returns); "
            f"got {type(module).__module__}.{type(module).__qualname__}."
        )
    convert, n = found
    return convert(module, n, None)


def _from_sequential(torch: Any, module: Any) -> EqxconvModule:
    """The two-module `torch.nn.Sequential`s that `to_torch` returns: padding then a
    convolution or `Unfold`, or a transposed convolution or `Fold` then a crop."""
    padded, cropped = _converters(torch)
    children = list(module.children())
    if len(children) == 2:
        first, second = children
        pad, found = _pad_info(torch, first), _lookup(padded, second)
        if pad is not None and found is not None:
            convert, n = found
            return convert(second, n, pad)
        crop, found = _pad_info(torch, second), _lookup(cropped, first)
        if crop is not None and found is not None and crop[0] == "ZEROS":
            convert, n = found
            if all(p <= 0 for pair in crop[1] for p in pair):
                return convert(first, n, tuple((-lo, -hi) for lo, hi in crop[1]))
    raise TypeError(
        "from_torch converts a torch.nn.Sequential only of the forms to_torch "
        "returns: a padding module then a Conv1d/2d/3d or Unfold, or a "
        "ConvTranspose1d/2d/3d or Fold then a ZeroPad1d/2d/3d cropping (negative "
        f"padding); got {module!r}."
    )


def _pad_info(torch: Any, module: Any) -> tuple[str, PaddingPairs] | None:
    """The mode and `(low, high)` pairs (first spatial axis first) of a torch padding
    module; `None` for anything else (a non-zero constant included)."""
    found = _lookup(_pad_classes(torch), module)
    if found is None or (found[0] == "ZEROS" and module.value != 0):
        return None
    mode, n = found
    flat = tuple(module.padding)  # last spatial axis first
    return mode, tuple((flat[2 * i], flat[2 * i + 1]) for i in range(n))[::-1]


def _symmetric_pairs(padding: int | Sequence[int], n: int) -> PaddingPairs:
    per_axis = (padding,) * n if isinstance(padding, int) else tuple(padding)
    return tuple((p, p) for p in per_axis)


def _pairs_plus(a: PaddingPairs, b: PaddingPairs) -> PaddingPairs:
    return tuple((la + lb, ha + hb) for (la, ha), (lb, hb) in zip(a, b, strict=True))


def _merge_pad(
    module: Any, n: int, pad: tuple[str, PaddingPairs]
) -> tuple[str, PaddingPairs]:
    """The single padding (mode, pairs) of `pad` followed by `module`'s own."""
    mode, pairs = pad
    own_mode = getattr(module, "padding_mode", "zeros")
    name = type(module).__name__
    if module.padding == "same" or len(pairs) != n:
        raise ValueError(
            f"from_torch cannot merge a {len(pairs)}-d padding module with a {name} "
            f"with padding={module.padding!r}."
        )
    if any(p < 0 for pair in pairs for p in pair):
        raise ValueError(
            f"from_torch cannot convert a padding module that crops ({pairs}) "
            f"before a {name}."
        )
    if module.padding == "valid":
        return mode, pairs
    own = _symmetric_pairs(module.padding, n)
    if all(p == (0, 0) for p in own):
        return mode, pairs
    if mode == "ZEROS" and own_mode == "zeros":
        return mode, _pairs_plus(pairs, own)
    raise ValueError(
        f"from_torch cannot merge {mode.lower()} padding {pairs} with the {name}'s "
        f"own {own_mode} padding {module.padding!r} into one padding."
    )


def _constant(value: np.ndarray, dtype: Any) -> Initializer:
    return lambda key, shape, _: to_jax(value, dtype, shape)


def _layer_arguments(module: Any, weight: np.ndarray) -> dict[str, Any]:
    """The constructor arguments a torch convolution and its eqxconv layer share,
    with initialisers that return the torch module's parameters exactly."""
    name = type(module).__name__
    _check_x64(weight, f"The {name}'s weight")
    arguments = dict(
        {field: getattr(module, field) for field in _SHARED_ARGUMENTS},
        use_bias=module.bias is not None,
        dtype=weight.dtype,
        key=jr.key(0),  # unused: the initialisers ignore it
        kernel_init=_constant(weight, weight.dtype),
    )
    if module.bias is not None:
        bias = to_numpy(module.bias, f"{name}.bias")
        arguments["bias_init"] = _constant(bias, weight.dtype)
    return arguments


def _from_conv(module: Any, n: int, pad: tuple[str, PaddingPairs] | None) -> Conv:
    if pad is not None:
        mode, padding = _merge_pad(module, n, pad)
    elif isinstance(module.padding, str):
        mode, padding = module.padding_mode, module.padding.upper()
    else:
        mode, padding = module.padding_mode, tuple(module.padding)
    weight = to_numpy(module.weight, f"{type(module).__name__}.weight")
    return _CONV[n](
        padding=padding, padding_mode=mode, **_layer_arguments(module, weight)
    )


def _from_conv_transpose(
    module: Any, n: int, crop: PaddingPairs | None
) -> ConvTranspose:
    name = type(module).__name__
    # torch splits a string padding into characters, ('s', 'a', 'm', 'e').
    if any(isinstance(p, str) for p in module.padding):
        raise ValueError(
            f"The {name} has padding={''.join(module.padding)!r}: PyTorch's "
            "transposed convolutions accept only integer padding (a string fails "
            "when the module is called), so there is nothing to convert. Use "
            "integer `padding` and `output_padding`, or build an "
            "eqxconv.ConvTranspose with padding='SAME' directly."
        )
    if module.padding_mode != "zeros":
        raise ValueError(
            f"The {name} has padding_mode={module.padding_mode!r}; PyTorch only "
            "runs transposed convolutions with padding_mode='zeros'."
        )
    pairs = _symmetric_pairs(module.padding, n)
    if crop is not None:
        pairs = _pairs_plus(pairs, crop)
    weight = to_numpy(module.weight, f"{name}.weight")
    return _CONV_TRANSPOSE[n](
        padding=pairs,
        output_padding=tuple(module.output_padding),
        **_layer_arguments(module, transpose_weight_layout(weight, module.groups)),
    )


def _from_unfold(
    module: Any, n: int, pad: tuple[str, PaddingPairs] | None
) -> ExtractPatches:
    if pad is None:
        mode, padding = "ZEROS", module.padding
    else:
        mode, padding = _merge_pad(module, n, pad)
    return ExtractPatches(
        n,
        module.kernel_size,
        stride=module.stride,
        padding=padding,
        dilation=module.dilation,
        padding_mode=mode,
    )


def _from_fold(module: Any, n: int, crop: PaddingPairs | None) -> FoldPatches:
    size = module.output_size
    output_size = (size,) * n if isinstance(size, int) else tuple(size)
    padding = module.padding
    if crop is not None:
        padding = _pairs_plus(_symmetric_pairs(padding, n), crop)
        output_size = tuple(
            s - lo - hi for s, (lo, hi) in zip(output_size, crop, strict=True)
        )
    return FoldPatches(
        n,
        output_size,
        module.kernel_size,
        stride=module.stride,
        padding=padding,
        dilation=module.dilation,
    )


# ----------------------------------------------------------------------------------
# to_torch
# ----------------------------------------------------------------------------------


def to_torch(
    layer: Any,
    *,
    in_spatial_shape: Sequence[int] | None = None,
    apply_mask: bool = False,
) -> Any:
    """Convert an eqxconv module to an equivalent PyTorch module.

    The result computes what `layer` computes, on batched or unbatched channels-first
    inputs (`result(x[None])[0] == layer(x)` up to floating-point rounding), with the
    same weights and bias, exactly, in the same dtype.

    | eqxconv | PyTorch |
    |---|---|
    | [`eqxconv.Conv`][] | `torch.nn.Conv1d/2d/3d` |
    | `eqxconv.ConvTranspose` | `torch.nn.ConvTranspose1d/2d/3d` |
    | `eqxconv.ExtractPatches` (2 spatial dimensions) | `torch.nn.Unfold` |
    | `eqxconv.FoldPatches` (2 spatial dimensions) | `torch.nn.Fold` |

    A single torch module is returned wherever one can express the layer: symmetric
    padding, `'VALID'` (as `padding='valid'`), `'SAME'` at stride 1 (as
    `padding='same'`), and any padding string whose explicit padding is symmetric.
    Otherwise (asymmetric pairs, `'SAME_LOWER'` or `'CAUSAL'` with an odd total,
    `'SAME'` with an odd total at a stride above 1, or a padded `ExtractPatches`
    with a non-zero `padding_mode`) the result is an exact
    `torch.nn.Sequential` with named children: `pad` (an explicit `ZeroPadNd`,
    `ReflectionPadNd`, `ReplicationPadNd` or `CircularPadNd`) then `conv` (or
    `unfold`) with `padding=0`; for `ConvTranspose` and `FoldPatches`, `conv`
    (or `fold`) then `crop`, a `ZeroPadNd` with negative padding that crops the
    asymmetric remainder. The weights are then at `conv.weight` in the
    `state_dict`.

    `'SAME'`/`'SAME_LOWER'` padding at a stride above 1 pads according to the
    input's size modulo the stride, which no torch module does: pass
    `in_spatial_shape=` to export a module exact for inputs of that spatial shape.
    (A transposed convolution's padding never depends on its input's size, so
    there `in_spatial_shape` is not needed.) `precision` and
    `preferred_element_type` have no torch equivalent and are dropped.

    **Arguments:**

    - `layer`: a [`eqxconv.Conv`][], `eqxconv.ConvTranspose`,
        `eqxconv.ExtractPatches` or `eqxconv.FoldPatches` (subclasses
        such as `Conv2d` included), with at most 3 spatial dimensions (2 for the
        patch modules).
    - `in_spatial_shape`: the input's spatial shape; needed only where the layer's
        explicit padding depends on it (see above).
    - `apply_mask`: whether to export a layer with a `mask` by multiplying the mask
        into the exported weight. The outputs are then the same, but the torch
        module no longer masks: training it would update the masked-out entries.
        Off by default, when a `mask` is refused with a `ValueError`.

    **Returns:**

    A `torch.nn.Module`: a single `torch.nn.ConvNd`, `ConvTransposeNd`, `Unfold` or
    `Fold`, or a `torch.nn.Sequential` as described above.

    **Raises:**

    `ImportError` if PyTorch is not installed; `TypeError` for a module that is not
    one of the above; `ValueError` naming what torch cannot express: a
    `eqxconv.ConvLocal` (unshared weights), a `ConvTranspose` with a non-zero
    `padding_mode`, a `mask` without `apply_mask=True`, more than 3 spatial
    dimensions, patch modules that are not 2-dimensional, or an input-dependent
    padding without `in_spatial_shape`.
    """
    if isinstance(layer, ConvLocal):
        raise ValueError(
            f"The {type(layer).__name__} cannot be converted: it has a separate "
            "kernel at every output position (unshared weights), and torch has no "
            "locally connected convolution module."
        )
    if not isinstance(layer, Conv | ConvTranspose | ExtractPatches | FoldPatches):
        raise TypeError(
            "to_torch converts eqxconv.Conv, ConvTranspose, ExtractPatches and "
            f"FoldPatches; got {type(layer).__module__}.{type(layer).__qualname__}."
        )
    torch = _import_torch()
    n = layer.num_spatial_dims
    shape = _check_in_spatial_shape(in_spatial_shape, n)
    if isinstance(layer, ExtractPatches):
        return _extract_patches_to_torch(torch, layer, shape)
    if isinstance(layer, FoldPatches):
        return _fold_patches_to_torch(torch, layer)
    if n > 3:
        kind = "ConvTranspose" if isinstance(layer, ConvTranspose) else "Conv"
        raise ValueError(
            f"The {type(layer).__name__} has num_spatial_dims={n}; torch has no "
            f"{kind}{n}d (only 1, 2 and 3 spatial dimensions)."
        )
    weight = _export_weight(layer, multiply_mask=apply_mask)
    if isinstance(layer, ConvTranspose):
        return _conv_transpose_to_torch(torch, layer, weight)
    return _conv_to_torch(torch, layer, weight, shape)


def _check_in_spatial_shape(
    in_spatial_shape: Sequence[int] | None, n: int
) -> tuple[int, ...] | None:
    if in_spatial_shape is None:
        return None
    shape = tuple(int(s) for s in in_spatial_shape)
    if len(shape) != n or any(s < 1 for s in shape):
        raise ValueError(
            f"`in_spatial_shape` must be {n} positive ints (the input's spatial "
            f"shape), got {in_spatial_shape!r}."
        )
    return shape


def _explicit_pairs(
    layer: Conv | ExtractPatches, in_spatial_shape: tuple[int, ...] | None
) -> PaddingPairs:
    """`layer.padding` as `(low, high)` pairs, which must not depend on the input's
    shape unless `in_spatial_shape` fixes it."""
    padding: Padding = layer.padding
    stride, kernel_size, dilation = layer.stride, layer.kernel_size, layer.dilation
    if (
        in_spatial_shape is None
        and padding in ("SAME", "SAME_LOWER")
        and any(s > 1 for s in stride)
    ):
        raise ValueError(
            f"The {type(layer).__name__} has padding={padding!r} with "
            f"stride={stride}: its explicit padding depends on the input's spatial "
            "shape (modulo the stride), which no torch module can express. Pass "
            "`in_spatial_shape=` (the input's spatial shape) to export a torch "
            "module exact for inputs of that shape."
        )
    if in_spatial_shape is None:
        # Any shape will do, as the padding does not depend on it.
        in_spatial_shape = dilated_shape(kernel_size, dilation)
    return resolve_padding(padding, in_spatial_shape, kernel_size, stride, dilation)


def _pad_module(torch: Any, mode: str, pairs: Sequence[tuple[int, int]]) -> Any:
    """An explicit torch padding module padding the trailing `len(pairs)` axes by
    `(low, high)` pairs (negative entries crop, for zero padding)."""
    flat = tuple(p for pair in reversed(pairs) for p in pair)  # last axis first
    return getattr(torch.nn, f"{_PAD_MODULES[mode]}{len(pairs)}d")(flat)


def _is_symmetric(pairs: PaddingPairs) -> bool:
    return all(low == high for low, high in pairs)


def _export_weight(layer: Conv | ConvTranspose, multiply_mask: bool) -> Any:
    if layer.mask is not None and not multiply_mask:
        raise ValueError(
            f"The {type(layer).__name__} has a `mask`, which torch cannot express: a "
            "torch convolution has no mask multiplied into its weight at every call. "
            "Pass `apply_mask=True` to export `weight * mask` (the same outputs, but "
            "training the torch module would update the masked-out entries)."
        )
    return apply_mask(layer.weight, layer.mask)


def _torch_arguments(torch: Any, layer: Conv | ConvTranspose, weight: Any) -> dict:
    """The constructor arguments an eqxconv layer and its torch module share."""
    return dict(
        {field: getattr(layer, field) for field in _SHARED_ARGUMENTS},
        bias=layer.bias is not None,
        dtype=_torch_dtype(torch, weight),
    )


def _fill(torch: Any, module: Any, weight: Any, bias: Any) -> Any:
    with torch.no_grad():
        module.weight.copy_(_to_torch_tensor(torch, weight))
        if bias is not None:
            module.bias.copy_(_to_torch_tensor(torch, jnp.reshape(bias, (-1,))))
    return module


def _conv_to_torch(
    torch: Any, layer: Conv, weight: Any, in_spatial_shape: tuple[int, ...] | None
) -> Any:
    pad = None
    mode = layer.padding_mode.lower()
    if layer.padding == "VALID":
        torch_padding: Any = "valid"
    elif layer.padding == "SAME" and all(s == 1 for s in layer.stride):
        torch_padding = "same"
    else:
        pairs = _explicit_pairs(layer, in_spatial_shape)
        torch_padding = tuple(low for low, _ in pairs)
        if not _is_symmetric(pairs):
            torch_padding, mode = 0, "zeros"
            pad = _pad_module(torch, layer.padding_mode, pairs)
    conv_class = getattr(torch.nn, f"Conv{layer.num_spatial_dims}d")
    conv = conv_class(
        padding=torch_padding,
        padding_mode=mode,
        **_torch_arguments(torch, layer, weight),
    )
    _fill(torch, conv, weight, layer.bias)
    if pad is None:
        return conv
    return torch.nn.Sequential(OrderedDict(pad=pad, conv=conv))


def _transpose_padding(layer: ConvTranspose) -> tuple[PaddingPairs, tuple[int, ...]]:
    """A transposed convolution's explicit padding pairs and torch output padding.

    Neither depends on the input's size (for 'SAME', low + high = max(extent -
    stride + output_padding, 0)), but the geometry is computed for one: take an
    input size whose output is never empty, 1 for a padding string (the output is
    then at least 1 + output_padding) and 1 + low + high for explicit pairs.
    """
    if isinstance(layer.padding, str):
        size = (1,) * layer.num_spatial_dims
    else:
        size = tuple(1 + low + high for low, high in layer.padding)
    _, pairs, extra = transposed_geometry(
        size,
        layer.padding,
        layer.kernel_size,
        layer.stride,
        layer.dilation,
        layer.output_padding,
    )
    return pairs, extra


def _conv_transpose_to_torch(torch: Any, layer: ConvTranspose, weight: Any) -> Any:
    if layer.padding_mode != "ZEROS":
        raise ValueError(
            f"The {type(layer).__name__} has padding_mode={layer.padding_mode!r}: it "
            f"is the adjoint of a {layer.padding_mode.lower()}-padded convolution, "
            "which torch cannot express (torch.nn.ConvTranspose supports only "
            "padding_mode='zeros' and has no module folding a padded border back)."
        )
    pairs, extra = _transpose_padding(layer)
    # torch pads both sides alike: the smaller side, the rest cropped afterwards.
    common = tuple(min(low, high) for low, high in pairs)
    conv_class = getattr(torch.nn, f"ConvTranspose{layer.num_spatial_dims}d")
    conv = conv_class(
        padding=common, output_padding=extra, **_torch_arguments(torch, layer, weight)
    )
    torch_weight = transpose_weight_layout(np.asarray(weight), layer.groups)
    _fill(torch, conv, torch_weight, layer.bias)
    if _is_symmetric(pairs):
        return conv
    crop = tuple((c - lo, c - hi) for (lo, hi), c in zip(pairs, common, strict=True))
    return torch.nn.Sequential(
        OrderedDict(conv=conv, crop=_pad_module(torch, "ZEROS", crop))
    )


def _check_two_dims(layer: ExtractPatches | FoldPatches, torch_name: str) -> None:
    if layer.num_spatial_dims != 2:
        raise ValueError(
            f"The {type(layer).__name__} has "
            f"num_spatial_dims={layer.num_spatial_dims}; torch.nn.{torch_name} only "
            "supports 2 spatial dimensions."
        )


def _extract_patches_to_torch(
    torch: Any, layer: ExtractPatches, in_spatial_shape: tuple[int, ...] | None
) -> Any:
    _check_two_dims(layer, "Unfold")
    if any(r != 1 for r in layer.input_dilation):
        raise ValueError(
            f"The ExtractPatches has input_dilation={layer.input_dilation}; "
            "torch.nn.Unfold has no input dilation, so only input_dilation=1 converts."
        )
    pairs = _explicit_pairs(layer, in_spatial_shape)
    common = dict(
        kernel_size=layer.kernel_size, dilation=layer.dilation, stride=layer.stride
    )
    if _is_symmetric(pairs) and layer.padding_mode == "ZEROS":
        return torch.nn.Unfold(padding=tuple(low for low, _ in pairs), **common)
    return torch.nn.Sequential(
        OrderedDict(
            pad=_pad_module(torch, layer.padding_mode, pairs),
            unfold=torch.nn.Unfold(padding=0, **common),
        )
    )


def _fold_patches_to_torch(torch: Any, layer: FoldPatches) -> Any:
    _check_two_dims(layer, "Fold")
    size = layer.output_size
    pairs = resolve_padding(
        layer.padding, size, layer.kernel_size, layer.stride, layer.dilation
    )
    common = dict(
        kernel_size=layer.kernel_size, dilation=layer.dilation, stride=layer.stride
    )
    if _is_symmetric(pairs):
        return torch.nn.Fold(size, padding=tuple(low for low, _ in pairs), **common)
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(size, pairs, strict=True))
    return torch.nn.Sequential(
        OrderedDict(
            fold=torch.nn.Fold(padded, padding=0, **common),
            crop=_pad_module(torch, "ZEROS", [(-lo, -hi) for lo, hi in pairs]),
        )
    )
