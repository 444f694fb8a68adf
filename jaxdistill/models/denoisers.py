"""Denoiser networks for diffusion, flow and consistency models.

Every denoiser is called as `module.apply(params, x_in, c_noise, label=None, *, train,
interval=None)`: `x_in` the (preconditioned) noisy input, `c_noise` [B] the time as the
parameterization encodes it (`jaxdistill.diffusion`), `label` [B] class ids where the model is
class-conditional (id `num_classes` is the "no class" of classifier-free guidance), and
`interval` [B] the second time of two-time models (MeanFlow's t − r). `log_weight(c_noise)` is
sCM's learned adaptive loss weighting w_φ(t), present when `adaptive_weight` is set;
`with_logit=True` also returns DMD2's discriminator logit, when `gan_head` is set.
`DenoiserMLP` serves low-dimensional data (2-D toys); `DiT` images, with attention through the
flash kernel whose JVP sCM and MeanFlow need.
"""

from __future__ import annotations

import functools
import math

import einops
import flax.linen as nn
import jax.numpy as jnp

from jaxdistill import kernels


def positional_embedding(values: jnp.ndarray, dim: int, max_period: float = 10_000.0):
    """Transformer sinusoids of a per-example scalar, computed in float32 whatever the model's
    dtype (sCM: time embeddings in low precision make the JVP blow up)."""
    half = dim // 2
    frequencies = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = values.astype(jnp.float32)[:, None] * frequencies[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def dense(features: int, axes: tuple[str | None, str | None], *, zero: bool = False,
          name: str | None = None) -> nn.Dense:
    init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
    return nn.Dense(features, kernel_init=nn.with_logical_partitioning(init, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
                    name=name)


class Conditioning(nn.Module):
    """The vector every block is modulated by: time (+ interval) (+ class) embeddings."""

    width: int
    num_classes: int = 0
    interval_conditioning: bool = False
    embedding_dim: int = 128

    @nn.compact
    def __call__(self, c_noise, label=None, interval=None):
        def embed(values, name):
            h = positional_embedding(values, self.embedding_dim)
            h = nn.silu(dense(self.width, (None, "mlp"), name=f"{name}_in")(h))
            return dense(self.width, ("mlp_in", "embed"), name=f"{name}_out")(h)

        cond = embed(c_noise, "time")
        if self.interval_conditioning:
            cond += embed(jnp.zeros_like(c_noise) if interval is None else interval, "interval")
        if self.num_classes:
            table = nn.Embed(self.num_classes + 1, self.width, embedding_init=(
                nn.with_logical_partitioning(nn.initializers.normal(0.02), ("classes", "embed"))))
            null = jnp.full(c_noise.shape, self.num_classes, jnp.int32)
            cond += table(null if label is None else label.astype(jnp.int32))
        return cond


class AdaptiveWeight(nn.Module):
    """sCM's w_φ(t): a linear map of the time's positional embedding, zero at initialisation."""

    embedding_dim: int = 128

    @nn.compact
    def __call__(self, c_noise):
        features = positional_embedding(c_noise, self.embedding_dim)
        return dense(1, (None, None), zero=True)(features)[:, 0]


class ResidualBlock(nn.Module):
    """adaLN-modulated MLP block: x + gate·MLP(LN(x)·(1 + scale) + shift)."""

    width: int
    expansion: int = 2

    @nn.compact
    def __call__(self, x, cond):
        shift, scale, gate = jnp.split(
            dense(3 * self.width, ("embed", "mlp"), zero=True, name="modulation")(nn.silu(cond)),
            3, axis=-1)
        h = nn.LayerNorm(use_scale=False, use_bias=False)(x) * (1 + scale) + shift
        h = nn.silu(dense(self.expansion * self.width, ("embed", "mlp"))(h))
        return x + gate * dense(self.width, ("mlp_in", "embed"))(h)


class Head(nn.Module):
    """The output layer, zero at initialisation: maps [B, width] to `shape` (an MLP's flattened
    data) or [B, L, width] to [B, L, features] (a transformer's patches)."""

    @nn.compact
    def __call__(self, h, shape):
        if h.ndim == 3:
            return dense(shape[-1], ("embed", None), zero=True)(h)
        return dense(math.prod(shape[1:]), ("embed", None), zero=True)(h).reshape(shape)


class GANHead(nn.Module):
    """DMD2's discriminator head on a denoiser's last hidden features (mean over tokens)."""

    @nn.compact
    def __call__(self, h):
        features = h if h.ndim == 2 else jnp.mean(h, axis=1)
        features = nn.silu(nn.LayerNorm()(features))
        features = nn.silu(dense(features.shape[-1], ("embed", "mlp"))(features))
        return dense(1, ("mlp_in", None))(features)[:, 0]


class Denoiser(nn.Module):
    """What every denoiser shares: the conditioning vector, sCM's weighting head, DMD2's GAN
    head, and the adaLN output layer. Subclasses call `setup_shared()` in their setup and end
    with `finish(...)`; `with_logit=True` also returns the GAN head's logit."""

    width: int = 128
    num_classes: int = 0
    interval_conditioning: bool = False
    adaptive_weight: bool = False
    gan_head: bool = False

    def setup_shared(self):
        self.conditioning = Conditioning(self.width, self.num_classes, self.interval_conditioning)
        self.out_norm = nn.LayerNorm(use_scale=False, use_bias=False)
        self.out_modulation = dense(2 * self.width, ("embed", "mlp"), zero=True)
        self.head = Head()
        if self.adaptive_weight:
            self.weighting = AdaptiveWeight()
        if self.gan_head:
            self.discriminator = GANHead()

    def finish(self, h, cond, shape, with_logit: bool):
        out = self.output(h, cond, shape)
        if self.gan_head and (with_logit or self.is_initializing()):
            logit = self.discriminator(h)
            if with_logit:
                return out, logit
        return out

    def condition(self, c_noise, label, interval):
        if self.adaptive_weight and self.is_initializing():
            self.log_weight(c_noise)  # creates the weighting head's params with the rest
        return self.conditioning(c_noise, label, interval)

    def output(self, h, cond, shape):
        """Modulated norm, then the zero-initialised head; h is [B, width] or [B, L, width]."""
        modulation = self.out_modulation(nn.silu(cond))
        if h.ndim == 3:
            modulation = modulation[:, None, :]
        shift, scale = jnp.split(modulation, 2, axis=-1)
        return self.head(self.out_norm(h) * (1 + scale) + shift, shape)

    def log_weight(self, c_noise):
        return self.weighting(c_noise)


class DenoiserMLP(Denoiser):
    """A residual MLP denoiser for low-dimensional data (2-D toys), or any input flattened."""

    width: int = 256
    depth: int = 4

    def setup(self):
        self.setup_shared()
        self.stem = dense(self.width, (None, "embed"))
        self.blocks = [ResidualBlock(self.width) for _ in range(self.depth)]

    def __call__(self, x, c_noise, label=None, *, train: bool = False, interval=None,
                 with_logit: bool = False):
        del train  # no dropout: consistency pairs must see the same network
        cond = self.condition(c_noise, label, interval)
        h = self.stem(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, cond)
        return self.finish(h, cond, x.shape, with_logit)


def sincos_positions(grid_rows: int, grid_cols: int, dim: int) -> jnp.ndarray:
    """DiT's fixed 2-D sin-cos position embeddings of a rows × cols patch layout: [rows·cols,
    dim]."""
    rows, cols = jnp.meshgrid(jnp.arange(grid_rows), jnp.arange(grid_cols), indexing="ij")
    half = dim // 2
    return jnp.concatenate([positional_embedding(rows.reshape(-1).astype(jnp.float32), half),
                            positional_embedding(cols.reshape(-1).astype(jnp.float32), half)], -1)


class Attention(nn.Module):
    """Multi-head self-attention through `jaxdistill.kernels.flash_attention` (`flash`, whose
    JVP is one fused pass and never holds S×S) or the naive reference (`naive`), with optional
    QK-norm (sCM: it keeps JVP values from exploding)."""

    width: int
    heads: int
    qk_norm: bool = True
    attention: str = "flash"

    @nn.compact
    def __call__(self, x):
        batch, length, _ = x.shape
        head_dim = self.width // self.heads
        qkv = dense(3 * self.width, ("embed", "mlp"), name="qkv")(x)
        q, k, v = jnp.split(qkv.reshape(batch, length, 3 * self.heads, head_dim), 3, axis=2)
        if self.qk_norm:
            q = nn.RMSNorm(name="q_norm")(q)
            k = nn.RMSNorm(name="k_norm")(k)
        if self.attention == "flash":
            out = kernels.flash_attention(q, k, v)
        elif self.attention == "naive":
            out = kernels.attention_reference(q, k, v)
        else:
            raise ValueError(f"unknown attention {self.attention!r}; choose flash or naive")
        return dense(self.width, ("mlp_in", "embed"), name="out")(
            out.reshape(batch, length, self.width))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (Peebles & Xie, 2023): both residual branches modulated and
    gated by the conditioning, the gates zero at initialisation."""

    width: int
    heads: int
    qk_norm: bool = True
    attention: str = "flash"
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x, cond):
        modulation = dense(6 * self.width, ("embed", "mlp"), zero=True, name="modulation")(
            nn.silu(cond))[:, None, :]
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(modulation, 6, axis=-1)
        norm = functools.partial(nn.LayerNorm, use_scale=False, use_bias=False)
        h = norm()(x) * (1 + scale1) + shift1
        x = x + gate1 * Attention(self.width, self.heads, self.qk_norm, self.attention)(h)
        h = norm()(x) * (1 + scale2) + shift2
        h = nn.gelu(dense(self.mlp_ratio * self.width, ("embed", "mlp"))(h))
        return x + gate2 * dense(self.width, ("mlp_in", "embed"))(h)


class DiT(Denoiser):
    """A small Diffusion Transformer for [B, H, W, C] images: p×p patches, fixed sin-cos
    positions, adaLN-Zero blocks conditioned on time (+ interval) (+ class), a zero-initialised
    adaLN output layer, unpatchified back to the image."""

    depth: int = 4
    heads: int = 4
    patch: int = 2
    qk_norm: bool = True
    attention: str = "flash"

    def setup(self):
        self.setup_shared()
        self.embed_patches = dense(self.width, (None, "embed"))
        self.blocks = [DiTBlock(self.width, self.heads, self.qk_norm, self.attention)
                       for _ in range(self.depth)]

    def __call__(self, x, c_noise, label=None, *, train: bool = False, interval=None,
                 with_logit: bool = False):
        del train  # no dropout: consistency pairs must see the same network
        cond = self.condition(c_noise, label, interval)
        _, rows, cols, channels = x.shape
        p = self.patch
        patches = einops.rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)
        h = self.embed_patches(patches) + sincos_positions(rows // p, cols // p, self.width)
        for block in self.blocks:
            h = block(h, cond)
        out = self.finish(h, cond, patches.shape, with_logit)
        image = functools.partial(einops.rearrange, pattern="b (h w) (p q c) -> b (h p) (w q) c",
                                  h=rows // p, p=p, q=p, c=channels)
        return (image(out[0]), out[1]) if with_logit else image(out)
