"""Layers on spatially sharded inputs, measured on simulated host devices.

Run as `python -m tests.sharding_cases [NAME ...]` (it sets `XLA_FLAGS` for 8 host
devices before importing JAX); `tests/test_sharding.py` runs it in a subprocess, so
that the rest of the suite keeps its single device. Prints one JSON object per case
and mode: the collectives in the compiled forward and gradient programs (of the
layer and of XLA's dense convolution of the same geometry), whether the output kept
the input's spatial sharding, and the largest difference from the unsharded call.
"""

import os
import sys


os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import json  # noqa: E402
import re  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import eqxconv  # noqa: E402


jax.config.update("jax_default_prng_impl", "rbg")

COLLECTIVES = ("collective-permute", "all-gather", "all-reduce", "all-to-all")


def count_collectives(hlo: str) -> dict[str, int]:
    """Instructions of each collective opcode in compiled HLO text (an async pair,
    `-start` and `-done`, counted once)."""
    counts = {}
    for op in COLLECTIVES:
        pattern = rf"\s{op}(-start)?\("
        counts[op] = len(re.findall(pattern, hlo))
    return counts


@dataclass
class Case:
    """A layer (built from a key), its batched input shape, and the mesh axes its
    spatial dimensions are split over (one entry per spatial dimension)."""

    name: str
    make: Callable[[Any], Any]
    shape: tuple[int, ...]
    split: tuple[str | None, ...]
    # XLA's dense convolution of the same geometry: what the budget is relative to.
    dense: Callable[[Any], Any]
    mesh: tuple[tuple[int, ...], tuple[str, ...]] = ((4,), ("x",))
    local: bool = False
    # The mesh axis the batch is split over, if any.
    batch: str | None = None
    # Whether automatic mode keeps within budget (the others are known gaps, run
    # by hand: `python -m tests.sharding_cases NAME auto`).
    auto: bool = True


def _conv(n: int, cin: int, cout: int, k: Any, **kw: Any) -> Callable[[Any], Any]:
    return lambda key: eqxconv.Conv(n, cin, cout, k, key=key, **kw)


def _dense_like(n: int, c: int, k: Any, **kw: Any) -> Callable[[Any], Any]:
    kw = {name: v for name, v in kw.items() if name not in ("groups", "padding_mode")}
    return lambda key: eqxconv.Conv(n, c, c, k, impl="xla", key=key, **kw)


def _transpose(n: int, c: int, k: Any, **kw: Any) -> Callable[[Any], Any]:
    return lambda key: eqxconv.ConvTranspose(n, c, c, k, key=key, **kw)


def _dense_transpose(n: int, c: int, k: Any, **kw: Any) -> Callable[[Any], Any]:
    kw = {name: v for name, v in kw.items() if name not in ("groups", "padding_mode")}
    return lambda key: eqxconv.ConvTranspose(
        n, c, c, k, impl="lhs_dilation", key=key, **kw
    )


def _cases() -> list[Case]:
    img = (2, 8, 32, 16)
    cases = []
    for name, kw in (
        ("dense", dict(padding="SAME")),
        ("depthwise", dict(padding="SAME", groups=8)),
        ("groups4", dict(padding="SAME", groups=4)),
        ("reflect", dict(padding="SAME", padding_mode="REFLECT")),
        ("replicate", dict(padding="SAME", padding_mode="REPLICATE")),
        ("circular", dict(padding="SAME", padding_mode="CIRCULAR")),
        ("depthwise_reflect", dict(padding="SAME", padding_mode="REFLECT", groups=8)),
        ("stride2", dict(padding=1, stride=2)),
        ("dilation2", dict(padding=2, dilation=2)),
    ):
        case = Case(
            name, _conv(2, 8, 8, 3, **kw), img, ("x", None), _dense_like(2, 8, 3, **kw)
        )
        # The mode padding (`jnp.pad`) of a sharded axis costs extra permutes.
        case.auto = name in ("dense", "depthwise", "groups4", "stride2", "dilation2")
        cases.append(case)
    cases.append(
        Case(
            "causal1d",
            _conv(1, 8, 8, 3, padding="CAUSAL", dilation=2),
            (2, 8, 64),
            ("x",),
            _dense_like(1, 8, 3, padding="CAUSAL", dilation=2),
        )
    )
    # One-dimensional inputs take non-zero padding modes as zero padding plus border
    # reads, which the partitioner splits like zero padding.
    for name, kw in (
        ("reflect1d", dict(padding="SAME", padding_mode="REFLECT")),
        ("replicate1d_k5_s2", dict(padding=2, stride=2, padding_mode="REPLICATE")),
        ("circular1d_d2", dict(padding="CIRCULAR", dilation=2)),
        ("circular1d_groups2", dict(padding="CIRCULAR", groups=2)),
    ):
        k = 5 if "k5" in name else 3
        cases.append(
            Case(
                name,
                _conv(1, 8, 8, k, **kw),
                (2, 8, 64),
                ("x",),
                _dense_like(
                    1, 8, k, **{**kw, "padding": 2 if "k5" in name else "SAME"}
                ),
            )
        )
    cases.append(
        Case(
            "transpose1d_reflect",
            _transpose(1, 8, 3, padding="SAME", padding_mode="REFLECT"),
            (2, 8, 64),
            ("x",),
            _dense_transpose(1, 8, 3, padding="SAME"),
        )
    )
    cases.append(
        Case(
            "transpose1d_circular_s2",
            _transpose(1, 8, 4, stride=2, padding="CIRCULAR"),
            (2, 8, 32),
            ("x",),
            _dense_transpose(1, 8, 4, stride=2, padding=1),
            # The strided adjoint lowering's weight gradient reverses whole shards
            # onto the mirror devices (lax's transpose rules flip the activation
            # that acts as a kernel): with the border reads, over budget.
            auto=False,
        )
    )
    cases.append(
        Case(
            "patches1d_reflect",
            lambda key: eqxconv.ExtractPatches(
                1, 5, padding="SAME", padding_mode="REFLECT"
            ),
            (2, 8, 64),
            ("x",),
            _dense_like(1, 8, 5, padding="SAME"),
        )
    )
    cases.append(
        Case(
            "depthwise3d",
            _conv(3, 4, 4, 3, padding="SAME", groups=4),
            (2, 4, 16, 8, 8),
            ("x", None, None),
            _dense_like(3, 4, 3, padding="SAME"),
        )
    )
    two = ((2, 2), ("x", "y"))
    cases.append(
        Case(
            "depthwise_2axes",
            _conv(2, 8, 8, 3, padding="SAME", groups=8),
            img,
            ("x", "y"),
            _dense_like(2, 8, 3, padding="SAME"),
            mesh=two,
        )
    )
    cases.append(
        Case(
            "batch_and_spatial",
            _conv(2, 8, 8, 3, padding="SAME", groups=8),
            (4, 8, 32, 16),
            ("x", None),
            _dense_like(2, 8, 3, padding="SAME"),
            mesh=((2, 4), ("data", "x")),
            batch="data",
        )
    )
    cases.append(
        Case(
            "batch_only_depthwise_transpose",
            lambda key: eqx.nn.Sequential(
                [
                    eqxconv.Conv2d(8, 8, 3, padding="SAME", groups=8, key=key),
                    eqx.nn.Lambda(jax.nn.relu),
                    eqxconv.ConvTranspose2d(8, 8, 4, stride=2, padding=1, key=key),
                    eqxconv.ExtractPatches(2, 3, padding="SAME"),
                ]
            ),
            (8, 8, 32, 16),
            (None, None),
            _dense_like(2, 8, 3, padding="SAME"),
            mesh=((8,), ("data",)),
            batch="data",
        )
    )
    cases.append(
        Case(
            "reflect_2axes",
            _conv(2, 8, 8, 3, padding="SAME", padding_mode="REFLECT"),
            img,
            ("x", "y"),
            _dense_like(2, 8, 3, padding="SAME"),
            mesh=two,
        )
    )
    cases.append(
        Case(
            "transpose_k4s2",
            _transpose(2, 8, 4, stride=2, padding=1),
            (2, 8, 16, 8),
            ("x", None),
            _dense_transpose(2, 8, 4, stride=2, padding=1),
        )
    )
    for impl in ("phase", "interior", "lhs_dilation"):
        cases.append(
            Case(
                f"transpose_{impl}",
                _transpose(2, 8, 4, stride=2, padding=1, impl=impl),
                (2, 8, 16, 8),
                ("x", None),
                _dense_transpose(2, 8, 4, stride=2, padding=1),
                auto=False,
            )
        )
    cases.append(
        Case(
            "transpose_reflect",
            _transpose(2, 8, 3, padding="SAME", padding_mode="REFLECT"),
            img,
            ("x", None),
            _dense_transpose(2, 8, 3, padding="SAME"),
            auto=False,
        )
    )
    cases.append(
        Case(
            "patches_k3",
            lambda key: eqxconv.ExtractPatches(2, 3, padding="SAME"),
            img,
            ("x", None),
            _dense_like(2, 8, 3, padding="SAME"),
        )
    )
    cases.append(
        Case(
            "fold_k3",
            lambda key: eqxconv.FoldPatches(2, (32, 16), 3, padding=1),
            (2, 8 * 9, 32, 16),
            ("x", None),
            lambda key: eqxconv.Conv2d(8 * 9, 8, 3, padding=1, impl="xla", key=key),
        )
    )
    cases.append(
        Case(
            "local_k3",
            lambda key: eqxconv.ConvLocal(
                2, 8, 8, 3, padding="SAME", in_spatial_shape=(32, 16), key=key
            ),
            img,
            ("x", None),
            _dense_like(2, 8, 3, padding="SAME"),
            local=True,
        )
    )
    cases.append(
        Case(
            "patches_3d_2axes",
            lambda key: eqxconv.ExtractPatches(3, 3, padding="SAME", stride=2),
            (2, 2, 16, 16, 4),
            ("x", "y", None),
            _dense_like(3, 2, 3, padding="SAME", stride=2),
            mesh=((2, 2), ("x", "y")),
        )
    )
    cases.append(
        Case(
            "local_1d_circular",
            lambda key: eqxconv.ConvLocal(
                1, 4, 4, 5, padding="CIRCULAR", in_spatial_shape=(64,), key=key
            ),
            (2, 4, 64),
            ("x",),
            _dense_like(1, 4, 5, padding="SAME"),
            local=True,
            auto=False,
        )
    )
    cases.append(
        Case(
            "transpose_3d_circular",
            _transpose(3, 4, 3, stride=2, padding="CIRCULAR"),
            (2, 4, 8, 4, 4),
            ("x", None, None),
            _dense_transpose(3, 4, 3, stride=2, padding="SAME"),
            auto=False,
        )
    )
    cases.append(
        Case(
            "transpose_2axes_depthwise",
            lambda key: eqxconv.ConvTranspose2d(
                8, 8, 3, stride=2, padding=1, output_padding=1, groups=8, key=key
            ),
            (2, 8, 16, 8),
            ("x", "y"),
            _dense_transpose(2, 8, 3, stride=2, padding=1, output_padding=1),
            mesh=((2, 2), ("x", "y")),
        )
    )
    return cases


def _shard_params(model: Any, spec: Any, mesh: Any, local: bool) -> Any:
    """ConvLocal's per-position weight and bias split as its output is."""
    if not local:
        return model
    weight = jax.device_put(model.weight, NamedSharding(mesh, P(None, None, *spec)))
    bias = jax.device_put(model.bias, NamedSharding(mesh, P(None, *spec)))
    return eqx.tree_at(lambda m: (m.weight, m.bias), model, (weight, bias))


def _programs(model: Any, x: Any) -> tuple[Any, Any, Any]:
    def forward(model, x):
        return jax.vmap(model)(x)

    def loss(model, x):
        return jnp.sum(jax.vmap(model)(x) ** 2)

    params, static = eqx.partition(model, eqx.is_inexact_array)

    def fwd(params, x):
        return forward(eqx.combine(params, static), x)

    def grad(params, x):
        return jax.grad(lambda p, x: loss(eqx.combine(p, static), x), (0, 1))(params, x)

    return jax.jit(fwd), jax.jit(grad), params


def _measure(fn: Any, *args: Any) -> dict[str, int]:
    return count_collectives(fn.lower(*args).compile().as_text())


def run_case(case: Case, mode: str) -> dict[str, Any]:
    shape, names = case.mesh
    types = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    mesh = jax.make_mesh(shape, names, axis_types=(types,) * len(names))
    spec = case.split
    x_spec = P(case.batch, None, *spec)
    key_model, key_x = jr.split(jr.key(0))
    model = case.make(key_model)
    dense = case.dense(key_model)
    x = jr.normal(key_x, case.shape)
    fwd, grad, params = _programs(model, x)
    want_y = fwd(params, x)
    want_g = grad(params, x)
    result: dict[str, Any] = dict(name=case.name, mode=mode)
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, x_spec))
        sharded_model = _shard_params(model, spec, mesh, case.local)
        fwd, grad, params = _programs(sharded_model, xs)
        result["fwd"] = _measure(fwd, params, xs)
        result["grad"] = _measure(grad, params, xs)
        y = fwd(params, xs)
        g = grad(params, xs)
        out_spec = tuple(y.sharding.spec)[2:]
        out_spec = out_spec + (None,) * (len(spec) - len(out_spec))
        result["out_spec"] = [str(s) for s in out_spec]
        result["kept_sharding"] = out_spec == tuple(spec)
        if mode == "explicit":
            result["typed_spec"] = str(jax.typeof(y).sharding.spec)
        # Relative to each array's scale: gradients are larger than outputs.
        result["error"] = max(
            float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
            for a, b in zip(
                jax.tree.leaves((y, g)), jax.tree.leaves((want_y, want_g)), strict=True
            )
        )
    # XLA's own partitioning, in automatic mode, is the budget for both modes.
    key = (repr(dense), case.shape, case.mesh, x_spec)
    if key not in _DENSE:
        auto = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))
        with jax.set_mesh(auto):
            xs = jax.device_put(x, NamedSharding(auto, x_spec))
            dfwd, dgrad, dparams = _programs(dense, xs)
            _DENSE[key] = (_measure(dfwd, dparams, xs), _measure(dgrad, dparams, xs))
    result["dense_fwd"], result["dense_grad"] = _DENSE[key]
    return result


# The dense convolutions' counts, by geometry: many cases share one.
_DENSE: dict[Any, tuple[dict[str, int], dict[str, int]]] = {}


def refusals() -> list[dict[str, str]]:
    """Explicitly sharded inputs that cannot be split without a gather: each must
    raise a `ValueError`, not gather."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    x = jnp.ones((8, 32, 16))
    w = jnp.ones((8, 8, 11, 1))
    calls = {
        # Shards of 4 rows; a halo of 5.
        "halo": lambda x: eqxconv.conv(x, w, padding="SAME"),
        # Shards of 4 rows, stride 3.
        "stride": lambda x: eqxconv.conv(x, w[..., :3, :], stride=3, padding=1),
        "input_dilation": lambda x: eqxconv.conv(x, w[..., :3, :], input_dilation=2),
    }
    results = []
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P(None, "x", None)))
        for name, call in calls.items():
            try:
                jax.jit(call).lower(xs)
                results.append(dict(name=name, raised=""))
            except ValueError as error:
                results.append(dict(name=name, raised=str(error)))
    return results


def main(argv: list[str]) -> None:
    if argv == ["refusals"]:
        for result in refusals():
            print(json.dumps(result), flush=True)
        return
    modes = ("auto", "explicit")
    wanted = [a for a in argv if a not in (*modes, "budgeted")]
    modes = tuple(a for a in argv if a in modes) or modes
    for case in _cases():
        if wanted and case.name not in wanted:
            continue
        for mode in modes:
            if mode == "auto" and not case.auto and "budgeted" in argv:
                continue
            try:
                result = run_case(case, mode)
            except Exception as error:  # reported, and failed by the test
                result = dict(name=case.name, mode=mode, raised=repr(error)[:500])
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
