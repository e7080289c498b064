"""Locally connected layers: eqxconv's `ConvLocal` against
`lax.conv_general_dilated_local`, Flax's `ConvLocal` and torch `F.unfold` + einsum,
batch 8 on CPU.

Times forward, forward+backward (value and gradients of `sum(y * r)`, for a fixed
random `r`, with respect to the weight, the bias and the input) and cold compile; peak
memory is what XLA plans for the jitted forward+backward (arguments + outputs +
temporaries).
Run with `python -m benchmarks.local`; the ratios are time / eqxconv's.
"""

import argparse
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import torch
import torch.nn.functional as F

import eqxconv
from benchmarks._timing import (
    compile_seconds,
    markdown,
    median_time,
    peak_bytes,
    Table,
)


def _no_sync(out: Any) -> Any:
    return out


def case(
    name: str,
    batch: int,
    cin: int,
    cout: int,
    size: int,
    k: int,
    tables: dict[str, Table],
    repeats: int,
    chunk_sizes: tuple[int, ...] = (),
) -> None:
    layer = eqxconv.ConvLocal2d(
        cin, cout, k, in_spatial_shape=(size, size), key=jr.key(0)
    )
    assert layer.bias is not None
    out = layer.out_spatial_shape((size, size))
    xs = jr.normal(jr.key(1), (batch, cin, size, size))
    r = jr.normal(jr.key(2), (batch, cout, *out))
    w, b = layer.weight, layer.bias

    def ours(chunk_size: int | None) -> Callable[..., jax.Array]:
        def apply(w: jax.Array, b: jax.Array, xs: jax.Array) -> jax.Array:
            model = eqxconv.ConvLocal2d(
                cin,
                cout,
                k,
                in_spatial_shape=(size, size),
                chunk_size=chunk_size,
                key=jr.key(0),
            )
            model = eqx_tree_at(model, w, b)
            return jax.vmap(model)(xs)

        return apply

    def lax_local(w: jax.Array, b: jax.Array, xs: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated_local(
            xs, w, (1, 1), "VALID", (k, k), dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        return y + b[None]

    # Flax in its own layout: NHWC input, kernel (*out_spatial, in * k * k, out).
    flax_layer = nn.ConvLocal(cout, (k, k), padding="VALID")
    wf, bf = jnp.transpose(w, (2, 3, 1, 0)), jnp.transpose(b, (1, 2, 0))
    xf, rf = jnp.moveaxis(xs, 1, -1), jnp.moveaxis(r, 1, -1)

    def flax_apply(w: jax.Array, b: jax.Array, xs: jax.Array) -> jax.Array:
        y = flax_layer.apply({"params": {"kernel": w, "bias": b}}, xs)
        return jnp.asarray(y)

    variants: dict[str, tuple[Callable[..., jax.Array], tuple[jax.Array, ...], Any]] = {
        "eqxconv": (ours(None), (w, b, xs), r)
    }
    for chunk in chunk_sizes:
        variants[f"eqxconv chunk={chunk}"] = (ours(chunk), (w, b, xs), r)
    variants["lax"] = (lax_local, (w, b, xs), r)
    variants["flax"] = (flax_apply, (wf, bf, xf), rf)
    fwd, both, comp, mem = {}, {}, {}, {}
    for label, (fn, args, rr) in variants.items():

        def loss(
            w: jax.Array, b: jax.Array, xs: jax.Array, rr: jax.Array, fn=fn
        ) -> Any:
            return jnp.sum(fn(w, b, xs) * rr)

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
        fwd[label] = median_time(jax.jit(fn), *args, repeats=repeats)
        both[label] = median_time(jax.jit(grad), *args, rr, repeats=repeats)
        comp[label] = compile_seconds(grad, *args, rr)
        mem[label] = peak_bytes(grad, *args, rr)

    # torch: unfold + a per-position contraction.
    wt = torch.from_numpy(np.array(w)).reshape(cout, cin * k * k, -1)
    bt = torch.from_numpy(np.array(b)).reshape(cout, -1)
    xt = torch.from_numpy(np.array(xs))
    rt = torch.from_numpy(np.array(r)).reshape(batch, cout, -1)

    def torch_local(wt: torch.Tensor, bt: torch.Tensor, xt: torch.Tensor) -> Any:
        return torch.einsum("ojl,bjl->bol", wt, F.unfold(xt, k)) + bt

    def torch_both(wt: torch.Tensor, bt: torch.Tensor, xt: torch.Tensor) -> Any:
        leaves = [t.detach().requires_grad_(True) for t in (wt, bt, xt)]
        loss = (torch_local(*leaves) * rt).sum()
        loss.backward()
        return loss, [t.grad for t in leaves]

    with torch.no_grad():
        fwd["torch"] = median_time(
            torch_local, wt, bt, xt, repeats=repeats, sync=_no_sync
        )
    both["torch"] = median_time(torch_both, wt, bt, xt, repeats=repeats, sync=_no_sync)
    tables["fwd"].add(name, fwd)
    tables["fwd+bwd"].add(name, both)
    tables["compile"].add(name, comp)
    # Table prints seconds as ms: store MiB / 1000 so that the "ms" figure reads MiB.
    tables["peak"].add(name, mem)


def eqx_tree_at(model: Any, w: jax.Array, b: jax.Array) -> Any:
    import equinox as eqx

    return eqx.tree_at(lambda m: (m.weight, m.bias), model, (w, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(2)
    titles = ["fwd", "fwd+bwd", "compile", "peak"]
    tables = {
        t: Table(f"ConvLocal2d {t}", "eqxconv", memory=t == "peak") for t in titles
    }
    tables["compile"].title = "ConvLocal2d cold compile of jitted fwd+bwd"
    tables["peak"].title = "ConvLocal2d peak memory of jitted fwd+bwd"
    cases = [
        ("16->16 k=3 32x32", 8, 16, 16, 32, 3, (300,)),
        ("3->16 k=5 64x64", 8, 3, 16, 64, 5, (1000,)),
    ]
    for name, batch, cin, cout, size, k, chunks in cases:
        print(f"\n-- {name}, batch {batch}", flush=True)
        case(name, batch, cin, cout, size, k, tables, args.repeats, chunks)
    print(markdown([tables[t] for t in titles if t != "peak"]))
    print(markdown([tables["peak"]]))


if __name__ == "__main__":
    main()
