"""Convolution layers for JAX in the style of Equinox."""

from ._conv import Conv as Conv, Conv1d as Conv1d, Conv2d as Conv2d, Conv3d as Conv3d
from ._conv_local import (
    ConvLocal as ConvLocal,
    ConvLocal1d as ConvLocal1d,
    ConvLocal2d as ConvLocal2d,
    ConvLocal3d as ConvLocal3d,
)
from ._conv_transpose import (
    ConvTranspose as ConvTranspose,
    ConvTranspose1d as ConvTranspose1d,
    ConvTranspose2d as ConvTranspose2d,
    ConvTranspose3d as ConvTranspose3d,
)
from ._init import Initializer as Initializer
from ._ops import (
    conv as conv,
    conv_local as conv_local,
    conv_output_shape as conv_output_shape,
    conv_transpose as conv_transpose,
    extract_patches as extract_patches,
    fold_patches as fold_patches,
)
from ._patches import ExtractPatches as ExtractPatches, FoldPatches as FoldPatches
from ._spectral_norm import SpectralNorm as SpectralNorm
from ._torch_convert import from_torch as from_torch, to_torch as to_torch
from ._torch_state_dict import load_torch_state_dict as load_torch_state_dict


__version__ = "0.1.0"

# Last, once every submodule is loaded: help() then reads plain docstrings.
from ._help import strip_cross_references as _strip_cross_references  # noqa: E402


_strip_cross_references(__name__)
