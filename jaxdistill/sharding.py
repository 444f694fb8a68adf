"""The device mesh and the logical-axis rules that place parameters and batches on it.

Models name their parameter axes logically ("embed", "mlp", "classes", ...); a config maps those
names to mesh axes ("data", "fsdp", "tensor"), separately for student and teacher. A parameter
axis whose size the mesh axes do not divide is replicated instead, so one rule set serves every
model size.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdistill.errors import DistillError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, Any]]


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (all devices by default); -1 takes the rest."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise DistillError(
            f"at most one of config.mesh.{{data,fsdp,tensor}} may be -1, got {sizes}")
    known = math.prod(size for size in sizes if size != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise DistillError(f"config.mesh {dict(zip(MESH_AXES, sizes))} does not divide the"
                               f" {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise DistillError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)}"
                           f" devices but {len(devices)} are available; use -1 for one axis")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drops the mesh axes that do not evenly divide their dimension (that dimension replicates)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        kept = tuple(a for a in names if dim % mesh.shape[a] == 0)
        while kept and dim % math.prod(mesh.shape[a] for a in kept):
            kept = kept[:-1]
        fitted.append(kept if len(kept) > 1 else (kept[0] if kept else None))
    return P(*fitted)


def _logical_names(boxed_tree) -> set[str]:
    specs = nn.get_partition_spec(boxed_tree)
    leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    return {name for spec in leaves for name in spec if isinstance(name, str)}


def param_shardings(boxed_abstract_params, mesh: Mesh, rules: Rules, owner: str):
    """NamedShardings for a tree of logically-annotated abstract parameters."""
    rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)
    missing = _logical_names(boxed_abstract_params) - {name for name, _ in rules}
    if missing:
        raise DistillError(
            f"the {owner}'s parameters use logical axes {sorted(missing)} that"
            f" config.sharding.{owner} does not map; add a rule such as"
            f" ('{sorted(missing)[0]}', None)")
    logical_specs = nn.get_partition_spec(boxed_abstract_params)
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    abstract = nn.unbox(boxed_abstract_params)
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh)),
        mesh_specs, abstract, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis over data × fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles global arrays from each process's rows of the batch."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
