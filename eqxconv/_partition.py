"""Inputs sharded along spatial axes (`jax.sharding`), in both sharding modes.

Automatic mode: XLA's SPMD partitioner splits `lax.conv_general_dilated` along a
sharded spatial axis with halo exchanges, but not the library's own lowerings (shift
sums, FFTs, phase interleaving, patch stacks), which it gathers. So `impl='auto'`
takes the lowerings it partitions wherever the input may be sharded
([`may_be_partitioned`][]); the rules are in `_choose`.

Explicit mode: the input's type names its sharding, so each op runs per shard under
`jax.shard_map`, after exchanging halos with the neighbouring shards by
`lax.ppermute` ([`splits_spatially`][]). The halo widths come from the resolved
padding and the dilated kernel's extent; periodic padding wraps around the ring of
shards; reflected, replicated and zero padding are applied by the shards at either
end. Transposed ops are the adjoint (`jax.vjp`) of their sharded forward op
([`sharded_adjoint`][]), so their communication is the forward's, reversed.
"""

import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.lax as lax
import jax.numpy as jnp
from jax.core import Tracer
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from jaxtyping import Array

from ._checks import check_fits
from ._geometry import dilated_shape, output_shape, PaddingPairs, resolve_padding
from ._padding import pad


_Run = TypeVar("_Run", bound=Callable[..., Array])


def _names(entry: Any) -> tuple[str, ...]:
    """The mesh axes one entry of a `PartitionSpec` splits its dimension over."""
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def _sharding(x: Any) -> Any:
    """The sharding in `x`'s type, if it has one (explicit mode), else `None`."""
    try:
        return getattr(jax.typeof(x), "sharding", None)
    except TypeError:
        return None


def reshape(x: Array, shape: Sequence[int]) -> Array:
    """`x.reshape(shape)`, for the lowerings' reshapes, whose axes are never split.

    JAX's explicit-mode reshape rule refuses some reshapes that merge or split
    several axes, even where none of them is split (under `jax.vmap` of a batch
    split over a mesh axis), unless it is told the output's sharding: unsplit."""
    shape = tuple(shape)
    if -1 in shape:
        known = math.prod(size for size in shape if size != -1)
        shape = tuple(x.size // known if size == -1 else size for size in shape)
    sharding = _sharding(x)
    mesh = getattr(sharding, "mesh", None)
    if (
        mesh is not None
        and AxisType.Explicit in tuple(mesh.axis_types)
        and all(entry is None for entry in sharding.spec)
    ):
        return lax.reshape(x, shape, out_sharding=PartitionSpec())
    return x.reshape(shape)


@dataclasses.dataclass(frozen=True)
class SpatialSplit:
    """How an input's spatial dimensions are split in its type: the abstract mesh
    and, per spatial dimension, the mesh axes over which it is split (`()` if
    whole)."""

    mesh: Any
    names: tuple[tuple[str, ...], ...]

    def spec(self, leading: int = 1) -> PartitionSpec:
        """The `PartitionSpec` of an array with `leading` unsplit axes before the
        spatial ones."""
        entries = [(n[0] if len(n) == 1 else n) if n else None for n in self.names]
        return PartitionSpec(*([None] * leading), *entries)

    def count(self, dim: int) -> int:
        """Into how many shards spatial dimension `dim` is split."""
        return math.prod(self.mesh.shape[name] for name in self.names[dim])

    @property
    def axis_names(self) -> frozenset[str]:
        return frozenset(name for names in self.names for name in names)


def explicit_split(x: Any) -> SpatialSplit | None:
    """The explicit sharding of `x`'s spatial axes (all but the first), or `None`
    when its type names none: automatic mode, inside `jax.shard_map`, a replicated or
    batch-only sharding."""
    sharding = _sharding(x)
    if sharding is None or not hasattr(sharding, "spec"):
        return None
    mesh = sharding.mesh
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    names = tuple(
        tuple(
            name
            for name in _names(entry)
            if mesh._name_to_type[name] == AxisType.Explicit
        )
        for entry in spec[1:]
    )
    if not any(names):
        return None
    return SpatialSplit(mesh, names)


# Set while a shard's own computation is traced, where nothing is partitioned.
_in_shard = contextvars.ContextVar("eqxconv_in_shard", default=False)


def _as_local(fn: Callable[..., Array]) -> Callable[..., Array]:
    @functools.wraps(fn)
    def local(*args: Array) -> Array:
        token = _in_shard.set(True)
        try:
            return fn(*args)
        finally:
            _in_shard.reset(token)

    return local


def may_be_partitioned(x: Any) -> bool:
    """Whether XLA's partitioner may split `x`, so that `impl='auto'` should take a
    lowering that it partitions well.

    A concrete array says so by its sharding. A traced one in automatic mode does
    not say (the partitioner decides after tracing), so any trace that may run on
    more than one device counts. In explicit mode the type says: spatially sharded
    inputs run per shard ([`splits_spatially`][]), where nothing is partitioned.
    """
    if _in_shard.get():
        return False
    if isinstance(x, jax.Array) and not isinstance(x, Tracer):
        return not x.sharding.is_fully_replicated
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        types = mesh._name_to_type.values()
        if all(t != AxisType.Auto for t in types):
            return False
        return math.prod(mesh.shape.values()) > 1
    return jax.device_count() > 1


def pads_by_border_reads(
    x: Any, pairs: PaddingPairs, padding_mode: str, input_dilation: Sequence[int]
) -> bool:
    """Whether an op applies `padding_mode` to `x` as zero padding plus the window
    reads zero padding misses (`_padding.border_reads`) instead of `pad`: for
    one-dimensional inputs that XLA's partitioner may split (and no input dilation).

    `jnp.pad`'s reflected, replicated and wrapped borders are slices concatenated
    onto the axis, which the partitioner re-splits with halo exchanges of their own;
    zero padding is the convolution's own, split with the convolution's halo, and
    the border reads are one entry each. With two or three spatial axes the split
    axes are not known when tracing, and reads along one axis cost more exchanges
    than `jnp.pad` when another axis is the split one (`docs/scaling.md`), so there
    `pad`."""
    return (
        padding_mode != "ZEROS"
        and len(pairs) == 1
        and pairs[0] != (0, 0)
        and all(d == 1 for d in input_dilation)
        and may_be_partitioned(x)
    )


@dataclasses.dataclass(frozen=True)
class _Halo:
    """The halos of one split spatial dimension: `low` entries from the previous
    shard, `high` from the next (negative: that many of this shard's own last
    entries are not read)."""

    dim: int
    names: tuple[str, ...]
    count: int
    low: int
    high: int


def _plan(
    where: str,
    shape: tuple[int, ...],
    split: SpatialSplit,
    pairs: PaddingPairs,
    out_shape: tuple[int, ...],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    input_dilation: Sequence[int],
    padding_mode: str,
) -> list[_Halo]:
    """The halos each split dimension needs for every shard to compute its own,
    equal part of the output; a `ValueError` where that part is not a whole number
    of strides or a halo is wider than a shard, rather than a silent gather."""
    halos = []
    for dim, names in enumerate(split.names):
        if not names:
            continue
        size, count = shape[dim + 1], split.count(dim)
        k, s, d = kernel_size[dim], stride[dim], dilation[dim]
        low, _ = pairs[dim]
        extent = (k - 1) * d + 1
        local = size // count
        high = extent - s - low
        axis = f"spatial dimension {dim} (of size {size}, split over {names})"
        reshard = (
            "; reshard the input (`jax.sharding.reshard`) so that this dimension is "
            "not split, or split it into fewer shards."
        )
        if input_dilation[dim] != 1:
            raise ValueError(
                f"{where}: an input dilation along {axis} is not supported on "
                f"spatially sharded inputs{reshard}"
            )
        if size % count or local % s or out_shape[dim] * s != size:
            raise ValueError(
                f"{where}: along {axis}, each of the {count} shards must compute an "
                f"equal, whole number of outputs, which needs the stride ({s}) to "
                f"divide the shard size ({size}/{count}) and the output size "
                f"({out_shape[dim]}) to be the input size over the stride{reshard}"
            )
        # `REFLECT` reads one entry beyond its halo's width.
        limit = local - 1 if padding_mode == "REFLECT" else local
        if low < 0 or low > limit or high > limit:
            raise ValueError(
                f"{where}: along {axis}, each shard needs {low} entries from the "
                f"previous shard and {high} from the next (padding {pairs[dim]}, "
                f"dilated kernel extent {extent}, stride {s}), more than a shard "
                f"of {local} holds{reshard}"
            )
        halos.append(_Halo(dim, names, count, low, high))
    return halos


def _edge(x: Array, axis: int, width: int, before: bool, padding_mode: str) -> Array:
    """The `width` entries that `padding_mode` pads before (or after) `x` along
    `axis`."""
    pairs = [(0, 0)] * (x.ndim - 1)
    pairs[axis - 1] = (width, 0) if before else (0, width)
    padded = pad(x, tuple(pairs), padding_mode)  # pyright: ignore[reportArgumentType]
    start = 0 if before else x.shape[axis]
    return lax.slice_in_dim(padded, start, start + width, axis=axis)


def _with_halos(x: Array, halo: _Halo, padding_mode: str) -> Array:
    """This shard of `x` with its neighbours' entries attached along the halo's
    dimension (the padding itself on the shards at either end)."""
    axis, n, size = halo.dim + 1, halo.count, x.shape[halo.dim + 1]
    ring = padding_mode == "CIRCULAR"
    index = lax.axis_index(halo.names)
    pieces = [x]

    def receive(part: Array, perm: list[tuple[int, int]], end: int) -> Array:
        # `ppermute` leaves zeros on the shard nobody sends to: zero padding.
        got = lax.ppermute(part, halo.names, perm)
        if padding_mode in ("REFLECT", "REPLICATE"):
            edge = _edge(x, axis, part.shape[axis], end == 0, padding_mode)
            got = lax.select(jnp.broadcast_to(index == end, got.shape), edge, got)
        return got

    if halo.low > 0:
        tail = lax.slice_in_dim(x, size - halo.low, size, axis=axis)
        perm = [(i, i + 1) for i in range(n - 1)] + ([(n - 1, 0)] if ring else [])
        pieces.insert(0, receive(tail, perm, 0))
    if halo.high > 0:
        head = lax.slice_in_dim(x, 0, halo.high, axis=axis)
        perm = [(i + 1, i) for i in range(n - 1)] + ([(0, n - 1)] if ring else [])
        pieces.append(receive(head, perm, n - 1))
    x = jnp.concatenate(pieces, axis=axis) if len(pieces) > 1 else x
    if halo.high < 0:
        x = lax.slice_in_dim(x, 0, x.shape[axis] + halo.high, axis=axis)
    return x


def splits_spatially(*, local_weight: bool) -> Callable[[_Run], _Run]:
    """Decorate a `run_*` function `run(where, x, [weight,] **arguments)` of a
    sliding-window op so that, on an input whose type splits spatial axes (explicit
    mode), it runs per shard with halos exchanged, returning its output split as the
    input is. `local_weight`: the weight is per output position (`ConvLocal`), split
    as the output is; otherwise it is replicated."""

    def decorator(run: _Run) -> _Run:
        @functools.wraps(run)
        def wrapper(where: str, x: Array, *args: Array, **arguments: Any) -> Array:
            split = explicit_split(x)
            if split is None:
                return run(where, x, *args, **arguments)
            if args:
                kernel_size = arguments.get("kernel_size", args[0].shape[2:])
            else:
                kernel_size = arguments["kernel_size"]
            stride, dilation = arguments["stride"], arguments["dilation"]
            input_dilation = arguments["input_dilation"]
            extent = dilated_shape(x.shape[1:], input_dilation)
            pairs = resolve_padding(
                arguments["padding"], extent, kernel_size, stride, dilation
            )
            out_shape = check_fits(
                where, x.shape, output_shape, extent, pairs, kernel_size, stride,
                dilation,
            )  # fmt: skip
            mode = arguments["padding_mode"]
            halos = _plan(
                where, x.shape, split, pairs, out_shape, kernel_size, stride,
                dilation, input_dilation, mode,
            )  # fmt: skip
            # The halos carry the split dimensions' padding.
            split_dims = {halo.dim for halo in halos}
            local_pairs = tuple(
                (0, 0) if dim in split_dims else pair for dim, pair in enumerate(pairs)
            )

            def local(x: Array, *args: Array) -> Array:
                for halo in halos:
                    x = _with_halos(x, halo, mode)
                return run(where, x, *args, **(arguments | {"padding": local_pairs}))

            weight_specs = tuple(
                split.spec(leading=2) if local_weight else PartitionSpec() for _ in args
            )
            if local_weight:
                args = tuple(
                    jax.sharding.reshard(w, NamedSharding(split.mesh, spec))
                    for w, spec in zip(args, weight_specs, strict=True)
                )

            def call(x: Array, *args: Array) -> Array:
                # The mesh in context: inside `auto_axes` its types differ.
                mesh = jax.sharding.get_abstract_mesh()
                return jax.shard_map(
                    _as_local(local),
                    mesh=split.mesh if mesh.empty else mesh,
                    in_specs=(split.spec(), *weight_specs),
                    out_specs=split.spec(),
                    axis_names=split.axis_names,
                )(x, *args)

            # `shard_map` reshards the explicit axes it leaves alone to its
            # `in_specs`, which cannot name them: it would gather a batch split
            # over one (and under `jax.vmap` the batch is not even in sight). So
            # those axes are made automatic around it, where XLA keeps the batch
            # split as it comes.
            others = tuple(
                name
                for name, kind in zip(
                    split.mesh.axis_names, split.mesh.axis_types, strict=True
                )
                if kind == AxisType.Explicit and name not in split.axis_names
            )
            if not others:
                return call(x, *args)
            automatic: Callable[..., Array] = jax.sharding.auto_axes(
                call, axes=others, out_sharding=split.spec()
            )  # pyright: ignore[reportAssignmentType]
            return automatic(x, *args)

        return wrapper  # pyright: ignore[reportReturnType]

    return decorator


def sharded_adjoint(
    forward: Callable[[Array], Array],
    cotangent: Array,
    split: SpatialSplit,
    primal_shape: tuple[int, ...],
) -> Array:
    """The adjoint of the linear `forward`, whose input has `primal_shape` split as
    `split` (so that `forward` runs per shard), applied to `cotangent`."""
    primal = jnp.zeros(
        primal_shape,
        cotangent.dtype,
        out_sharding=NamedSharding(split.mesh, split.spec()),
    )
    out, pullback = jax.vjp(forward, primal)
    if out.shape != cotangent.shape:
        raise ValueError(
            f"the forward op of this transposed op maps {primal_shape} to "
            f"{out.shape}, not to the input's shape {cotangent.shape}: with an "
            "`output_padding` of at least the stride, the transposed op is not the "
            "adjoint of one split forward op; reshard the input so that its spatial "
            "axes are not split."
        )
    (result,) = pullback(cotangent)
    return result
