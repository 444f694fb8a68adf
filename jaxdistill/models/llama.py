"""A causal Llama-style language model (Touvron et al.), numerically equal to Hugging Face's
`LlamaForCausalLM`: RoPE in the rotate-half layout, RMSNorm, SwiGLU, grouped-query attention,
no biases, a tied or untied output head.

    logits = module.apply(params, input_ids, train=False)                        # [B, L, V]
    logits = module.apply(params, input_ids, segment_ids=ids, train=False)       # packed rows
    hidden = module.apply(params, input_ids, train=False, method="hidden")       # [B, L, d]
    logits, cache = module.apply(params, tokens, train=False, cache=cache)       # KV-cache decode

Parameters are float32; `dtype` ("bfloat16") sets the compute dtype, while norm statistics, the
attention softmax and the logits stay float32. `logits == logits_from_hidden(hidden,
head_matrix(params))`, so a fused head-plus-loss kernel can take `hidden` and `head_matrix`
without materialising the logits.

Masking is by segment ids: a token attends to earlier slots of its own segment, and 0 marks
padding, which nothing attends to. `attention_mask` (1 = token, 0 = padding) is the one-document
case, so left-padded prompts and packed documents take the same path. Positions default to each
token's index within its segment, which is what a left-padded prompt and a packed document need.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxdistill.errors import DistillError

_INIT_STD = 0.02  # Llama's initializer_range


def _normal(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes)


class KVCache(NamedTuple):
    """Every layer's keys and values so far; rows share `index`, the next slot to write."""

    keys: tuple[Array, ...]       # per layer [batch, max_length, kv_heads, head_dim]
    values: tuple[Array, ...]
    segment_ids: Int[Array, "batch max_length"]  # 0 for padding and not-yet-written slots
    index: Int[Array, ""]


def head_matrix(params: dict) -> Float[Array, "width vocab"]:
    """The output projection [d, V]: the tied embedding transposed, or the untied head's.

    Takes the model's params or the variables dict that holds them under "params"."""
    params = params.get("params", params)
    return (params["head"] if "head" in params else params["embed"])["embedding"].T


def logits_from_hidden(hidden: Float[Array, "*tokens width"],
                       head: Float[Array, "width vocab"]) -> Float[Array, "*tokens vocab"]:
    """Logits accumulated and returned in float32 whatever the compute dtype."""
    return jnp.dot(hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)


def segment_positions(segment_ids: Int[Array, "batch seq"]) -> Int[Array, "batch seq"]:
    """Each token's index within its run of equal segment ids (packed documents restart at 0)."""
    index = jnp.arange(segment_ids.shape[1])
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def rope(x: Float[Array, "batch seq heads dim"], positions: Int[Array, "batch seq"],
         theta: float) -> Float[Array, "batch seq heads dim"]:
    """Rotary embedding in Hugging Face's rotate-half layout (no permutation of its weights)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1])
    angles = positions[..., None, None].astype(jnp.float32) * inv_freq  # [B, L, 1, D/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def causal_segment_mask(query_segments: Int[Array, "batch q"], key_segments: Int[Array, "batch k"],
                   query_slots: Int[Array, "q"]) -> Bool[Array, "batch q k"]:
    """Causal by slot, within a segment, never onto padding (segment 0)."""
    key_slots = jnp.arange(key_segments.shape[1])
    causal = query_slots[:, None] >= key_slots[None, :]
    same = query_segments[:, :, None] == key_segments[:, None, :]
    return causal[None] & same & (key_segments[:, None, :] != 0)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * scale.astype(self.dtype)


class Attention(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    dropout: float
    dtype: Any

    @nn.compact
    def __call__(self, x, positions, mask, *, train: bool, cache_kv=None, index=0):
        def project(name, heads):
            return nn.DenseGeneral((heads, self.head_dim), use_bias=False, dtype=self.dtype,
                                   kernel_init=_normal(("embed", "heads", "kv")), name=name)(x)

        q = rope(project("query", self.num_heads), positions, self.rope_theta)
        k = rope(project("key", self.num_kv_heads), positions, self.rope_theta)
        v = project("value", self.num_kv_heads)
        if cache_kv is not None:
            k, v = (jax.lax.dynamic_update_slice(c, new.astype(c.dtype), (0, index, 0, 0))
                    for c, new in zip(cache_kv, (k, v)))
        context = self.attend(q, k, v, mask, train=train)
        out = nn.DenseGeneral(x.shape[-1], axis=(-2, -1), use_bias=False, dtype=self.dtype,
                              kernel_init=_normal(("heads", "kv", "embed")), name="output")(context)
        return out, (k, v)

    def attend(self, q, k, v, mask, *, train: bool):
        """Query head h reads key/value head h // (heads / kv_heads), as HF's `repeat_kv`."""
        batch, length, heads, dim = q.shape
        groups = q.reshape(batch, length, self.num_kv_heads, heads // self.num_kv_heads, dim)
        scores = jnp.einsum("blkgd,bskd->bkgls", groups, k,
                            preferred_element_type=jnp.float32) * dim ** -0.5
        # The lowest finite value, not -inf: a padding query masked everywhere stays finite.
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        probs = nn.Dropout(self.dropout, deterministic=not train)(probs)
        return jnp.einsum("bkgls,bskd->blkgd", probs, v).reshape(q.shape)


class MLP(nn.Module):
    mlp_dim: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        def dense(features, axes, name):
            return nn.Dense(features, use_bias=False, dtype=self.dtype, kernel_init=_normal(axes),
                            name=name)

        hidden = (nn.silu(dense(self.mlp_dim, ("embed", "mlp"), "gate")(x))
                  * dense(self.mlp_dim, ("embed", "mlp"), "up")(x))
        return dense(x.shape[-1], ("mlp", "embed"), "down")(hidden)


class Layer(nn.Module):
    """Pre-RMSNorm block: x + attention(norm(x)), then + SwiGLU(norm(x))."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float
    norm_eps: float
    dropout: float
    dtype: Any

    @nn.compact
    def __call__(self, x, positions, mask, *, train: bool, cache_kv=None, index=0):
        attention = Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.rope_theta,
                              self.dropout, self.dtype, name="attention")
        out, kv = attention(RMSNorm(self.norm_eps, self.dtype, name="attention_norm")(x),
                            positions, mask, train=train, cache_kv=cache_kv, index=index)
        x = x + out
        x = x + MLP(self.mlp_dim, self.dtype, name="mlp")(
            RMSNorm(self.norm_eps, self.dtype, name="mlp_norm")(x))
        return x, kv


class Llama(nn.Module):
    """Causal LM; `from_pretrained` sets the fields from a Hugging Face config.json.

    `dropout` drops attention probabilities in training (HF's `attention_dropout`, Llama's only
    dropout); `head_dim=None` means width // num_heads.
    """

    vocab_size: int = 32000
    num_layers: int = 2
    width: int = 256
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int | None = None
    mlp_dim: int = 688
    max_length: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    dropout: float = 0.0
    dtype: Any = "float32"

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.width // self.num_heads

    def setup(self):
        if self.head_dim is None and self.width % self.num_heads:
            raise DistillError(f"width {self.width} is not divisible by num_heads"
                               f" {self.num_heads}; set head_dim or change num_heads")
        if self.num_heads % self.num_kv_heads:
            raise DistillError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads"
                               f" {self.num_kv_heads}; grouped-query attention needs one")
        if self.resolved_head_dim % 2:
            raise DistillError(f"head_dim {self.resolved_head_dim} is odd; RoPE rotates pairs")
        dtype = jnp.dtype(self.dtype)
        self.embed = nn.Embed(self.vocab_size, self.width, dtype=dtype,
                              embedding_init=_normal(("vocab", "embed")))
        self.layers = [Layer(self.num_heads, self.num_kv_heads, self.resolved_head_dim,
                             self.mlp_dim, self.rope_theta, self.norm_eps, self.dropout, dtype,
                             name=f"layer_{i}") for i in range(self.num_layers)]
        self.final_norm = RMSNorm(self.norm_eps, dtype)
        if not self.tie_embeddings:
            # Stored [V, d] like HF's lm_head.weight; `head_matrix` gives the [d, V] view.
            self.head = nn.Embed(self.vocab_size, self.width,
                                 embedding_init=_normal(("vocab", "embed")))

    def __call__(self, input_ids: Int[Array, "batch seq"],
                 attention_mask: Int[Array, "batch seq"] | None = None, *, train: bool,
                 positions: Int[Array, "batch seq"] | None = None,
                 segment_ids: Int[Array, "batch seq"] | None = None,
                 cache: KVCache | None = None):
        """Float32 logits [B, L, V]; with `cache`, (logits, the cache with these tokens added)."""
        out = self.hidden(input_ids, attention_mask, train=train, positions=positions,
                          segment_ids=segment_ids, cache=cache)
        hidden, new_cache = out if cache is not None else (out, None)
        table = (self.embed if self.tie_embeddings else self.head).embedding
        logits = logits_from_hidden(hidden, table.T)
        return logits if cache is None else (logits, new_cache)

    def hidden(self, input_ids: Int[Array, "batch seq"],
               attention_mask: Int[Array, "batch seq"] | None = None, *, train: bool,
               positions: Int[Array, "batch seq"] | None = None,
               segment_ids: Int[Array, "batch seq"] | None = None,
               cache: KVCache | None = None):
        """The final normed hidden states [B, L, d] (compute dtype), with the cache as above."""
        length = input_ids.shape[1]
        if cache is None and length > self.max_length:
            raise DistillError(f"sequence length {length} exceeds max_length {self.max_length};"
                               " truncate the inputs or raise max_length")
        segments = _segments(input_ids, attention_mask, segment_ids)
        index = 0 if cache is None else cache.index
        key_segments = segments if cache is None else jax.lax.dynamic_update_slice(
            cache.segment_ids, segments, (0, index))
        if positions is None:
            positions = jax.lax.dynamic_slice_in_dim(segment_positions(key_segments), index,
                                                     length, axis=1)
        mask = causal_segment_mask(segments, key_segments, index + jnp.arange(length))
        x = self.embed(input_ids)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            cache_kv = None if cache is None else (cache.keys[i], cache.values[i])
            x, (k, v) = layer(x, positions, mask, train=train, cache_kv=cache_kv, index=index)
            keys.append(k)
            values.append(v)
        hidden = self.final_norm(x)
        if cache is None:
            return hidden
        return hidden, KVCache(tuple(keys), tuple(values), key_segments, cache.index + length)

    @nn.nowrap
    def init_cache(self, batch_size: int, length: int | None = None) -> KVCache:
        """An empty cache for `length` slots (default max_length), in the compute dtype."""
        length = self.max_length if length is None else length
        if length > self.max_length:
            raise DistillError(f"a cache of {length} slots exceeds max_length {self.max_length};"
                               " generate fewer tokens or raise max_length")
        zeros = jnp.zeros((batch_size, length, self.num_kv_heads, self.resolved_head_dim),
                          jnp.dtype(self.dtype))
        return KVCache((zeros,) * self.num_layers, (zeros,) * self.num_layers,
                       jnp.zeros((batch_size, length), jnp.int32), jnp.zeros((), jnp.int32))


def _segments(input_ids, attention_mask, segment_ids) -> Int[Array, "batch seq"]:
    """Segment ids with padding as 0: the given ids, else the attention mask, else all ones."""
    segments = jnp.ones_like(input_ids, jnp.int32) if segment_ids is None else segment_ids
    if attention_mask is not None:
        segments = jnp.where(attention_mask > 0, segments, 0)
    return segments.astype(jnp.int32)
