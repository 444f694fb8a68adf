"""Fused linear divergence vs materialized logits: temporary memory and time of value-and-grad.

  python bench/fused_divergence.py [--tokens 1024 4096] [--vocab 8192 32768] [--width 256]
                                   [--kinds fkl jsd] [--repeats 5] [--pallas_blocks 64:512]
                                   [--out results/perf.md]

For each (tokens N, vocabulary V, divergence) the compiled `jax.value_and_grad` with respect to
the student's hidden states and head is measured for:
  unfused   `h_s @ W_s`, `h_t @ W_t` materialized, then `losses.divergence` (plain XLA)
  fused     `jaxdistill.kernels.fused_linear_divergence`: the chunked XLA path on CPU; on a GPU or
            TPU also the Pallas kernels, a row per --pallas_blocks pair (a kernel that fails to
            compile is a row saying so, its error's first lines on stderr)
  liger     Liger-Kernel's LigerFusedLinearJSD (jsd only) when torch sees a CUDA device and
            `liger_kernel` is installed: the published mark for the same operation
Memory is XLA's memory analysis of the compiled program (temporaries: everything but the
inputs and outputs); for Liger, torch's peak allocation above the inputs. Time is the median of
the repeats after one warm-up call, all in the same run, with the ratio to unfused.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import report

from jaxdistill.kernels import fused_divergence as fused

MiB = 2**20


def _inputs(tokens: int, width: int, vocab: int, dtype):
    keys = jax.random.split(jax.random.key(0), 4)
    shapes = ((tokens, width), (width, vocab), (tokens, width), (width, vocab))
    scales = (1.0, width**-0.5, 1.0, width**-0.5)
    return [(jax.random.normal(k, s) * c).astype(dtype) for k, s, c in zip(keys, shapes, scales)]


def measure_jax(loss, inputs, repeats: int) -> dict:
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*inputs).compile()
    return {"temp": compiled.memory_analysis().temp_size_in_bytes,
            "seconds": report.median_seconds(lambda: compiled(*inputs), repeats),
            "value": float(compiled(*inputs)[0])}


def measure_liger(tokens: int, width: int, vocab: int, repeats: int) -> dict | None:
    try:
        import torch
        from liger_kernel.transformers import LigerFusedLinearJSD
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    generator = torch.Generator(device="cuda").manual_seed(0)
    hidden = [torch.randn(tokens, width, device="cuda", generator=generator) for _ in range(2)]
    heads = [torch.randn(vocab, width, device="cuda", generator=generator) * width**-0.5
             for _ in range(2)]
    hidden[0].requires_grad_(True)
    heads[0].requires_grad_(True)
    loss = LigerFusedLinearJSD(jsd_beta=0.5)

    def call():
        loss(hidden[0], heads[0], hidden[1], heads[1]).backward()
        torch.cuda.synchronize()

    call()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"temp": torch.cuda.max_memory_allocated() - baseline,
            "seconds": statistics.median(times), "value": float("nan")}


def _liger_status() -> str:
    try:
        import liger_kernel  # noqa: F401
        import torch
    except ImportError as error:
        return f"not measured ({error})"
    return "measured" if torch.cuda.is_available() else "not measured (torch sees no CUDA device)"


def rows_for(tokens: int, vocab: int, kind: str, args) -> list[tuple[str, dict]]:
    inputs = _inputs(tokens, args.width, vocab, jnp.dtype(args.dtype))
    unfused = functools.partial(fused.reference, kind=kind)
    rows = [("unfused (XLA)", measure_jax(unfused, inputs, args.repeats)),
            ("fused, chunked XLA", measure_jax(functools.partial(
                fused.fused_linear_divergence, kind=kind, implementation="xla"),
                inputs, args.repeats))]
    if jax.default_backend() in ("gpu", "tpu"):
        for blocks in args.pallas_blocks:
            block_tokens, block_vocab = (int(b) for b in blocks.split(":"))
            name = f"fused, Pallas {block_tokens}×{block_vocab}"
            try:
                rows.append((name, measure_jax(functools.partial(
                    fused.fused_linear_divergence, kind=kind, implementation="pallas",
                    block_tokens=block_tokens, block_vocab=block_vocab), inputs, args.repeats)))
            except Exception as error:  # noqa: BLE001 - a kernel that cannot lower is a row
                lines = "".join(traceback.format_exception_only(error)).splitlines()
                print(f"{name}, N={tokens}, V={vocab}, {kind} failed:", *lines[:30],
                      sep="\n    ", file=sys.stderr, flush=True)
                rows.append((name, {"failed": lines[0][:100]}))
    if kind == "jsd":
        liger = measure_liger(tokens, args.width, vocab, args.repeats)
        if liger:
            rows.append(("Liger FusedLinearJSD (torch)", liger))
    return rows


def _ms(seconds: float) -> str:
    """Whole milliseconds, or two decimals below 10 ms (a GPU's kernels)."""
    return f"{1e3 * seconds:,.0f}" if seconds >= 0.01 else f"{1e3 * seconds:.2f}"


def table(args) -> list[str]:
    lines = ["| N | V | kind | implementation | temporaries | temp ÷ unfused | ms | time ÷ unfused"
             " | value |", "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for tokens in args.tokens:
        for vocab in args.vocab:
            for kind in args.kinds:
                rows = rows_for(tokens, vocab, kind, args)
                base = rows[0][1]
                for name, result in rows:
                    if "failed" in result:
                        lines.append(f"| {tokens} | {vocab} | {kind} | {name} | failed to"
                                     f" compile: `{result['failed']}` | | | | |")
                        continue
                    lines.append(
                        f"| {tokens} | {vocab} | {kind} | {name} | {result['temp'] / MiB:,.0f} MiB"
                        f" | {result['temp'] / base['temp']:.3f} | {_ms(result['seconds'])}"
                        f" | {result['seconds'] / base['seconds']:.2f} | {result['value']:.6f} |")
                print(*lines[-len(rows):], sep="\n", flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", default=["fkl", "jsd"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pallas_blocks", nargs="+", default=["64:512"],
                        help="GPU/TPU only: a Pallas row per block_tokens:block_vocab pair")
    parser.add_argument("--out", default=None, help="append the report to this file")
    args = parser.parse_args()
    section = report.Section("Fused linear divergence vs materialized logits")
    rows = table(args)
    lines = [
        *section.lines(" (other jobs on the machine slow both rows of a case alike only"
                       " roughly)"),
        f"- method: compiled `jax.value_and_grad` in the student's hidden states and head, width"
        f" {args.width}, {args.dtype} inputs; temporaries from XLA's memory analysis; ms = median"
        f" of {args.repeats} calls after a warm-up; ratios against the unfused row of the same"
        " case, measured in the same run.", f"- Liger-Kernel: {_liger_status()}", "", *rows, ""]
    report.publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
