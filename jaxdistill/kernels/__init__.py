"""Drop-in fused kernels, each beside its pure-JAX reference: Pallas on GPU/TPU, chunked XLA
elsewhere (see DESIGN.md §5)."""

from jaxdistill.kernels.flash_attention import attention_reference, flash_attention
from jaxdistill.kernels.fused_divergence import fused_linear_divergence

__all__ = ["attention_reference", "flash_attention", "fused_linear_divergence"]
