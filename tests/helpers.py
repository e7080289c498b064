"""Independent oracles shared by the tests: PyTorch, written without eqxconv."""

import numpy as np
import torch
import torch.nn.functional as F


TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TORCH_PAD_MODES = {
    "REFLECT": "reflect",
    "REPLICATE": "replicate",
    "CIRCULAR": "circular",
}


def to_torch(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


def torch_pad(x: torch.Tensor, pairs, mode: str) -> torch.Tensor:
    """Pad the trailing spatial axes of a batched tensor by `(low, high)` pairs."""
    # F.pad takes the last dimension first.
    flat = [p for pair in reversed(pairs) for p in pair]
    if mode == "ZEROS":
        return F.pad(x, flat)
    return F.pad(x, flat, mode=TORCH_PAD_MODES[mode])


def torch_conv(
    x, weight, bias=None, *, stride, pairs, dilation, groups=1, mode="ZEROS"
) -> np.ndarray:
    """`F.pad` + `F.convNd` on an unbatched `(C, *spatial)` input; a numpy result."""
    n = np.ndim(weight) - 2
    xt = torch_pad(to_torch(x)[None], pairs, mode)
    out = TORCH_CONV[n](
        xt,
        to_torch(weight),
        None if bias is None else to_torch(bias).reshape(-1),
        stride=tuple(stride),
        dilation=tuple(dilation),
        groups=groups,
    )
    return out[0].numpy()


TORCH_CONV_TRANSPOSE = {
    1: F.conv_transpose1d,
    2: F.conv_transpose2d,
    3: F.conv_transpose3d,
}


def transpose_weight_layout(weight, groups: int) -> np.ndarray:
    """Between Equinox's transposed-conv weight `(out, in // groups, *k)` and
    PyTorch's `(in, out // groups, *k)` (which is also the forward conv's weight):
    flip the spatial axes and swap the two channel axes within each group. The map
    is its own inverse."""
    w = np.asarray(weight)
    a, b, *kernel = w.shape
    w = np.flip(w, axis=tuple(range(2, w.ndim)))
    w = w.reshape(groups, a // groups, b, *kernel).swapaxes(1, 2)
    return np.ascontiguousarray(w.reshape(b * groups, a // groups, *kernel))


def torch_conv_transpose(
    x, weight, bias=None, *, stride, padding, output_padding, dilation, groups=1
) -> np.ndarray:
    """`F.conv_transposeNd` on an unbatched input, with an Equinox-layout weight."""
    n = np.ndim(weight) - 2
    out = TORCH_CONV_TRANSPOSE[n](
        to_torch(x)[None],
        torch.from_numpy(transpose_weight_layout(weight, groups)),
        None if bias is None else to_torch(bias).reshape(-1),
        stride=tuple(stride),
        padding=tuple(padding),
        output_padding=tuple(output_padding),
        groups=groups,
        dilation=tuple(dilation),
    )
    return out[0].numpy()


# --- Oracles for patches and locally connected layers (written without eqxconv) ---

NP_PAD_MODES = {"ZEROS": "constant", "REFLECT": "reflect", "REPLICATE": "edge",
                "CIRCULAR": "wrap"}  # fmt: skip


def oracle_pairs(padding, in_shape, kernel_size, stride, dilation):
    """Explicit `(low, high)` pairs, resolved by `lax` for SAME/SAME_LOWER/VALID."""
    import jax.lax as lax

    n = len(in_shape)
    if isinstance(padding, str):
        upper = padding.upper()
        extent = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
        if upper == "CAUSAL":
            return [(e - 1, 0) for e in extent]
        if upper == "CIRCULAR":  # Flax's: centred on the window, at every stride
            return [((e - 1) // 2, e // 2) for e in extent]
        return [tuple(p) for p in lax.padtype_to_pads(in_shape, extent, stride, upper)]
    if isinstance(padding, int):
        return [(padding, padding)] * n
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def jnp_pad(x, pairs, mode: str):
    """Pad the spatial axes of an unbatched `(C, *spatial)` array (`jnp.pad`)."""
    import jax.numpy as jnp

    return jnp.pad(x, [(0, 0), *pairs], mode=NP_PAD_MODES[mode])


def lax_patches(x, kernel_size, stride, pairs, dilation, mode="ZEROS"):
    """`lax.conv_general_dilated_patches` on an input padded beforehand."""
    import jax.lax as lax

    xp = jnp_pad(x, pairs, mode)
    return lax.conv_general_dilated_patches(
        xp[None], tuple(kernel_size), tuple(stride), "VALID",
        rhs_dilation=tuple(dilation),
    )[0]  # fmt: skip


def lax_local(x, weight, kernel_size, stride, pairs, dilation, groups=1, mode="ZEROS"):
    """`lax.conv_general_dilated_local` with ("NCHW", "OIHW", "NCHW"), applied per
    group for `groups > 1` (output channel `o` sees input group
    `o // (out_channels // groups)`)."""
    import jax.lax as lax
    import jax.numpy as jnp

    xp = jnp_pad(x, pairs, mode)
    n = len(kernel_size)
    spec = ("NCH", "OIH", "NCH") if n == 1 else None
    if n == 3:
        spec = ("NCDHW", "OIDHW", "NCDHW")
    outs = []
    for xg, wg in zip(jnp.split(xp, groups), jnp.split(weight, groups), strict=True):
        outs.append(
            lax.conv_general_dilated_local(
                xg[None], wg, tuple(stride), "VALID", tuple(kernel_size),
                rhs_dilation=tuple(dilation), dimension_numbers=spec,
                precision="highest",
            )[0]
        )  # fmt: skip
    return jnp.concatenate(outs)
