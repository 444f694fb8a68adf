"""One sCT / MeanFlow train step of a DiT, attention through the flash kernel vs naive.

  python bench/step_distillation.py [--image 32 64] [--patch 2] [--batch 16] [--width 384]
                                    [--depth 6] [--heads 6] [--methods sct meanflow]
                                    [--repeats 3] [--out results/perf.md]

For each image size (square, 3 channels, patch p: S = (image/p)² tokens) and JVP-trained method
(`sct`: sCM's tangent by `jax.jvp` through the student; `meanflow`: du/dt by `jax.jvp`), the
compiled `jax.value_and_grad` of the method's loss in the DiT's params (exactly what the train
step differentiates) is measured with `attention="flash"` (the default:
`jaxdistill.kernels.flash_attention`, whose JVP is one fused pass) and `attention="naive"`
(softmax(QKᵀ)V materialized), on random images: XLA's memory analysis of the compiled program
(temporaries) and the median time of the repeats after a warm-up, with the ratios naive ÷ flash.
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import report

from jaxdistill import config as config_lib
from jaxdistill import methods, models

MiB = 2**20
CONFIGS = {"sct": "scm2024:paper", "meanflow": "meanflow2025:paper"}


def loss_and_grad(method: str, args, image: int, attention: str):
    config = config_lib.load(CONFIGS[method])
    config.method = method
    config.student.update({"width": args.width, "depth": args.depth, "heads": args.heads,
                           "patch": args.patch, "num_classes": 0, "attention": attention})
    module = models.build(config.student)
    # sCT and MeanFlow read neither a teacher nor the dataset (random images stand in for it).
    context = methods.Context(config=config, student=module, teacher=None, dataset=None)
    loss = methods.as_stateful(methods.get(method).make_loss(context))
    x = jax.random.normal(jax.random.key(0), (args.batch, image, image, 3))
    params = module.init(jax.random.key(1), x, jnp.ones(args.batch))
    batch = {"x": x}

    def objective(params):
        return loss.loss_fn(params, None, batch, jax.random.key(2), 1000, None)[0]

    return jax.jit(jax.value_and_grad(objective)).lower(params).compile(), params


def row(method: str, image: int, args) -> str:
    results = {}
    for attention in ("naive", "flash"):
        try:
            compiled, params = loss_and_grad(method, args, image, attention)
            results[attention] = {"temp": compiled.memory_analysis().temp_size_in_bytes,
                                  "seconds": report.median_seconds(
                                      functools.partial(compiled, params), args.repeats)}
        except Exception as e:  # noqa: BLE001 (an out-of-memory naive step is a result)
            print(f"{method} {image} {attention}: {type(e).__name__}: {e}"[:400], file=sys.stderr)
            results[attention] = None
    tokens = (image // args.patch) ** 2
    cells = ["failed (see stderr)" if r is None else
             f"{r['temp'] / MiB:,.1f} MiB / {1e3 * r['seconds']:,.1f} ms"
             for r in results.values()]
    naive, flash = results["naive"], results["flash"]
    ratios = ("— | —" if naive is None or flash is None else
              f"{naive['temp'] / max(flash['temp'], 1):.2f}× |"
              f" {naive['seconds'] / flash['seconds']:.2f}")
    line = f"| {method} | {image}×{image} | {tokens} | {' | '.join(cells)} | {ratios} |"
    print(line, flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--methods", nargs="+", default=["sct", "meanflow"], choices=CONFIGS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="append the report to this file")
    args = parser.parse_args()
    section = report.Section("JVP-trained DiT step (sCT, MeanFlow): flash vs naive attention")
    header = ["| method | image | tokens S | naive attention | flash attention |"
              " temp: naive ÷ flash | time: naive ÷ flash |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    print(*header, sep="\n")
    rows = [row(method, image, args) for method in args.methods for image in args.image]
    lines = [
        *section.lines(),
        f"- method: DiT width {args.width}, depth {args.depth}, {args.heads} heads, patch"
        f" {args.patch}, batch {args.batch}, float32; each cell is XLA's memory analysis of the"
        " compiled value-and-grad of the method's loss (temporaries) / median of"
        f" {args.repeats} calls after a warm-up, both attentions measured in the same run.", "",
        *header, *rows, ""]
    report.publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
