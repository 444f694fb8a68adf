"""Do the fused-divergence kernels lower on this accelerator, and agree with the reference?

  python kernels/check_fused_divergence_gpu.py [--tokens 256] [--width 64] [--vocab 2048]
      [--kinds fkl jsd] [--blocks 64:512 32:128] [--interpret]

For each divergence, Pallas block shape (block_tokens:block_vocab) and float32 matmul precision
(XLA's default, which is TF32 on an NVIDIA GPU, and "highest"), the compiled
`jax.value_and_grad` of `fused_linear_divergence(..., implementation="pallas")` in the student's
hidden states and head, with a mask, is compared with the float64 unfused reference (materialized
logits, then `losses.divergence`, on the CPU). The chunked XLA path and the float32 unfused
reference on the same device are listed beside it for scale. Errors: |value − ref| ÷ |ref|, and
for each gradient max |g − ref| ÷ max |ref|. A kernel that fails to lower or compile is reported
with its error's first lines, and the other cases go on. `--interpret` runs the kernels in
Pallas's interpret mode (a CPU check of this script). Exit status 1 if any Pallas case failed
or exceeded the tolerance (value 1e-4 and gradients 1e-3 at "highest"; 1e-2 at the default).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.kernels import fused_divergence as fused


def _inputs(tokens: int, width: int, teacher_width: int, vocab: int):
    rng = np.random.default_rng(0)
    arrays = (rng.normal(size=(tokens, width)), rng.normal(size=(width, vocab)) * width**-0.5 * 3,
              rng.normal(size=(tokens, teacher_width)),
              rng.normal(size=(teacher_width, vocab)) * teacher_width**-0.5 * 3)
    mask = rng.random(tokens) > 0.25
    return arrays, mask


def _reference64(arrays, mask, kind):
    cpu = jax.devices("cpu")[0]
    with jax.enable_x64(True), jax.default_device(cpu):
        value, grads = jax.value_and_grad(fused.reference, argnums=(0, 1))(
            *(jnp.asarray(x, jnp.float64) for x in arrays), kind, mask=jnp.asarray(mask))
        return float(value), [np.asarray(g) for g in grads]


def _run32(loss, arrays, precision):
    with jax.default_matmul_precision(precision):
        started = time.perf_counter()
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(
            *(jnp.asarray(x, jnp.float32) for x in arrays)).compile()
        compile_s = time.perf_counter() - started
        value, grads = compiled(*(jnp.asarray(x, jnp.float32) for x in arrays))
    return float(value), [np.asarray(g, np.float64) for g in grads], compile_s


def _errors(value, grads, want_value, want_grads):
    return (abs(value - want_value) / abs(want_value),
            *(float(np.max(np.abs(g - w)) / np.max(np.abs(w))) for g, w in zip(grads, want_grads)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--teacher_width", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--kinds", nargs="+", default=["fkl", "jsd"])
    parser.add_argument("--blocks", nargs="+", default=["64:512", "32:128"],
                        help="Pallas block_tokens:block_vocab pairs; 64:512 is the default")
    parser.add_argument("--precisions", nargs="+", default=["default", "highest"])
    parser.add_argument("--interpret", action="store_true")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device"
          f" {jax.devices()[0].device_kind}; N={args.tokens}, d={args.width},"
          f" d_teacher={args.teacher_width}, V={args.vocab}, float32 inputs, mask on", flush=True)
    arrays, mask = _inputs(args.tokens, args.width, args.teacher_width, args.vocab)
    print("| kind | implementation | precision | compile s | value rel err | dh_s max rel err"
          " | dW_s max rel err |\n| --- | --- | --- | ---: | ---: | ---: | ---: |", flush=True)
    failed = False
    for kind in args.kinds:
        want_value, want_grads = _reference64(arrays, mask, kind)
        cases = [("unfused (XLA), float32", functools.partial(
                     fused.reference, kind=kind, mask=jnp.asarray(mask)), None),
                 ("fused, chunked XLA", functools.partial(
                     fused.fused_linear_divergence, kind=kind, mask=jnp.asarray(mask),
                     implementation="xla"), None)]
        for blocks in args.blocks:
            block_tokens, block_vocab = (int(b) for b in blocks.split(":"))
            cases.append((f"fused, Pallas {block_tokens}×{block_vocab}", functools.partial(
                fused.fused_linear_divergence, kind=kind, mask=jnp.asarray(mask),
                implementation="pallas", block_tokens=block_tokens, block_vocab=block_vocab,
                interpret=args.interpret), 1e-4))
        for name, loss, tolerance in cases:
            for precision in args.precisions:
                try:
                    value, grads, compile_s = _run32(loss, arrays, precision)
                except Exception as error:  # noqa: BLE001 - the failure is the result
                    failed = True
                    print(f"| {kind} | {name} | {precision} | FAILED: {type(error).__name__} |",
                          flush=True)
                    text = "".join(traceback.format_exception_only(error)).splitlines()
                    print("    " + "\n    ".join(text[:30]), flush=True)
                    continue
                errors = _errors(value, grads, want_value, want_grads)
                print(f"| {kind} | {name} | {precision} | {compile_s:.1f} | "
                      + " | ".join(f"{e:.1e}" for e in errors) + " |", flush=True)
                if tolerance is not None:
                    scale = 1.0 if precision == "highest" else 100.0
                    failed |= (errors[0] > tolerance * scale
                               or max(errors[1:]) > 10 * tolerance * scale)
    print("RESULT:", "some Pallas case failed or was off" if failed else "all Pallas cases agree")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
