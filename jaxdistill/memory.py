"""Per-device memory of a run, estimated before anything compiles, and the check that it fits.

The estimate counts the student's params, optimizer state and EMA, the method's own state, the
teacher's params (accounted separately) and, given a batch, the step's gradients and the
activations its backward pass keeps (the residuals of the loss's VJP that carry the batch axis,
split over the batch shards). Tensor parallelism also splits some activations, which this does
not see: with mesh.tensor > 1 the activation estimate is an upper bound.
"""

from __future__ import annotations

import math

import jax

from jaxdistill.errors import DistillError


def bytes_per_device(tree) -> int:
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def activation_bytes(loss_fn, abstract_state, teacher_params, batch: dict, mesh) -> int:
    """Bytes per device of the residuals of `loss_fn`'s VJP that carry the batch axis: those
    that grow with the batch, found by tracing the VJP at the batch and at twice its size."""
    def vjp(params, teacher_params, batch, method_state):
        def loss(p):
            return loss_fn(p, teacher_params, batch, jax.random.key(0), 0, method_state)[0]
        return jax.vjp(loss, params)[1]

    def residuals(batch):
        return jax.tree.leaves(jax.eval_shape(vjp, abstract_state.params, teacher_params, batch,
                                              abstract_state.method_state))

    doubled = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((2 * x.shape[0], *x.shape[1:]), x.dtype), batch)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    return sum(math.prod(x.shape) * x.dtype.itemsize // shards
               for x, twice in zip(residuals(batch), residuals(doubled))
               if math.prod(twice.shape) == 2 * math.prod(x.shape) > 0)


def format_bytes(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.2f} MiB"


def format_report(report: dict[str, int]) -> str:
    return ", ".join(f"{name} {format_bytes(size)}" for name, size in report.items() if size)


def device_limit(mesh, configured_gib: float) -> int | None:
    """config.mesh.device_memory_gib when set, else what the device reports (CPUs report none)."""
    if configured_gib:
        return int(configured_gib * 2**30)
    local = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    stats = local.memory_stats() or {}
    return stats.get("bytes_limit")


def check_fits(report: dict[str, int], limit: int | None) -> None:
    """Refuses, before anything compiles, a layout whose estimate exceeds a device's memory."""
    total = sum(report.values())
    if limit is None or total <= limit:
        return
    raise DistillError(
        f"this layout needs about {format_bytes(total)} per device"
        f" ({format_report(report)}) but a device has {format_bytes(limit)}; shard the student"
        " over more devices (config.mesh.fsdp, config.mesh.tensor), shard the teacher too"
        " (config.sharding.teacher), or lower config.batch_size")
