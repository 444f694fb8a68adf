"""Flash attention's fused JVP vs `jax.jvp` of naive attention: temporary memory and time.

  python bench/attention_jvp.py [--seq 512 1024 2048 4096] [--batch 1] [--heads 4]
                                [--head_dim 64] [--causal] [--implementation auto]
                                [--repeats 3] [--out results/perf.md]

For each sequence length S, four compiled programs on [B, S, H, D] inputs:
  naive forward   `kernels.attention_reference`: [B, H, S, S] scores and probabilities
  naive jvp       `jax.jvp` of it (XLA differentiates the materialized softmax)
  flash forward   `kernels.flash_attention` (the chunked XLA path on CPU, Pallas on GPU/TPU)
  flash jvp       `jax.jvp` of it: the fused one-pass (O, Ȯ) kernel
Memory is XLA's memory analysis of the compiled program (temporaries: everything but inputs
and outputs); time is the median of the repeats after one warm-up call, all in the same run.
The table gives naive jvp ÷ flash jvp temporaries (DESIGN target ≥ 8× at B=1, S=4096, H=4,
D=64) and flash jvp ÷ flash forward time (the recurrence does about 3× a forward's matmuls).
"""

from __future__ import annotations

import argparse
import functools

import jax
import report

from jaxdistill.kernels.flash_attention import attention_reference, flash_attention

MiB = 2**20


def measure(fn, inputs, repeats: int) -> dict:
    compiled = jax.jit(fn).lower(*inputs).compile()
    return {"temp": compiled.memory_analysis().temp_size_in_bytes,
            "seconds": report.median_seconds(lambda: compiled(*inputs), repeats)}


def programs(args) -> dict:
    naive = functools.partial(attention_reference, causal=args.causal)
    flash = functools.partial(flash_attention, causal=args.causal,
                              implementation=args.implementation)

    def jvp(attention):
        return lambda q, k, v, q_dot, k_dot, v_dot: jax.jvp(
            attention, (q, k, v), (q_dot, k_dot, v_dot))

    def forward(attention):
        return lambda q, k, v, *_: attention(q, k, v)

    return {"naive forward": forward(naive), "naive jvp": jvp(naive),
            "flash forward": forward(flash), "flash jvp": jvp(flash)}


def row(seq: int, args) -> str:
    shape = (args.batch, seq, args.heads, args.head_dim)
    keys = jax.random.split(jax.random.key(seq), 6)
    inputs = [jax.random.normal(key, shape).astype(args.dtype) for key in keys]
    results = {name: measure(fn, inputs, args.repeats) for name, fn in programs(args).items()}
    cells = [f"{r['temp'] / MiB:,.1f} MiB / {1e3 * r['seconds']:,.1f} ms" for r in results.values()]
    memory_ratio = results["naive jvp"]["temp"] / max(results["flash jvp"]["temp"], 1)
    flash_ratio = results["flash jvp"]["seconds"] / results["flash forward"]["seconds"]
    naive_ratio = results["naive jvp"]["seconds"] / results["naive forward"]["seconds"]
    speed = results["naive jvp"]["seconds"] / results["flash jvp"]["seconds"]
    line = (f"| {seq} | {' | '.join(cells)} | {memory_ratio:,.1f}× | {flash_ratio:.2f} |"
            f" {naive_ratio:.2f} | {speed:.2f} |")
    print(line, flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--implementation", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="append the report to this file")
    args = parser.parse_args()
    section = report.Section("Flash attention JVP vs jax.jvp of naive attention")
    header = ["| S | naive forward | naive jvp | flash forward | flash jvp | temp: naive jvp ÷"
              " flash jvp | time: flash jvp ÷ flash fwd | time: naive jvp ÷ naive fwd |"
              " time: naive jvp ÷ flash jvp |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    print(*header, sep="\n")
    rows = [row(seq, args) for seq in args.seq]
    lines = [
        *section.lines(),
        f"- method: B={args.batch}, H={args.heads}, D={args.head_dim}, {args.dtype},"
        f" causal={args.causal}, flash implementation={args.implementation!r}; each cell is"
        " XLA's memory analysis of the compiled program (temporaries) / median of"
        f" {args.repeats} calls after a warm-up, every program measured in the same run.", "",
        *header, *rows, ""]
    report.publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
