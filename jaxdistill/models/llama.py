"""A causal language model of the Llama family (Touvron et al.), numerically equal to Hugging
Face's `LlamaForCausalLM`, and by its options to Mistral, Qwen2/2.5, Qwen3, Gemma 2 and Gemma 3
text: RoPE in the rotate-half layout, RMSNorm, a gated MLP, grouped-query attention, a tied or
untied output head.

    logits = module.apply(params, input_ids, train=False)                        # [B, L, V]
    logits = module.apply(params, input_ids, segment_ids=ids, train=False)       # packed rows
    hidden = module.apply(params, input_ids, train=False, method="hidden")       # [B, L, d]
    logits, cache = module.apply(params, tokens, train=False, cache=cache)       # KV-cache decode

Parameters are float32; `dtype` ("bfloat16") sets the compute dtype, while norm statistics, the
attention softmax and the logits stay float32. `logits == logits_from_hidden(hidden,
module.output_head(params), module.final_softcap)`, so a fused head-plus-loss kernel can take
`hidden` and the head without materialising the logits (for a model without `final_softcap`).
Logits cover the `vocab_size` tokens only: embedding rows a checkpoint pads past them
(`embedding_rows`, e.g. Qwen2.5's 151,936 rows for 151,665 tokens) are never predicted.

Masking is by segment ids: a token attends to earlier slots of its own segment, and 0 marks
padding, which nothing attends to. `attention_mask` (1 = token, 0 = padding) is the one-document
case, so left-padded prompts and packed documents take the same path. Positions default to each
token's index within its segment, which is what a left-padded prompt and a packed document need.
A sliding-window layer also hides keys `sliding_window` or more slots before the query.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from jaxdistill import kernels
from jaxdistill.errors import DistillError

_INIT_STD = 0.02  # Llama's initializer_range

# Hugging Face's names for the two kinds of attention layer (config.json's `layer_types`).
FULL = "full_attention"
SLIDING = "sliding_attention"
ROPE_TYPES = ("default", "linear", "llama3")
NORM_STYLES = ("llama", "gemma")
ACTIVATIONS = {"silu": nn.silu, "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True)}
ATTENTIONS = ("xla", "flash")
# Fields that say how the model computes, not what its weights are: a model loaded from a
# checkpoint keeps the ones a config sets.
COMPUTE_FIELDS = ("dtype", "dropout", "attention", "remat")
# What a layer's backward pass keeps from its forward (`remat`): everything ("none"), only the
# layer's inputs ("full": the rest is recomputed), or the matmul outputs ("save_dots").
REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _normal(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes)


def _zeros(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


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


def logits_from_hidden(hidden: Float[Array, "*tokens width"], head: Float[Array, "width vocab"],
                       softcap: float | None = None) -> Float[Array, "*tokens vocab"]:
    """Logits accumulated and returned in float32 whatever the compute dtype; `softcap` (the
    model's `final_softcap`) squashes them into (-softcap, softcap) as softcap·tanh(z/softcap)."""
    logits = jnp.dot(hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return logits if softcap is None else softcap * jnp.tanh(logits / softcap)


def segment_positions(segment_ids: Int[Array, "batch seq"]) -> Int[Array, "batch seq"]:
    """Each token's index within its run of equal segment ids (packed documents restart at 0)."""
    index = jnp.arange(segment_ids.shape[1])
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def rope_frequencies(head_dim: int, theta: float, rope_type: str = "default",
                     factor: float = 1.0, low_freq_factor: float = 1.0,
                     high_freq_factor: float = 4.0,
                     original_max_length: int = 8192) -> np.ndarray:
    """RoPE's inverse frequencies [head_dim / 2], in float32 as transformers computes them.

    "linear" divides every frequency by `factor`; "llama3" (Llama 3.1) divides those whose
    wavelength exceeds original_max_length / low_freq_factor, keeps those below
    original_max_length / high_freq_factor, and interpolates smoothly in between."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2).astype(np.float32) / head_dim)
    if rope_type == "linear":
        return inv_freq / np.float32(factor)
    if rope_type != "llama3":
        return inv_freq
    wavelength = 2 * np.pi / inv_freq
    long_waves = wavelength > original_max_length / low_freq_factor
    short_waves = wavelength < original_max_length / high_freq_factor
    scaled = np.where(long_waves, inv_freq / factor, inv_freq)
    smooth = ((original_max_length / wavelength - low_freq_factor)
              / (high_freq_factor - low_freq_factor))
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    return np.where(long_waves | short_waves, scaled, smoothed).astype(np.float32)


def rope(x: Float[Array, "batch seq heads dim"], positions: Int[Array, "batch seq"],
         inv_freq: Float[Array, "half"]) -> Float[Array, "batch seq heads dim"]:
    """Rotary embedding in Hugging Face's rotate-half layout (no permutation of its weights)."""
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


def sliding_window_mask(query_slots: Int[Array, "q"], num_keys: int,
                        window: int) -> Bool[Array, "q k"]:
    """Keys fewer than `window` slots before the query (its own slot counts), as transformers'
    `sliding_window_overlay`: key > query - window."""
    return jnp.arange(num_keys)[None, :] > query_slots[:, None] - window


class Visibility(NamedTuple):
    """Which keys a query sees: the dense [B, Q, K] `mask` the "xla" attention reads, and what
    it is made of for the flash kernel (causal within `segments`, 0 = padding; a sliding
    layer's window is the layer's own setting)."""

    mask: Bool[Array, "batch q k"]
    segments: Int[Array, "batch seq"]


class RMSNorm(nn.Module):
    """RMS-normalises the last axis in float32, then scales it. "llama": the normed x cast to
    the compute dtype, times w (init 1). "gemma": x̂·(1 + w) in float32, then cast (w init 0)."""

    eps: float
    dtype: Any
    style: str = "llama"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.ones if self.style == "llama" else nn.initializers.zeros_init()
        scale = self.param("scale", nn.with_logical_partitioning(init, ("norm",)),
                           (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.style == "gemma":
            return (normed * (1.0 + scale)).astype(self.dtype)
        return normed.astype(self.dtype) * scale.astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What every layer computes, from the `Llama` fields of the same names (hashable, so that
    the layer modules can hold it)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    norm_eps: float
    dropout: float
    dtype: Any
    qkv_bias: bool
    output_bias: bool
    qk_norm: bool
    norm_style: str
    post_norms: bool
    mlp_activation: str
    query_scale: float | None
    attn_softcap: float | None
    attention: str

    def norm(self, name: str) -> RMSNorm:
        return RMSNorm(self.norm_eps, self.dtype, self.norm_style, name=name)


class Attention(nn.Module):
    spec: LayerSpec
    window: int | None = None  # a sliding layer's `sliding_window`

    @nn.compact
    def __call__(self, x, positions, visible: Visibility, inv_freq, *, train: bool,
                 cache_kv=None, index=0):
        spec = self.spec

        def project(name, heads):
            return nn.DenseGeneral((heads, spec.head_dim), use_bias=spec.qkv_bias,
                                   dtype=spec.dtype, kernel_init=_normal(("embed", "heads", "kv")),
                                   bias_init=_zeros(("heads", "kv")), name=name)(x)

        q, k = project("query", spec.num_heads), project("key", spec.num_kv_heads)
        if spec.qk_norm:  # per head, before RoPE (Qwen3, Gemma 3)
            q, k = spec.norm("query_norm")(q), spec.norm("key_norm")(k)
        q, k = rope(q, positions, inv_freq), rope(k, positions, inv_freq)
        v = project("value", spec.num_kv_heads)
        if cache_kv is not None:
            k, v = (jax.lax.dynamic_update_slice(c, new.astype(c.dtype), (0, index, 0, 0))
                    for c, new in zip(cache_kv, (k, v)))
        if cache_kv is None and self.flash(train):
            context = self.attend_flash(q, k, v, visible)
        else:
            context = self.attend(q, k, v, visible.mask, train=train)
        out = nn.DenseGeneral(x.shape[-1], axis=(-2, -1), use_bias=spec.output_bias,
                              dtype=spec.dtype, kernel_init=_normal(("heads", "kv", "embed")),
                              bias_init=_zeros(("embed",)), name="output")(context)
        return out, (k, v)

    def flash(self, train: bool) -> bool:
        """Whether the flash kernel computes this attention: asked for, and nothing it lacks
        (score soft-capping, attention dropout) is needed."""
        spec = self.spec
        return (spec.attention == "flash" and spec.attn_softcap is None
                and not (train and spec.dropout))

    def attend_flash(self, q, k, v, visible: Visibility):
        """`attend` through `kernels.flash_attention` (no [L, L] scores): the kernel scales
        by head_dim ** -0.5, so a `query_scale` is folded into q; GQA repeats k and v."""
        spec = self.spec
        groups = spec.num_heads // spec.num_kv_heads
        k, v = (jnp.repeat(x, groups, axis=2) for x in (k, v))
        if spec.query_scale is not None:
            q = q * jnp.asarray(spec.query_scale * spec.head_dim ** 0.5, q.dtype)
        return kernels.flash_attention(q, k.astype(q.dtype), v.astype(q.dtype), causal=True,
                                       segment_ids=visible.segments, window=self.window)

    def attend(self, q, k, v, mask, *, train: bool):
        """Query head h reads key/value head h // (heads / kv_heads), as HF's `repeat_kv`."""
        spec = self.spec
        batch, length, heads, dim = q.shape
        groups = q.reshape(batch, length, spec.num_kv_heads, heads // spec.num_kv_heads, dim)
        scale = dim ** -0.5 if spec.query_scale is None else spec.query_scale
        scores = jnp.einsum("blkgd,bskd->bkgls", groups, k,
                            preferred_element_type=jnp.float32) * scale
        if spec.attn_softcap is not None:
            scores = spec.attn_softcap * jnp.tanh(scores / spec.attn_softcap)
        # The lowest finite value, not -inf: a padding query masked everywhere stays finite.
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        probs = nn.Dropout(spec.dropout, deterministic=not train)(probs)
        return jnp.einsum("bkgls,bskd->blkgd", probs, v).reshape(q.shape)


class MLP(nn.Module):
    """down(activation(gate(x)) · up(x)): SwiGLU with silu (Llama), GeGLU with gelu_tanh (Gemma)."""

    spec: LayerSpec

    @nn.compact
    def __call__(self, x):
        def dense(features, axes, name):
            return nn.Dense(features, use_bias=False, dtype=self.spec.dtype,
                            kernel_init=_normal(axes), name=name)

        mlp_dim = self.spec.mlp_dim
        hidden = (ACTIVATIONS[self.spec.mlp_activation](dense(mlp_dim, ("embed", "mlp"), "gate")(x))
                  * dense(mlp_dim, ("embed", "mlp"), "up")(x))
        return dense(x.shape[-1], ("mlp", "embed"), "down")(hidden)


class Layer(nn.Module):
    """Pre-RMSNorm block: x + attention(norm(x)), then + mlp(norm(x)); with `post_norms` each
    branch's output is normed again before it joins the residual (Gemma)."""

    spec: LayerSpec
    window: int | None = None

    @nn.compact
    def __call__(self, x, positions, visible: Visibility, inv_freq, train: bool,
                 cache_kv=None, index=0):
        """`train` is positional: `nn.remat` takes it as a static argument (number 5)."""
        spec = self.spec
        out, kv = Attention(spec, self.window, name="attention")(
            spec.norm("attention_norm")(x), positions, visible, inv_freq, train=train,
            cache_kv=cache_kv, index=index)
        if spec.post_norms:
            out = spec.norm("attention_post_norm")(out)
        x = x + out
        out = MLP(spec, name="mlp")(spec.norm("mlp_norm")(x))
        if spec.post_norms:
            out = spec.norm("mlp_post_norm")(out)
        return x + out, kv


class Llama(nn.Module):
    """Causal LM; `from_pretrained` sets the fields from a Hugging Face config.json.

    `dropout` drops attention probabilities in training (HF's `attention_dropout`, Llama's only
    dropout); `head_dim=None` means width // num_heads. The other families' options:
    - `qkv_bias` / `output_bias`: biases on the query, key and value projections (Qwen2; all
      four with HF's `attention_bias`) and on the attention output projection.
    - `embedding_rows`: rows of the embedding (and untied head) when a checkpoint pads them past
      the `vocab_size` tokens its tokenizer has (None: vocab_size).
    - `qk_norm`: an RMSNorm over each query and key head before RoPE (Qwen3, Gemma 3).
    - `norm_style`: "llama" or "gemma" (scale by 1 + w in float32), see `RMSNorm`.
    - `scale_embeddings`: embeddings times sqrt(width), in the compute dtype (Gemma).
    - `post_norms`: norms on each branch's output as well (Gemma's four norms per layer).
    - `mlp_activation`: "silu" (SwiGLU) or "gelu_tanh" (GeGLU, HF's gelu_pytorch_tanh).
    - `query_scale`: the attention-score scale, None for head_dim ** -0.5 (Gemma:
      query_pre_attn_scalar ** -0.5).
    - `attn_softcap` / `final_softcap`: c·tanh(z / c) on the attention scores / the logits.
    - `attention`: "xla" (scores materialised, as HF computes them) or "flash" (the
      `kernels.flash_attention` kernel, memory linear in the length, for training and scoring
      where it applies: not with `attn_softcap`, attention dropout or a KV cache, which take
      the "xla" path).
    - `remat`: what each layer's backward keeps, "none", "full" or "save_dots" (see
      `REMAT_POLICIES`): activation memory traded for recomputation, the same numbers.
    - `sliding_window`, `layer_types`: per layer "full_attention" or "sliding_attention" (a
      query sees the `sliding_window` newest slots, its own included); `layer_types=None`
      makes every layer sliding when `sliding_window` is set (Mistral), else full.
    - `rope_type` ("default", "linear", "llama3") with `rope_factor`, `rope_low_freq_factor`,
      `rope_high_freq_factor`, `rope_original_max_length` (None: max_length): RoPE scaling as
      HF's rope_parameters; `rope_local_theta`, when set, gives sliding layers their own
      unscaled RoPE base (Gemma 3's rope_local_base_freq).
    """

    vocab_size: int = 32000
    embedding_rows: int | None = None
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
    qkv_bias: bool = False
    output_bias: bool = False
    qk_norm: bool = False
    norm_style: str = "llama"
    scale_embeddings: bool = False
    post_norms: bool = False
    mlp_activation: str = "silu"
    query_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_length: int | None = None
    rope_local_theta: float | None = None
    attention: str = "xla"
    remat: str = "none"

    def __post_init__(self):
        # A config.json round trip turns the tuple into a list; the module must stay hashable
        # to be a static argument of jitted functions.
        if isinstance(self.layer_types, list):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        super().__post_init__()

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.width // self.num_heads

    @property
    def resolved_layer_types(self) -> tuple[str, ...]:
        if self.layer_types is not None:
            return self.layer_types
        return (SLIDING if self.sliding_window is not None else FULL,) * self.num_layers

    def setup(self):
        self._check_fields()
        dtype = jnp.dtype(self.dtype)
        rows = self.embedding_rows or self.vocab_size
        self.embed = nn.Embed(rows, self.width, dtype=dtype,
                              embedding_init=_normal(("vocab", "embed")))
        spec = LayerSpec(self.num_heads, self.num_kv_heads, self.resolved_head_dim, self.mlp_dim,
                         self.norm_eps, self.dropout, dtype, self.qkv_bias, self.output_bias,
                         self.qk_norm, self.norm_style, self.post_norms, self.mlp_activation,
                         self.query_scale, self.attn_softcap, self.attention)
        layer = Layer if self.remat == "none" else nn.remat(
            Layer, policy=REMAT_POLICIES[self.remat], static_argnums=(5,))
        self.layers = [layer(spec, self.sliding_window if kind == SLIDING else None,
                             name=f"layer_{i}")
                       for i, kind in enumerate(self.resolved_layer_types)]
        self.final_norm = spec.norm("final_norm")
        if not self.tie_embeddings:
            # Stored [V, d] like HF's lm_head.weight; `head_matrix` gives the [d, V] view.
            self.head = nn.Embed(rows, self.width, embedding_init=_normal(("vocab", "embed")))

    def _check_fields(self) -> None:
        if self.head_dim is None and self.width % self.num_heads:
            raise DistillError(f"width {self.width} is not divisible by num_heads"
                               f" {self.num_heads}; set head_dim or change num_heads")
        if self.num_heads % self.num_kv_heads:
            raise DistillError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads"
                               f" {self.num_kv_heads}; grouped-query attention needs one")
        if self.embedding_rows is not None and self.embedding_rows < self.vocab_size:
            raise DistillError(f"embedding_rows {self.embedding_rows} is below vocab_size"
                               f" {self.vocab_size}; every token needs a row")
        if self.resolved_head_dim % 2:
            raise DistillError(f"head_dim {self.resolved_head_dim} is odd; RoPE rotates pairs")
        for field, value, allowed in (("rope_type", self.rope_type, ROPE_TYPES),
                                      ("norm_style", self.norm_style, NORM_STYLES),
                                      ("mlp_activation", self.mlp_activation, tuple(ACTIVATIONS)),
                                      ("attention", self.attention, ATTENTIONS),
                                      ("remat", self.remat, tuple(REMAT_POLICIES))):
            if value not in allowed:
                raise DistillError(f"{field}={value!r} is not one of {', '.join(allowed)};"
                                   " choose one of those")
        types = self.resolved_layer_types
        if len(types) != self.num_layers or not set(types) <= {FULL, SLIDING}:
            raise DistillError(f"layer_types {types} must give each of the {self.num_layers}"
                               f" layers {FULL!r} or {SLIDING!r}")
        if SLIDING in types and not self.sliding_window:
            raise DistillError("layer_types has sliding_attention layers but sliding_window is"
                               f" {self.sliding_window}; set the window length")

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
        logits = logits_from_hidden(hidden, table.T[:, :self.vocab_size], self.final_softcap)
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
        query_slots = index + jnp.arange(length)
        mask = causal_segment_mask(segments, key_segments, query_slots)
        visibility = {FULL: Visibility(mask, segments)}
        if self.sliding_window:
            visibility[SLIDING] = Visibility(
                mask & sliding_window_mask(query_slots, key_segments.shape[1],
                                           self.sliding_window), segments)
        frequencies = self._rope_frequencies()
        x = self.embed(input_ids)
        if self.scale_embeddings:
            # In the compute dtype, as HF does: sqrt(3072) is 55.5 in bfloat16, not 55.43.
            x = x * jnp.asarray(self.width ** 0.5, x.dtype)
        keys, values = [], []
        for i, (layer, kind) in enumerate(zip(self.layers, self.resolved_layer_types)):
            cache_kv = None if cache is None else (cache.keys[i], cache.values[i])
            x, (k, v) = layer(x, positions, visibility[kind], frequencies[kind], train,
                              cache_kv, index)
            keys.append(k)
            values.append(v)
        hidden = self.final_norm(x)
        if cache is None:
            return hidden
        return hidden, KVCache(tuple(keys), tuple(values), key_segments, cache.index + length)

    def _rope_frequencies(self) -> dict[str, np.ndarray]:
        """Inverse frequencies per layer type: sliding layers take `rope_local_theta` unscaled
        when it is set, the scaled global RoPE otherwise."""
        original = self.rope_original_max_length or self.max_length
        full = rope_frequencies(self.resolved_head_dim, self.rope_theta, self.rope_type,
                                self.rope_factor, self.rope_low_freq_factor,
                                self.rope_high_freq_factor, original)
        if self.rope_local_theta is None:
            return {FULL: full, SLIDING: full}
        return {FULL: full,
                SLIDING: rope_frequencies(self.resolved_head_dim, self.rope_local_theta)}

    @nn.nowrap
    def output_head(self, params: dict) -> Float[Array, "width vocab"]:
        """The output projection [d, vocab_size] of `params` (or the variables dict holding
        them): padded embedding rows left out."""
        return head_matrix(params)[:, :self.vocab_size]

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
