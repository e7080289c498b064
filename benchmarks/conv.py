"""`eqxconv.Conv` against raw `lax.conv_general_dilated` (NCHW and NHWC),
`equinox.nn.Conv`, `flax.linen.Conv` and `torch.nn.ConvNd`, side by side.

Run: `python -m benchmarks.conv [--quick]`. Prints medians (ms) and ratios to the
fastest raw-lax layout; forward, forward+backward (gradient of `sum(y * r)` with
respect to input and weight) and cold compile time. No thresholds: a script, not a
test.
"""

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import flax.linen as fnn
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import torch

import eqxconv
from benchmarks._timing import compile_seconds, markdown, median_time, Table


@dataclass(frozen=True)
class Case:
    name: str
    n: int
    in_channels: int
    out_channels: int
    spatial: int
    batch: int
    kernel: int = 3
    padding: int = 1
    groups: int = 1
    padding_mode: str = "ZEROS"


CASES = [
    Case("2D dense 64->64 56^2 b8", 2, 64, 64, 56, 8),
    Case("2D depthwise C=64 56^2 b8", 2, 64, 64, 56, 8, groups=64),
    Case("1D dense 64->64 L=1024 b8", 1, 64, 64, 1024, 8),
    Case("3D dense 16->16 16^3 b4", 3, 16, 16, 16, 4),
    Case("2D 64->64 56^2 b8 REFLECT", 2, 64, 64, 56, 8, padding_mode="REFLECT"),
    Case("2D 64->64 56^2 b8 REPLICATE", 2, 64, 64, 56, 8, padding_mode="REPLICATE"),
    Case("2D 64->64 56^2 b8 CIRCULAR", 2, 64, 64, 56, 8, padding_mode="CIRCULAR"),
]
LETTERS = "DHW"
TORCH_MODES = {"REFLECT": "reflect", "REPLICATE": "replicate", "CIRCULAR": "circular"}
JNP_MODES = {"REFLECT": "reflect", "REPLICATE": "edge", "CIRCULAR": "wrap"}


def _fwd_and_grad(apply: Callable[[Any, Any], Any], params: Any, x: Any, r: Any):
    def loss(params, x):
        return jnp.sum(apply(params, x) * r)

    return jax.jit(apply), jax.grad(loss, argnums=(0, 1))


def jax_contenders(case: Case, key: Any) -> dict[str, tuple[Callable, Any, Any, Any]]:
    n, c_in, c_out = case.n, case.in_channels, case.out_channels
    spatial = (case.spatial,) * n
    kx, kw, kr, ke, kf = jr.split(key, 5)
    x = jr.normal(kx, (case.batch, c_in, *spatial))
    arguments = (n, c_in, c_out, case.kernel)
    options: dict[str, Any] = dict(
        padding=case.padding, groups=case.groups, padding_mode=case.padding_mode
    )
    layer = eqxconv.Conv(*arguments, **options, key=kw)
    r = jr.normal(kr, (case.batch, *jax.eval_shape(jax.vmap(layer), x).shape[1:]))
    weight, bias = layer.weight, layer.bias
    assert bias is not None
    pairs = [(case.padding, case.padding)] * n
    contenders: dict[str, tuple[Callable, Any, Any, Any]] = {}

    contenders["eqxconv"] = (lambda m, x: jax.vmap(m)(x), layer, x, r)
    reference = eqx.nn.Conv(*arguments, **options, key=ke)
    reference = eqx.tree_at(lambda m: (m.weight, m.bias), reference, (weight, bias))
    contenders["equinox"] = (lambda m, x: jax.vmap(m)(x), reference, x, r)

    spec = LETTERS[-n:]
    nchw = ("NC" + spec, "OI" + spec, "NC" + spec)
    nhwc = ("N" + spec + "C", spec + "IO", "N" + spec + "C")

    def raw(dimension_numbers, pad_mode):
        def apply(params, x):
            w, b = params
            if pad_mode != "ZEROS":
                widths = [(0, 0), (0, 0)] + pairs
                if dimension_numbers == nhwc:
                    widths = [(0, 0)] + pairs + [(0, 0)]
                x = jnp.pad(x, widths, mode=JNP_MODES[pad_mode])
            y = lax.conv_general_dilated(
                x,
                w,
                (1,) * n,
                "VALID" if pad_mode != "ZEROS" else pairs,
                dimension_numbers=dimension_numbers,
                feature_group_count=case.groups,
            )
            return y + b

        return apply

    to_last = (0, *range(2, n + 2), 1)
    w_last = (*range(2, n + 2), 1, 0)
    contenders["lax NCHW"] = (raw(nchw, case.padding_mode), (weight, bias[None]), x, r)
    contenders["lax NHWC"] = (
        raw(nhwc, case.padding_mode),
        (jnp.transpose(weight, w_last), jnp.moveaxis(bias, 0, -1)[None]),
        jnp.transpose(x, to_last),
        jnp.transpose(r, to_last),
    )
    if case.padding_mode in ("ZEROS", "CIRCULAR"):
        flax_layer = fnn.Conv(
            c_out,
            (case.kernel,) * n,
            padding="CIRCULAR" if case.padding_mode == "CIRCULAR" else pairs,
            feature_group_count=case.groups,
        )
        variables = flax_layer.init(kf, jnp.transpose(x, to_last))
        contenders["flax"] = (
            flax_layer.apply,
            variables,
            jnp.transpose(x, to_last),
            jnp.transpose(r, to_last),
        )
    return contenders


def torch_times(case: Case, repeats: int) -> tuple[float, float]:
    n = case.n
    cls = getattr(torch.nn, f"Conv{n}d")
    mode = "zeros" if case.padding_mode == "ZEROS" else TORCH_MODES[case.padding_mode]
    layer = cls(
        case.in_channels,
        case.out_channels,
        case.kernel,
        padding=case.padding,
        groups=case.groups,
        padding_mode=mode,
    )
    x = torch.randn(case.batch, case.in_channels, *(case.spatial,) * n)
    with torch.no_grad():
        r = torch.randn_like(layer(x))

    def forward():
        with torch.no_grad():
            return layer(x)

    def forward_backward():
        xg = x.clone().requires_grad_()
        layer.zero_grad()
        (layer(xg) * r).sum().backward()
        return xg.grad

    sync = lambda out: out  # noqa: E731  (torch CPU ops are synchronous)
    return (
        median_time(forward, repeats=repeats, sync=sync),
        median_time(forward_backward, repeats=repeats, sync=sync),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--case", default=None, help="run only cases containing this")
    args = parser.parse_args()
    repeats = 5 if args.quick else 15
    torch.set_num_threads(2)
    platform = jax.devices()[0].platform
    print(f"jax {jax.__version__} on {platform}, torch {torch.__version__}")
    forward = Table("forward", reference="lax best")
    backward = Table("forward+backward", reference="lax best")
    compiled = Table("cold compile fwd+bwd", reference="lax best")
    key = jr.key(0)
    for case in CASES:
        if args.case and args.case not in case.name:
            continue
        key, sub = jr.split(key)
        fwd_times, bwd_times, compile_times = {}, {}, {}
        for name, (apply, params, x, r) in jax_contenders(case, sub).items():
            fwd, grad = _fwd_and_grad(apply, params, x, r)
            fwd_times[name] = median_time(fwd, params, x, repeats=repeats)
            bwd_times[name] = median_time(jax.jit(grad), params, x, repeats=repeats)
            compile_times[name] = compile_seconds(grad, params, x)
        for times in (fwd_times, bwd_times, compile_times):
            times["lax best"] = min(times["lax NCHW"], times["lax NHWC"])
        fwd_times["torch"], bwd_times["torch"] = torch_times(case, repeats)
        forward.add(case.name, fwd_times)
        backward.add(case.name, bwd_times)
        compiled.add(case.name, compile_times)
    print(markdown([forward, backward, compiled]))


if __name__ == "__main__":
    main()
