"""`ExtractPatches` and `FoldPatches`: parameter-free modules over
[`eqxconv.extract_patches`][] and [`eqxconv.fold_patches`][]."""

from collections.abc import Sequence

import equinox as eqx
from jaxtyping import Array, Inexact, PRNGKeyArray

from ._args import (
    check_input_dilation,
    check_positive_int,
    check_spatial_shape,
    normalise_fold_padding,
    normalise_padding,
    PaddingLike,
    PaddingMode,
    to_tuple,
)
from ._checks import checked_call
from ._geometry import dilated_shape, output_shape, Padding
from ._ops import fold_grid_shape, run_extract_patches, run_fold_patches


class ExtractPatches(eqx.Module):
    """Sliding windows ("patches", "im2col", PyTorch's `nn.Unfold`) of an unbatched,
    channels-first input, as [`eqxconv.extract_patches`][] computes them.

    Non-overlapping windows (`stride == kernel_size`, no dilation, e.g. a ViT's
    patchify) are a reshape and a transpose; overlapping ones are strided slices, so
    the backward pass is cheap (unlike `lax.conv_general_dilated_patches`').
    """

    num_spatial_dims: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    dilation: tuple[int, ...] = eqx.field(static=True)
    padding_mode: PaddingMode = eqx.field(static=True)
    input_dilation: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        dilation: int | Sequence[int] = 1,
        padding_mode: str = "ZEROS",
        *,
        input_dilation: int | Sequence[int] = 1,
        key: PRNGKeyArray | None = None,
    ):
        """**Arguments:**

        - `num_spatial_dims`: the number of spatial dimensions `N`.
        - `kernel_size`: the window's size, an int or `N` ints.
        - `stride`: the window stride, an int or `N` ints.
        - `padding`: an int, `N` ints, `N` `(low, high)` pairs, or one of `'VALID'`,
            `'SAME'`, `'SAME_LOWER'`, `'CAUSAL'`, `'CIRCULAR'` (case-insensitive), as
            for [`eqxconv.Conv`][].
        - `dilation`: the spacing of the window's points, an int or `N` ints.
        - `padding_mode`: `'ZEROS'` (default), `'REFLECT'`, `'REPLICATE'` or
            `'CIRCULAR'`.
        - `input_dilation`: the input dilation, an int or `N` ints (keyword only), as
            for [`eqxconv.extract_patches`][]; needs `padding_mode='ZEROS'`.
        - `key`: ignored (there are no parameters); accepted for uniformity.
        """
        del key
        n = check_positive_int(num_spatial_dims, "num_spatial_dims")
        self.num_spatial_dims = n
        self.kernel_size = to_tuple(kernel_size, n, "kernel_size")
        self.stride = to_tuple(stride, n, "stride")
        self.padding, self.padding_mode = normalise_padding(padding, padding_mode, n)
        self.dilation = to_tuple(dilation, n, "dilation")
        self.input_dilation = check_input_dilation(input_dilation, n, self.padding_mode)

    def out_spatial_shape(self, in_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The patch grid's spatial shape for an input of spatial shape
        `in_spatial_shape` (pure Python; `ValueError` if the window does not fit)."""
        in_spatial_shape = check_spatial_shape(
            in_spatial_shape, self.num_spatial_dims, "in_spatial_shape"
        )
        return output_shape(
            dilated_shape(in_spatial_shape, self.input_dilation),
            self.padding,
            self.kernel_size,
            self.stride,
            self.dilation,
        )

    @checked_call
    def __call__(
        self,
        x: Inexact[Array, " channels *spatial"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Inexact[Array, " patch_channels *out_spatial"]:
        """**Arguments:**

        - `x`: the input, shape `(C, dim_1, ..., dim_N)`; batch with `jax.vmap`.
        - `key`: ignored.

        **Returns:**

        An array of shape `(C * prod(kernel_size), *out_spatial_shape((dim_1, ...,
        dim_N)))`, channel-major then kernel offsets in row-major order.
        """
        return run_extract_patches(
            type(self).__name__,
            x,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
            input_dilation=self.input_dilation,
        )


class FoldPatches(eqx.Module):
    """Sum sliding windows back into an array ("col2im", PyTorch's `nn.Fold`): the
    adjoint of [`eqxconv.ExtractPatches`][] with zero padding, as
    [`eqxconv.fold_patches`][] computes it. Overlaps are summed.

    The result's spatial shape is fixed at construction (`output_size`), so the input
    patches must have the matching patch grid shape, `in_spatial_shape`.
    """

    num_spatial_dims: int = eqx.field(static=True)
    output_size: tuple[int, ...] = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    dilation: tuple[int, ...] = eqx.field(static=True)
    in_spatial_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        out_spatial_shape: Sequence[int],
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingLike = 0,
        dilation: int | Sequence[int] = 1,
        *,
        key: PRNGKeyArray | None = None,
    ):
        """**Arguments:**

        - `num_spatial_dims`: the number of spatial dimensions `N`.
        - `out_spatial_shape`: the result's spatial shape `(dim_1, ..., dim_N)`
            (PyTorch's `output_size`; stored as the field `output_size`).
        - `kernel_size`, `stride`, `padding`, `dilation`: those of the
            [`eqxconv.ExtractPatches`][] this folds back; padding strings are
            resolved against `out_spatial_shape`, and the padded border is cropped.
        - `key`: ignored (there are no parameters); accepted for uniformity.
        """
        del key
        n = check_positive_int(num_spatial_dims, "num_spatial_dims")
        self.num_spatial_dims = n
        self.output_size = check_spatial_shape(
            out_spatial_shape, n, "out_spatial_shape"
        )
        self.kernel_size = to_tuple(kernel_size, n, "kernel_size")
        self.stride = to_tuple(stride, n, "stride")
        self.padding = normalise_fold_padding(padding, n)
        self.dilation = to_tuple(dilation, n, "dilation")
        self.in_spatial_shape = fold_grid_shape(
            "FoldPatches",
            self.output_size,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
        )

    def out_spatial_shape(self, in_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """`output_size`, after checking that `in_spatial_shape` is the patch grid's
        spatial shape (pure Python; `ValueError` otherwise)."""
        if tuple(in_spatial_shape) != self.in_spatial_shape:
            raise ValueError(
                f"FoldPatches folds patch grids of spatial shape "
                f"{self.in_spatial_shape} into {self.output_size}, got a patch grid of "
                f"spatial shape {tuple(in_spatial_shape)}."
            )
        return self.output_size

    @checked_call
    def __call__(
        self,
        x: Inexact[Array, " patch_channels *patch_spatial"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Inexact[Array, " channels *out_spatial"]:
        """**Arguments:**

        - `x`: patches of shape `(C * prod(kernel_size), *in_spatial_shape)`; batch
            with `jax.vmap`.
        - `key`: ignored.

        **Returns:**

        An array of shape `(C, *output_size)`.
        """
        return run_fold_patches(
            type(self).__name__,
            x,
            output_size=self.output_size,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )
