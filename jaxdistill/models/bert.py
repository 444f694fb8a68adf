"""A BERT encoder (Devlin et al.) laid out like Hugging Face's `BertModel`, for feature KD.

`Bert.__call__(input_ids, attention_mask, train=...)` returns a `BertOutput` with everything a
distillation method may want: every layer's hidden states, queries, keys, values and attention
maps, and the pooled (optionally normalised) sentence embedding. Inside one jitted train step
XLA drops whatever a method does not read, so exposing them costs nothing.

With `projection_dim > 0` the encoder also carries a learned linear map `distill_projection`
from its width to the teacher's (FitNets' regressor, TinyBERT's `fit_dense`), applied to hidden
states and embeddings on request; inference never uses it.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

_INIT_STD = 0.02  # BERT's initializer_range


def _normal(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes)


def _zeros(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros, axes)


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=_zeros(("norm",)))


class BertOutput(NamedTuple):
    hidden_states: tuple[Array, ...]   # embeddings output, then each layer's: [B, S, hidden]
    queries: tuple[Array, ...]         # per layer [B, S, heads, head_dim]
    keys: tuple[Array, ...]
    values: tuple[Array, ...]
    attentions: tuple[Array, ...]      # per layer [B, heads, S, S], rows sum to 1
    embedding: Array                   # pooled sentence embedding [B, hidden]


def attention_bias(attention_mask: Int[Array, "batch seq"]) -> Float[Array, "batch 1 1 seq"]:
    """0 where a key may be attended, the dtype's lowest value at padding (as Hugging Face)."""
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)


def mean_pool(hidden: Float[Array, "batch seq dim"],
              attention_mask: Int[Array, "batch seq"]) -> Float[Array, "batch dim"]:
    """sentence-transformers' mean pooling: the average of the unpadded tokens' states."""
    weights = attention_mask[..., None].astype(hidden.dtype)
    return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class SelfAttention(nn.Module):
    num_heads: int
    head_dim: int
    dropout: float

    @nn.compact
    def __call__(self, x, bias, *, train: bool):
        def project(name):
            return nn.DenseGeneral((self.num_heads, self.head_dim), name=name,
                                   kernel_init=_normal(("embed", "heads", "kv")),
                                   bias_init=_zeros(("heads", "kv")))(x)

        q, k, v = project("query"), project("key"), project("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(self.head_dim).astype(x.dtype)
        attention = jax.nn.softmax(scores.astype(jnp.float32) + bias, axis=-1).astype(x.dtype)
        dropped = nn.Dropout(self.dropout, deterministic=not train)(attention)
        context = jnp.einsum("bhqk,bkhd->bqhd", dropped, v)
        return context, (q, k, v, attention)


class Layer(nn.Module):
    """Post-LayerNorm transformer layer, as in BERT."""

    num_heads: int
    mlp_dim: int
    dropout: float
    layer_norm_eps: float

    @nn.compact
    def __call__(self, x, bias, *, train: bool):
        hidden = x.shape[-1]
        context, attention = SelfAttention(self.num_heads, hidden // self.num_heads, self.dropout,
                                           name="attention")(x, bias, train=train)
        out = nn.DenseGeneral(hidden, axis=(-2, -1), name="attention_output",
                              kernel_init=_normal(("heads", "kv", "embed")),
                              bias_init=_zeros(("embed",)))(context)
        out = nn.Dropout(self.dropout, deterministic=not train)(out)
        x = _layer_norm(self.layer_norm_eps, "attention_norm")(x + out)
        h = nn.Dense(self.mlp_dim, name="intermediate", kernel_init=_normal(("embed", "mlp")),
                     bias_init=_zeros(("mlp",)))(x)
        h = nn.Dense(hidden, name="output", kernel_init=_normal(("mlp", "embed")),
                     bias_init=_zeros(("embed",)))(nn.gelu(h, approximate=False))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return _layer_norm(self.layer_norm_eps, "output_norm")(x + h), attention


class Bert(nn.Module):
    """BERT encoder with mean-pooled (or [CLS]) sentence embeddings.

    Defaults are all-MiniLM-L6-v2's (6 layers, 384 wide, 12 heads); `from_pretrained` sets them
    from a checkpoint's config.json.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    mlp_dim: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pooling: str = "mean"         # "mean" or "cls"
    normalize: bool = True        # L2-normalise the sentence embedding
    projection_dim: int = 0       # > 0 adds the distillation projection to that width

    def setup(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by"
                             f" num_heads {self.num_heads}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        self.word_embeddings = nn.Embed(self.vocab_size, self.hidden_size,
                                        embedding_init=_normal(("vocab", "embed")))
        self.position_embeddings = nn.Embed(self.max_position, self.hidden_size,
                                            embedding_init=_normal(("position", "embed")))
        self.token_type_embeddings = nn.Embed(self.type_vocab_size, self.hidden_size,
                                              embedding_init=_normal(("token_type", "embed")))
        self.embeddings_norm = _layer_norm(self.layer_norm_eps, "embeddings_norm")
        self.embeddings_dropout = nn.Dropout(self.dropout)
        self.layers = [Layer(self.num_heads, self.mlp_dim, self.dropout, self.layer_norm_eps,
                             name=f"layer_{i}") for i in range(self.num_layers)]
        if self.projection_dim:
            self.distill_projection = nn.Dense(
                self.projection_dim, kernel_init=_normal(("embed", "projection")),
                bias_init=_zeros(("projection",)))

    def __call__(self, input_ids: Int[Array, "batch seq"], attention_mask: Int[Array, "batch seq"],
                 *, train: bool) -> BertOutput:
        if input_ids.shape[1] > self.max_position:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_position"
                             f" {self.max_position}; truncate the inputs")
        positions = jnp.arange(input_ids.shape[1])[None]
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(jnp.zeros_like(input_ids)))
        x = self.embeddings_dropout(self.embeddings_norm(x), deterministic=not train)
        bias = attention_bias(attention_mask)
        hidden_states, attentions = [x], []
        for layer in self.layers:
            x, attention = layer(x, bias, train=train)
            hidden_states.append(x)
            attentions.append(attention)
        if self.projection_dim and self.is_initializing():
            self.project(x)  # create the projection's params with the encoder's
        queries, keys, values, maps = (tuple(a) for a in zip(*attentions))
        return BertOutput(tuple(hidden_states), queries, keys, values, maps,
                          self.pool(x, attention_mask))

    def distill_features(self, input_ids: Array, attention_mask: Array, *,
                         train: bool) -> BertOutput:
        """`__call__`'s outputs with hidden states and embedding mapped to the teacher's width.

        The projection is linear, so pooling the projected states equals projecting the pooled
        one; attention vectors keep the student's own widths (relation heads compare those).
        """
        out = self(input_ids, attention_mask, train=train)
        if not self.projection_dim:
            return out
        hidden_states = tuple(self.project(h) for h in out.hidden_states)
        return out._replace(hidden_states=hidden_states,
                            embedding=self.pool(hidden_states[-1], attention_mask))

    def pool(self, hidden: Array, attention_mask: Array) -> Array:
        pooled = mean_pool(hidden, attention_mask) if self.pooling == "mean" else hidden[:, 0]
        return l2_normalize(pooled) if self.normalize else pooled

    def project(self, features: Array) -> Array:
        return self.distill_projection(features)

    def embed(self, input_ids: Array, attention_mask: Array) -> Array:
        """The sentence embedding alone (inference)."""
        return self(input_ids, attention_mask, train=False).embedding
