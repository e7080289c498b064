"""PyTorch interop: [`eqxconv.from_torch`][], [`eqxconv.to_torch`][] and
[`eqxconv.load_torch_state_dict`][].

`torch` is an optional dependency: it is imported inside the functions that need it,
never when `eqxconv` is imported. [`eqxconv.load_torch_state_dict`][] does not need
torch at all when the state dict holds numpy arrays.
"""

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._conv import Conv
from ._conv_local import ConvLocal
from ._conv_transpose import ConvTranspose
from ._padding import (
    conv_transpose_geometry,
    dilated_size,
    Padding,
    PaddingPairs,
    resolve_padding,
)
from ._patches import ExtractPatches, FoldPatches


EqxconvModule: TypeAlias = Conv | ConvTranspose | ExtractPatches | FoldPatches
"""What [`eqxconv.from_torch`][] returns."""

_TORCH_MODES = {
    "ZEROS": "zeros",
    "REFLECT": "reflect",
    "REPLICATE": "replicate",
    "CIRCULAR": "circular",
}
_PAD_MODULES = {
    "ZEROS": "ZeroPad",
    "REFLECT": "ReflectionPad",
    "REPLICATE": "ReplicationPad",
    "CIRCULAR": "CircularPad",
}


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


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """A torch tensor (or anything array-like) as a numpy array, without importing
    torch: bfloat16 tensors, which numpy cannot hold, go through float32 exactly."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            return value.float().numpy().astype(jnp.bfloat16)
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as error:
        raise TypeError(
            f"{name} must be a torch tensor or an array, got {type(value).__name__}."
        ) from error


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
    array = jnp.asarray(array)
    if array.dtype == jnp.bfloat16:
        host = np.asarray(array.astype(jnp.float32))
        return torch.from_numpy(np.array(host)).to(torch.bfloat16)
    return torch.from_numpy(np.array(array))


def _torch_dtype(torch: Any, array: Any) -> Any:
    if jnp.asarray(array).dtype == jnp.bfloat16:
        return torch.bfloat16
    return torch.from_numpy(np.zeros((), np.asarray(array).dtype)).dtype


def torch_transpose_weight_to_eqxconv(weight: np.ndarray, groups: int) -> np.ndarray:
    """PyTorch's transposed-conv weight `(in, out // groups, *k)` as eqxconv's
    `(out, in // groups, *k)`: the two channel axes swapped within each group and the
    spatial axes flipped."""
    in_channels, out_per_group, *kernel = weight.shape
    w = weight.reshape(groups, in_channels // groups, out_per_group, *kernel)
    w = w.swapaxes(1, 2).reshape(groups * out_per_group, in_channels // groups, *kernel)
    return np.ascontiguousarray(np.flip(w, axis=tuple(range(2, w.ndim))))


def eqxconv_transpose_weight_to_torch(weight: np.ndarray, groups: int) -> np.ndarray:
    """The inverse of `torch_transpose_weight_to_eqxconv`."""
    out_channels, in_per_group, *kernel = weight.shape
    w = weight.reshape(groups, out_channels // groups, in_per_group, *kernel)
    w = w.swapaxes(1, 2).reshape(groups * in_per_group, out_channels // groups, *kernel)
    return np.ascontiguousarray(np.flip(w, axis=tuple(range(2, w.ndim))))


# ----------------------------------------------------------------------------------
# from_torch
# ----------------------------------------------------------------------------------


def _num_spatial_dims(torch: Any, module: Any, prefix: str) -> int | None:
    for n in (1, 2, 3):
        if isinstance(module, getattr(torch.nn, f"{prefix}{n}d")):
            return n
    return None


def _parameters(
    module: Any, weight: np.ndarray, n: int
) -> tuple[Any, Callable, Callable | None, bool]:
    """dtype, kernel_init and bias_init reproducing a torch module's parameters."""
    name = type(module).__name__
    _check_x64(weight, f"The {name}'s weight")
    dtype = weight.dtype
    bias = None if module.bias is None else _to_numpy(module.bias, f"{name}.bias")

    def kernel_init(key, shape, dtype):
        del key, dtype
        return jnp.asarray(weight).reshape(shape)

    if bias is None:
        return dtype, kernel_init, None, False

    def bias_init(key, shape, dtype):
        del key, dtype
        return jnp.asarray(bias).astype(weight.dtype).reshape(shape)

    return dtype, kernel_init, bias_init, True


def from_torch(module: Any) -> EqxconvModule:
    """Convert a PyTorch convolution or patch module to the equivalent eqxconv one.

    The result computes what `module` computes, on unbatched channels-first inputs
    (`module(x[None])[0] == result(x)` up to floating-point rounding), with the same
    weights and bias, exactly (in the same dtype).

    | PyTorch | eqxconv |
    |---|---|
    | `torch.nn.Conv1d/2d/3d` | [`eqxconv.Conv`][] |
    | `torch.nn.ConvTranspose1d/2d/3d` | `eqxconv.ConvTranspose` |
    | `torch.nn.Unfold` | `eqxconv.ExtractPatches` (2 spatial dimensions) |
    | `torch.nn.Fold` | `eqxconv.FoldPatches` (2 spatial dimensions) |
    | `Sequential(pad, conv)` | `eqxconv.Conv` |
    | `Sequential(pad, unfold)` | `eqxconv.ExtractPatches` |
    | `Sequential(conv, crop)` | `eqxconv.ConvTranspose` |
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
        `ConvTranspose2d`, `ConvTranspose3d`, `Unfold` or `Fold`, or a
        `torch.nn.Sequential` as above. float64 weights need JAX's 64-bit mode
        (`jax_enable_x64`); bfloat16 ones are kept exactly.

    **Returns:**

    The eqxconv module.

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
    result = _from_single(torch, module)
    if result is None:
        raise TypeError(
            "from_torch converts torch.nn.Conv1d/2d/3d, ConvTranspose1d/2d/3d, "
            "Unfold and Fold (and the torch.nn.Sequential that to_torch returns); "
            f"got {type(module).__module__}.{type(module).__qualname__}."
        )
    return result


def _pairs_plus(a: PaddingPairs, b: PaddingPairs) -> PaddingPairs:
    return tuple((la + lb, ha + hb) for (la, ha), (lb, hb) in zip(a, b))


def _torch_pairs(module: Any, n: int) -> PaddingPairs | None:
    """A torch module's integer `padding` as symmetric pairs; `None` for a string."""
    if isinstance(module.padding, str):
        return ((0, 0),) * n if module.padding == "valid" else None
    padding = module.padding
    if isinstance(padding, int):
        padding = (padding,) * n
    return tuple((p, p) for p in padding)


def _from_single(
    torch: Any,
    module: Any,
    pad: tuple[str, PaddingPairs] | None = None,
    crop: PaddingPairs | None = None,
) -> EqxconvModule | None:
    """`module` converted, with the explicit padding `pad` (mode and pairs) before it
    or the crop `crop` (non-negative pairs) after it folded into its padding; `None`
    if `module` is no convolution or patch module."""
    key = jr.key(0)  # Unused: the initialisers return the module's parameters.

    n = _num_spatial_dims(torch, module, "ConvTranspose")
    if n is not None:
        name = type(module).__name__
        if isinstance(module.padding, str) or any(
            isinstance(p, str) for p in module.padding
        ):
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
        pairs = _torch_pairs(module, n)
        assert pairs is not None
        if crop is not None:
            pairs = _pairs_plus(pairs, crop)
        torch_weight = _to_numpy(module.weight, f"{name}.weight")
        weight = torch_transpose_weight_to_eqxconv(torch_weight, module.groups)
        dtype, kernel_init, bias_init, use_bias = _parameters(module, weight, n)
        return ConvTranspose(
            n,
            module.in_channels,
            module.out_channels,
            tuple(module.kernel_size),
            stride=tuple(module.stride),
            padding=pairs,
            output_padding=tuple(module.output_padding),
            dilation=tuple(module.dilation),
            groups=module.groups,
            use_bias=use_bias,
            dtype=dtype,
            key=key,
            kernel_init=kernel_init,
            bias_init=bias_init,
        )

    n = _num_spatial_dims(torch, module, "Conv")
    if n is not None:
        name = type(module).__name__
        padding_mode = module.padding_mode
        if pad is None:
            if isinstance(module.padding, str):
                padding: Any = module.padding.upper()
            else:
                padding = tuple(module.padding)
        else:
            padding_mode, padding = _merge_pad(module, n, pad)
        weight = _to_numpy(module.weight, f"{name}.weight")
        dtype, kernel_init, bias_init, use_bias = _parameters(module, weight, n)
        return Conv(
            n,
            module.in_channels,
            module.out_channels,
            tuple(module.kernel_size),
            stride=tuple(module.stride),
            padding=padding,
            dilation=tuple(module.dilation),
            groups=module.groups,
            use_bias=use_bias,
            padding_mode=padding_mode,
            dtype=dtype,
            key=key,
            kernel_init=kernel_init,
            bias_init=bias_init,
        )

    if isinstance(module, torch.nn.Unfold):
        padding_mode, padding = "ZEROS", module.padding
        if pad is not None:
            padding_mode, padding = _merge_pad(module, 2, pad)
        return ExtractPatches(
            2,
            module.kernel_size,
            stride=module.stride,
            padding=padding,
            dilation=module.dilation,
            padding_mode=padding_mode,
        )
    if isinstance(module, torch.nn.Fold):
        output_size = module.output_size
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(output_size)
        padding = module.padding
        if crop is not None:
            pairs = _torch_pairs(module, 2)
            assert pairs is not None
            padding = _pairs_plus(pairs, crop)
            output_size = tuple(
                s - low - high for s, (low, high) in zip(output_size, crop)
            )
        return FoldPatches(
            2,
            output_size,
            module.kernel_size,
            stride=module.stride,
            padding=padding,
            dilation=module.dilation,
        )
    return None


def _pad_info(torch: Any, module: Any) -> tuple[str, PaddingPairs] | None:
    """The mode and `(low, high)` pairs (first spatial axis first) of a torch padding
    module; `None` for anything else (a non-zero constant included)."""
    for mode, prefix in _PAD_MODULES.items():
        prefix = "ConstantPad" if mode == "ZEROS" else prefix
        for n in (1, 2, 3):
            if isinstance(module, getattr(torch.nn, f"{prefix}{n}d")):
                if mode == "ZEROS" and module.value != 0:
                    return None
                flat = tuple(module.padding)
                pairs = tuple((flat[2 * i], flat[2 * i + 1]) for i in range(n))
                return mode, pairs[::-1]
    return None


def _merge_pad(
    module: Any, n: int, pad: tuple[str, PaddingPairs]
) -> tuple[str, PaddingPairs]:
    """The single padding (mode, pairs) of `pad` followed by `module`'s own."""
    mode, pairs = pad
    own = _torch_pairs(module, n)
    own_mode = getattr(module, "padding_mode", "zeros")
    name = type(module).__name__
    if own is None or len(pairs) != n:
        raise ValueError(
            f"from_torch cannot merge a {len(pairs)}-d padding module with a {name} "
            f"with padding={module.padding!r}."
        )
    if any(p < 0 for pair in pairs for p in pair):
        raise ValueError(
            f"from_torch cannot convert a padding module that crops ({pairs}) "
            f"before a {name}."
        )
    if all(p == (0, 0) for p in own):
        return mode, pairs
    if mode == "ZEROS" and own_mode == "zeros":
        return mode, _pairs_plus(pairs, own)
    raise ValueError(
        f"from_torch cannot merge {mode.lower()} padding {pairs} with the {name}'s "
        f"own {own_mode} padding {module.padding!r} into one padding."
    )


def _from_sequential(torch: Any, module: Any) -> EqxconvModule:
    """The two-module `torch.nn.Sequential`s that `to_torch` returns: padding then a
    convolution or `Unfold`, or a transposed convolution or `Fold` then a crop."""
    children = list(module.children())
    if len(children) == 2:
        first, second = children
        pad = _pad_info(torch, first)
        is_conv = _num_spatial_dims(torch, second, "Conv") is not None
        if pad is not None and (is_conv or isinstance(second, torch.nn.Unfold)):
            result = _from_single(torch, second, pad=pad)
            assert result is not None
            return result
        crop = _pad_info(torch, second)
        is_transpose = _num_spatial_dims(torch, first, "ConvTranspose") is not None
        if crop is not None and crop[0] == "ZEROS":
            if all(p <= 0 for pair in crop[1] for p in pair) and (
                is_transpose or isinstance(first, torch.nn.Fold)
            ):
                pairs = tuple((-low, -high) for low, high in crop[1])
                result = _from_single(torch, first, crop=pairs)
                assert result is not None
                return result
    raise TypeError(
        "from_torch converts a torch.nn.Sequential only of the forms to_torch "
        "returns: a padding module then a Conv1d/2d/3d or Unfold, or a "
        "ConvTranspose1d/2d/3d or Fold then a ZeroPad1d/2d/3d cropping (negative "
        f"padding); got {module!r}."
    )


# ----------------------------------------------------------------------------------
# to_torch
# ----------------------------------------------------------------------------------


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
    name: str,
    padding: Padding,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    in_spatial_shape: tuple[int, ...] | None,
) -> PaddingPairs:
    """`padding` as `(low, high)` pairs, which must not depend on the input's shape
    unless `in_spatial_shape` fixes it."""
    if (
        in_spatial_shape is None
        and padding in ("SAME", "SAME_LOWER")
        and any(s > 1 for s in stride)
    ):
        raise ValueError(
            f"The {name} has padding={padding!r} with stride={stride}: its explicit "
            "padding depends on the input's spatial shape (modulo the stride), which "
            "no torch module can express. Pass `in_spatial_shape=` (the input's "
            "spatial shape) to export a torch module exact for inputs of that shape."
        )
    if in_spatial_shape is None:
        # Any shape: the padding does not depend on it.
        in_spatial_shape = tuple(
            dilated_size(k, d) for k, d in zip(kernel_size, dilation)
        )
    return resolve_padding(padding, in_spatial_shape, kernel_size, stride, dilation)


def _pad_module(torch: Any, mode: str, pairs: Sequence[tuple[int, int]]) -> Any:
    """An explicit torch padding module padding the trailing `len(pairs)` axes by
    `(low, high)` pairs (negative entries crop, for zero padding)."""
    n = len(pairs)
    flat = tuple(p for pair in reversed(pairs) for p in pair)  # last axis first
    return getattr(torch.nn, f"{_PAD_MODULES[mode]}{n}d")(flat)


def _is_symmetric(pairs: PaddingPairs) -> bool:
    return all(low == high for low, high in pairs)


def _check_mask(layer: Any, name: str, apply_mask: bool) -> Any:
    """The weight to export, the mask multiplied in when `apply_mask`."""
    if layer.mask is None:
        return layer.weight
    if not apply_mask:
        raise ValueError(
            f"The {name} has a `mask`, which torch cannot express: a torch "
            "convolution has no mask multiplied into its weight at every call. Pass "
            "`apply_mask=True` to export `weight * mask` (the same outputs, but "
            "training the torch module would update the masked-out entries)."
        )
    mask = jnp.asarray(layer.mask)
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, layer.weight, jnp.zeros((), layer.weight.dtype))
    return layer.weight * mask.astype(layer.weight.dtype)


def _fill(torch: Any, module: Any, weight: Any, bias: Any) -> None:
    with torch.no_grad():
        module.weight.copy_(_to_torch_tensor(torch, weight))
        if bias is not None:
            module.bias.copy_(_to_torch_tensor(torch, jnp.reshape(bias, (-1,))))


def _conv_to_torch(
    torch: Any, layer: Conv, in_spatial_shape: tuple[int, ...] | None, apply_mask: bool
) -> Any:
    n = layer.num_spatial_dims
    name = type(layer).__name__
    weight = _check_mask(layer, name, apply_mask)
    padding = layer.padding
    pad = None
    if padding == "VALID":
        torch_padding: Any = "valid"
    elif padding == "SAME" and all(s == 1 for s in layer.stride):
        torch_padding = "same"
    else:
        pairs = _explicit_pairs(
            name,
            padding,
            layer.kernel_size,
            layer.stride,
            layer.dilation,
            in_spatial_shape,
        )
        if _is_symmetric(pairs):
            torch_padding = tuple(low for low, _ in pairs)
        else:
            torch_padding = 0
            pad = _pad_module(torch, layer.padding_mode, pairs)
    conv = getattr(torch.nn, f"Conv{n}d")(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=torch_padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias is not None,
        padding_mode="zeros" if pad is not None else _TORCH_MODES[layer.padding_mode],
        dtype=_torch_dtype(torch, weight),
    )
    _fill(torch, conv, weight, layer.bias)
    if pad is None:
        return conv
    return torch.nn.Sequential(OrderedDict(pad=pad, conv=conv))


def _conv_transpose_to_torch(
    torch: Any,
    layer: ConvTranspose,
    in_spatial_shape: tuple[int, ...] | None,
    apply_mask: bool,
) -> Any:
    n = layer.num_spatial_dims
    name = type(layer).__name__
    if layer.padding_mode != "ZEROS":
        raise ValueError(
            f"The {name} has padding_mode={layer.padding_mode!r}: it is the adjoint "
            f"of a {layer.padding_mode.lower()}-padded convolution, which torch "
            "cannot express (torch.nn.ConvTranspose supports only "
            "padding_mode='zeros' and has no module folding a padded border back)."
        )
    weight = _check_mask(layer, name, apply_mask)
    # The explicit padding and output padding of a transposed convolution never
    # depend on its input's shape (for 'SAME': low + high = max(extent - stride +
    # output_padding, 0)), so any input shape gives them.
    shape = in_spatial_shape or tuple(
        dilated_size(k, d) for k, d in zip(layer.kernel_size, layer.dilation)
    )
    _, pairs, extra = conv_transpose_geometry(
        shape,
        layer.padding,
        layer.kernel_size,
        layer.stride,
        layer.dilation,
        layer.output_padding,
    )
    common = tuple(min(low, high) for low, high in pairs)
    conv = getattr(torch.nn, f"ConvTranspose{n}d")(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=common,
        output_padding=extra,
        groups=layer.groups,
        bias=layer.bias is not None,
        dilation=layer.dilation,
        dtype=_torch_dtype(torch, weight),
    )
    torch_weight = eqxconv_transpose_weight_to_torch(np.asarray(weight), layer.groups)
    _fill(torch, conv, torch_weight, layer.bias)
    if _is_symmetric(pairs):
        return conv
    crop = tuple((c - low, c - high) for (low, high), c in zip(pairs, common))
    return torch.nn.Sequential(
        OrderedDict(conv=conv, crop=_pad_module(torch, "ZEROS", crop))
    )


def _extract_patches_to_torch(
    torch: Any, layer: ExtractPatches, in_spatial_shape: tuple[int, ...] | None
) -> Any:
    if layer.num_spatial_dims != 2:
        raise ValueError(
            f"The ExtractPatches has num_spatial_dims={layer.num_spatial_dims}; "
            "torch.nn.Unfold only supports 2 spatial dimensions."
        )
    pairs = _explicit_pairs(
        "ExtractPatches",
        layer.padding,
        layer.kernel_size,
        layer.stride,
        layer.dilation,
        in_spatial_shape,
    )
    if _is_symmetric(pairs) and layer.padding_mode == "ZEROS":
        return torch.nn.Unfold(
            layer.kernel_size,
            dilation=layer.dilation,
            padding=tuple(low for low, _ in pairs),
            stride=layer.stride,
        )
    unfold = torch.nn.Unfold(
        layer.kernel_size, dilation=layer.dilation, padding=0, stride=layer.stride
    )
    pad = _pad_module(torch, layer.padding_mode, pairs)
    return torch.nn.Sequential(OrderedDict(pad=pad, unfold=unfold))


def _fold_patches_to_torch(torch: Any, layer: FoldPatches) -> Any:
    if layer.num_spatial_dims != 2:
        raise ValueError(
            f"The FoldPatches has num_spatial_dims={layer.num_spatial_dims}; "
            "torch.nn.Fold only supports 2 spatial dimensions."
        )
    pairs = resolve_padding(
        layer.padding,
        layer.output_size,
        layer.kernel_size,
        layer.stride,
        layer.dilation,
    )
    if _is_symmetric(pairs):
        return torch.nn.Fold(
            layer.output_size,
            layer.kernel_size,
            dilation=layer.dilation,
            padding=tuple(low for low, _ in pairs),
            stride=layer.stride,
        )
    padded = tuple(s + low + high for s, (low, high) in zip(layer.output_size, pairs))
    fold = torch.nn.Fold(
        padded,
        layer.kernel_size,
        dilation=layer.dilation,
        padding=0,
        stride=layer.stride,
    )
    crop = _pad_module(torch, "ZEROS", [(-low, -high) for low, high in pairs])
    return torch.nn.Sequential(OrderedDict(fold=fold, crop=crop))


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
    `precision` and `preferred_element_type` have no torch equivalent and are
    dropped.

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
    if isinstance(layer, ConvTranspose):
        return _conv_transpose_to_torch(torch, layer, shape, apply_mask)
    return _conv_to_torch(torch, layer, shape, apply_mask)


# ----------------------------------------------------------------------------------
# Whole models
# ----------------------------------------------------------------------------------


def _is_target(node: Any) -> bool:
    return isinstance(node, Conv | ConvTranspose)


def _find_layers(model: Any) -> dict[str, Any]:
    """Every `Conv` and `ConvTranspose` in `model`, by `jax.tree_util.keystr` path, in
    tree-traversal order."""
    found = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_target)[0]
    return {
        jax.tree_util.keystr(path): node for path, node in found if _is_target(node)
    }


def _torch_layer_prefixes(state_dict: Mapping[str, Any]) -> list[str]:
    """Prefixes of the `state_dict` entries that look like convolution weights (a
    `.weight` of 3 to 5 dimensions), in the `state_dict`'s order."""
    prefixes = []
    for key, value in state_dict.items():
        if key.endswith(".weight") and len(np.shape(value)) in (3, 4, 5):
            prefixes.append(key[: -len(".weight")])
    return prefixes


def _load_layer(
    layer: Conv | ConvTranspose, path: str, prefix: str, state_dict: Mapping[str, Any]
) -> tuple[Conv | ConvTranspose, list[str]]:
    """`layer` with its weight and bias from `state_dict[prefix + '.weight'/'.bias']`,
    and the keys it used."""
    name = f"{type(layer).__name__} at {path or 'the root'}"
    weight_key = f"{prefix}.weight" if prefix else "weight"
    bias_key = f"{prefix}.bias" if prefix else "bias"
    if weight_key not in state_dict:
        raise KeyError(
            f"state_dict has no key {weight_key!r} for the {name} (mapped to the "
            f"torch prefix {prefix!r})."
        )
    weight = _to_numpy(state_dict[weight_key], f"state_dict[{weight_key!r}]")
    if isinstance(layer, ConvTranspose):
        expected = (
            layer.in_channels,
            layer.out_channels // layer.groups,
            *layer.kernel_size,
        )
        layout = "torch's transposed layout (in, out // groups, *kernel_size)"
    else:
        expected = tuple(layer.weight.shape)
        layout = "(out, in // groups, *kernel_size)"
    if tuple(weight.shape) != expected:
        raise ValueError(
            f"state_dict[{weight_key!r}] has shape {tuple(weight.shape)}, but the "
            f"{name} (in_channels={layer.in_channels}, "
            f"out_channels={layer.out_channels}, groups={layer.groups}, "
            f"kernel_size={layer.kernel_size}) expects {expected}, {layout}."
        )
    if isinstance(layer, ConvTranspose):
        weight = torch_transpose_weight_to_eqxconv(weight, layer.groups)
    used = [weight_key]
    new_weight = jnp.asarray(weight).astype(layer.weight.dtype)
    if layer.bias is None:
        if bias_key in state_dict:
            raise ValueError(
                f"state_dict has {bias_key!r}, but the {name} has use_bias=False."
            )
        return eqx.tree_at(lambda m: m.weight, layer, new_weight), used
    if bias_key not in state_dict:
        raise KeyError(
            f"state_dict has no key {bias_key!r} for the {name}, which has a bias "
            "(construct it with use_bias=False if the torch layer has bias=False)."
        )
    bias = _to_numpy(state_dict[bias_key], f"state_dict[{bias_key!r}]")
    if tuple(bias.shape) != (layer.out_channels,):
        raise ValueError(
            f"state_dict[{bias_key!r}] has shape {tuple(bias.shape)}, but the {name} "
            f"expects ({layer.out_channels},)."
        )
    new_bias = jnp.asarray(bias).astype(layer.bias.dtype).reshape(layer.bias.shape)
    used.append(bias_key)
    new_layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (new_weight, new_bias))
    return new_layer, used


def load_torch_state_dict(
    model: Any,
    state_dict: Mapping[str, Any],
    mapping: Mapping[str, str | Callable[[Any], Any]] | None = None,
    *,
    strict: bool = True,
) -> Any:
    """Fill the convolution layers of an Equinox model from a PyTorch `state_dict`.

    Every [`eqxconv.Conv`][] and `eqxconv.ConvTranspose` inside `model` (found
    by tree traversal, through any nesting of modules, lists, tuples and dicts) is a
    target. Each is paired with a torch module prefix, and takes its weight from
    `state_dict[prefix + '.weight']` (converted from PyTorch's `(in, out // groups,
    *k)` layout for a `ConvTranspose`) and its bias from `state_dict[prefix +
    '.bias']`, cast to the layer's dtype. Shapes are checked against the layer, and
    a mismatch is reported with the offending key. Only arrays are loaded: the
    configuration (stride, padding, ...) is the model's, as a `state_dict` does not
    hold it. Other entries (linear layers, normalisation, ...) are left for you,
    e.g. with `eqx.tree_at`.

    With `mapping=None`, the targets are paired in tree-traversal order (the order
    of the fields, as declared) with the `state_dict`'s convolution-like entries
    (a `.weight` of 3 to 5 dimensions) in its order, which is the order the torch
    modules were registered in; the two counts must agree. This suits models
    written in the same order in both libraries; for anything else give `mapping`.

    A design note: a `mapping` from torch prefixes to layers keeps the loader
    independent of the model's structure (any Equinox model, any nesting) and of
    torch itself (a `state_dict` of numpy arrays, say from safetensors, works
    without PyTorch), while the shape checks catch a wrong pairing at once.

    **Arguments:**

    - `model`: any PyTree (usually an `equinox.Module`) holding eqxconv layers.
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
    pairs: dict[str, str] = {}  # layer path -> torch prefix
    if mapping is None:
        prefixes = _torch_layer_prefixes(state_dict)
        if len(prefixes) != len(layers):
            raise ValueError(
                f"The model has {len(layers)} eqxconv Conv/ConvTranspose layers "
                f"({list(layers)}) but the state_dict has {len(prefixes)} "
                f"convolution weights ({[p + '.weight' for p in prefixes]}): pass a "
                "`mapping` from torch prefixes to layers."
            )
        pairs = dict(zip(layers, prefixes))
    else:
        by_id = {id(layer): path for path, layer in layers.items()}
        for prefix, target in mapping.items():
            if callable(target):
                chosen = target(model)
                path = by_id.get(id(chosen))
                if path is None:
                    raise ValueError(
                        f"mapping[{prefix!r}] selects a {type(chosen).__name__}, not "
                        "an eqxconv Conv or ConvTranspose of the model; its layers "
                        f"are at {list(layers)}."
                    )
            else:
                path = target
                if path not in layers:
                    raise ValueError(
                        f"mapping[{prefix!r}] = {path!r} is not the path of an "
                        "eqxconv Conv or ConvTranspose of the model; its layers are "
                        f"at {list(layers)}."
                    )
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
    new_layers = {
        path: _load_layer(layers[path], path, prefix, state_dict)[0]
        for path, prefix in pairs.items()
    }

    def replace(path: Any, node: Any) -> Any:
        if _is_target(node):
            return new_layers.get(jax.tree_util.keystr(path), node)
        return node

    return jax.tree_util.tree_map_with_path(replace, model, is_leaf=_is_target)
