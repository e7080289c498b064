"""Convolution layers for JAX in the style of Equinox."""

from ._conv import Conv as Conv, Conv1d as Conv1d, Conv2d as Conv2d, Conv3d as Conv3d
from ._init import Initializer as Initializer
from ._ops import conv as conv
from ._padding import conv_output_shape as conv_output_shape


__version__ = "0.1.0"
