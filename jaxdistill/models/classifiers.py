"""Image classifiers for the Hinton KD setting: the paper's ReLU MLP and a small CNN."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def _dense(features: int, axes: tuple[str, str], name: str | None = None) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
        name=name,
    )


class MLP(nn.Module):
    """Hinton et al.'s MNIST nets: ReLU hidden layers with dropout on inputs and hidden units."""

    num_classes: int
    hidden: Sequence[int] = (1200, 1200)
    dropout: float = 0.0
    input_dropout: float = 0.0

    @nn.compact
    def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = images.reshape(images.shape[0], -1)
        x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
        in_axis = "embed"
        for width in self.hidden:
            x = nn.relu(_dense(width, (in_axis, "mlp"))(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
            in_axis = "mlp_in"
        return _dense(self.num_classes, (in_axis, "classes"), name="head")(x)


class CNN(nn.Module):
    """A small conv net: 3×3 conv + ReLU + 2×2 max-pool blocks, global average pooling, a head."""

    num_classes: int
    channels: Sequence[int] = (32, 64)
    dense: int = 128
    dropout: float = 0.0

    @nn.compact
    def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = images
        in_axis = None  # the image channels are too few to be worth sharding
        for channels in self.channels:
            kernel_init = nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, in_axis, "conv_out"))
            x = nn.Conv(channels, (3, 3), kernel_init=kernel_init,
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                               ("conv_out",)))(x)
            in_axis = "conv_in"
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="SAME")
        x = jnp.mean(x, axis=(1, 2))
        x = nn.relu(_dense(self.dense, ("embed", "mlp"))(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return _dense(self.num_classes, ("mlp_in", "classes"), name="head")(x)


def penultimate_features(module: MLP, params, images: jnp.ndarray) -> jnp.ndarray:
    """An MLP classifier's last hidden layer (after its ReLU, no dropout): the feature space of
    the digits FD, the small-scale stand-in for FID's Inception features."""
    last = f"Dense_{len(module.hidden) - 1}"
    _, state = module.apply(params, images, train=False, capture_intermediates=(
        lambda layer, method: layer.name == last and method == "__call__"),
        mutable=["intermediates"])
    return nn.relu(state["intermediates"][last]["__call__"][0])
