"""The rules `impl='auto'` follows (`eqxconv/_choose.py`), with the backend mocked:
off CPU every op is `lax`'s own, since nothing custom was measured there."""

from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import eqxconv
from eqxconv import _choose


def _uses_lax_conv(f, *args) -> bool:
    return "conv_general_dilated" in str(jax.make_jaxpr(f)(*args))


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_off_cpu_auto_is_lax(monkeypatch, backend):
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: backend)
    depthwise: dict[str, Any] = dict(
        in_channels=8, groups=8, kernel_size=(3, 3), input_dilation=(1, 1)
    )
    assert _choose.choose_conv_impl(**depthwise, dtype=jnp.float32) == "xla"
    assert _choose.choose_transpose_impl((4, 4), (2, 2), (1, 1)) == "lhs_dilation"
    # Patches are data movement on every backend.
    assert _choose.choose_patches_impl((16, 16), (16, 16), (1, 1)) == "reshape"


def test_on_cpu_auto_keeps_its_measured_lowerings(monkeypatch):
    monkeypatch.setattr(_choose.jax, "default_backend", lambda: "cpu")
    depthwise: dict[str, Any] = dict(
        in_channels=8, groups=8, kernel_size=(3, 3), input_dilation=(1, 1)
    )
    assert _choose.choose_conv_impl(**depthwise, dtype=jnp.float32) == "shift"
    assert _choose.choose_conv_impl(**depthwise, dtype=jnp.complex64) == "xla"
    # At most 25 kernel taps and 49 products per output.
    for kernel_size, impl in (((5, 5), "shift"), ((7, 7), "xla"), ((25,), "shift")):
        args = dict(depthwise, kernel_size=kernel_size, dtype=jnp.float32)
        assert _choose.choose_conv_impl(**args) == impl, kernel_size
    four_per_group = dict(depthwise, in_channels=32, dtype=jnp.float32)
    assert _choose.choose_conv_impl(**four_per_group) == "shift"
    four_per_group_5x5 = dict(four_per_group, kernel_size=(5, 5))
    assert _choose.choose_conv_impl(**four_per_group_5x5) == "xla"
    assert _choose.choose_transpose_impl((4, 4), (2, 2), (1, 1)) == "phase"
    assert _choose.choose_transpose_impl((2,), (2,), (5,)) == "interior"
    assert _choose.choose_transpose_impl((4,), (1,), (1,)) == "lhs_dilation"


def test_rgb_and_mono_stems_take_xla(getkey):
    """Ungrouped convolutions of few input channels are XLA's dense convolution,
    whatever the backend."""
    for channels, n in ((3, 2), (1, 1)):
        x = jr.normal(getkey(), (channels, *(12,) * n))
        w = jr.normal(getkey(), (16, channels, *(3,) * n))
        assert _uses_lax_conv(lambda x, w=w: eqxconv.conv(x, w, padding=1), x)
