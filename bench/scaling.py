"""Sharding layouts: measured on 8 simulated CPU devices, and modelled on TPU slices.

  python bench/scaling.py [--steps 10] [--repeats 3] [--batch_size 64] [--out results/perf.md]
                          [--teacher llama3-8b] [--student llama3.2-1b] [--slice v5e-256]
                          [--global_batch 256] [--seq_len 2048]

Measured: `minilm_sentences:local` (all-MiniLM-L6-v2 teacher, 3-layer student) on 8 simulated
CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), with the student and teacher
replicated (mesh data=8, every logical axis unsharded), fully sharded (fsdp=8), and FSDP ×
tensor (fsdp=4, tensor=2). For each layout: the engine's per-device estimate (the numbers it
prints before compiling; its activations are split over data × fsdp only, so with tensor > 1
they are an upper bound), XLA's memory analysis of the compiled train step (arguments = state,
teacher and batch; temporaries = everything else the step allocates), and the step time (median
of the repeats, after 2 warm-up steps). The simulated devices share the host's cores, so the
times show the partitioned programs' overheads, not real speed-ups.

Modelled: a teacher distilled into a student LM on one TPU slice, per device and per step:
  student state  P_s · 16 B (fp32 params, grads, two Adam moments) / (fsdp · tensor)
  teacher        P_t · 2 B (bf16, inference only) / (fsdp · tensor)
  activations    tokens · L · 34 · d B / tensor for the student (Korthikanti et al. 2022, with
                 selective recomputation) plus one teacher layer's 34 · d B per token
  logits         3 · tokens · V · 4 B / tensor (teacher and student logits and the student's
                 logit gradients in fp32); the fused linear-divergence kernel removes this term
  communication  FSDP: all-gather the bf16 student params twice and reduce-scatter fp32 grads,
                 all-gather the bf16 teacher once; data: all-reduce fp32 grads; tensor: two
                 all-reduces of bf16 activations per layer forward (and two backward, student)
  compute        (6 · P_s + 2 · P_t) · tokens FLOPs, attention left out
where tokens = global batch · sequence length / (data · fsdp) and ring collectives move
(n − 1)/n of the gathered size per device (2 (n − 1)/n for an all-reduce). Times are lower
bounds: peak bf16 FLOP/s and the chip's full ICI bandwidth, no overlap assumed or needed.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import report  # noqa: E402

from jaxdistill import config as config_lib  # noqa: E402
from jaxdistill import data
from jaxdistill.run import build  # noqa: E402

MiB, GiB = 2**20, 2**30


@dataclasses.dataclass(frozen=True)
class LM:
    params: float
    width: int
    layers: int
    vocab: int


@dataclasses.dataclass(frozen=True)
class Chip:
    peak_flops: float  # dense bf16 FLOP/s
    memory: float  # bytes of HBM
    interconnect: float  # bytes/s of ICI (or NVLink) per chip


# Public model cards and TPU / GPU spec sheets.
MODELS = {
    "llama3-70b": LM(70.6e9, 8192, 80, 128256),
    "llama3-8b": LM(8.03e9, 4096, 32, 128256),
    "llama3.2-1b": LM(1.24e9, 2048, 16, 128256),
    "llama3.2-3b": LM(3.21e9, 3072, 28, 128256),
}
CHIPS = {
    "v5e": Chip(197e12, 16 * GiB, 1600e9 / 8),
    "v5p": Chip(459e12, 95 * GiB, 4800e9 / 8),
    "v4": Chip(275e12, 32 * GiB, 2400e9 / 8),
    "h100": Chip(989e12, 80e9, 900e9),
}


def _measure_layout(name: str, mesh: dict, replicate: bool, args) -> dict:
    config = config_lib.load("minilm_sentences:local")
    config.batch_size = args.batch_size
    config.mesh.update(mesh)
    if replicate:
        for owner in ("student", "teacher"):
            config.sharding[owner] = tuple((axis, None) for axis, _ in config.sharding[owner])
    run = build(config)
    batch = run.shard_batch(next(data.train_iterator(config.data, config.batch_size, 0)))
    estimate = run.memory_report(batch)
    state = run.init()
    compiled = run.compiled_memory(state, batch)
    for _ in range(2):
        state, _ = run.train_step(state, batch)
    times = []
    for _ in range(args.repeats):
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = run.train_step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / args.steps)
    return {"layout": name, "mesh": mesh, "estimate": estimate, "compiled": compiled,
            "step_s": statistics.median(times), "tokens": config.data.max_length}


def measured_table(args) -> tuple[list[str], int]:
    rows = [_measure_layout(*layout, args) for layout in (
        ("replicated", {"data": 8, "fsdp": 1, "tensor": 1}, True),
        ("fsdp", {"data": 1, "fsdp": 8, "tensor": 1}, False),
        ("fsdp + tensor", {"data": 1, "fsdp": 4, "tensor": 2}, False))]
    base = rows[0]
    lines = ["| layout | mesh (data, fsdp, tensor) | student params + optimizer | teacher params"
             " | activations (estimate) | compiled arguments | compiled temporaries"
             " | step ms | step time ÷ replicated |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        estimate, compiled = row["estimate"], row["compiled"]
        mesh = ", ".join(str(row["mesh"][axis]) for axis in ("data", "fsdp", "tensor"))
        lines.append(
            f"| {row['layout']} | {mesh}"
            f" | {(estimate['student_params'] + estimate['optimizer_state']) / MiB:.1f} MiB"
            f" | {estimate['teacher_params'] / MiB:.1f} MiB"
            f" | {estimate['activations'] / MiB:.1f} MiB"
            f" | {compiled['arguments'] / MiB:.1f} MiB | {compiled['temporaries'] / MiB:.1f} MiB"
            f" | {row['step_s'] * 1e3:.0f} | {row['step_s'] / base['step_s']:.2f} |")
    return lines, base["tokens"]


def model_layout(teacher: LM, student: LM, chip: Chip, devices: int, layout: tuple[int, int, int],
                 global_batch: int, seq_len: int) -> dict:
    """Per-device memory (bytes) and per-step time bounds (s) of one layout; see the docstring."""
    dp, fsdp, tp = layout
    assert dp * fsdp * tp == devices, layout
    tokens = global_batch * seq_len / (dp * fsdp)
    memory = {
        "student state": student.params * 16 / (fsdp * tp),
        "teacher": teacher.params * 2 / (fsdp * tp),
        "activations": tokens * 34 * (student.layers * student.width + teacher.width) / tp,
        "logits": 3 * tokens * student.vocab * 4 / tp,
    }
    def ring(n):
        return (n - 1) / n

    communication = (
        ring(fsdp) * (student.params / tp * (2 * 2 + 4) + teacher.params / tp * 2)
        + 2 * ring(dp) * student.params * 4 / (fsdp * tp)
        + 2 * ring(tp) * tokens * 2 * (4 * student.width * student.layers
                                       + 2 * teacher.width * teacher.layers))
    flops = (6 * student.params + 2 * teacher.params) * tokens / tp
    return {"memory": memory, "communication_bytes": communication,
            "compute_s": flops / chip.peak_flops,
            "communication_s": communication / chip.interconnect}


def modelled_table(args) -> tuple[list[str], str]:
    teacher, student = MODELS[args.teacher], MODELS[args.student]
    chip_name, devices = args.slice.split("-")
    chip, devices = CHIPS[chip_name], int(devices)
    layouts = [(devices, 1, 1), (1, devices, 1), (1, devices // 2, 2), (1, devices // 4, 4),
               (1, devices // 8, 8), (8, devices // 8, 1)]
    lines = ["| layout (data, fsdp, tensor) | student state | teacher | activations | logits"
             " (unfused) | total, fused loss | total, unfused | fits (fused / unfused)"
             " | communication / step | compute ≥ | communication ≥ |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for layout in layouts:
        model = model_layout(teacher, student, chip, devices, layout, args.global_batch,
                             args.seq_len)
        memory = model["memory"]
        fused = sum(memory.values()) - memory["logits"]
        unfused = sum(memory.values())
        fits = " / ".join("yes" if total <= chip.memory else "no" for total in (fused, unfused))
        lines.append(
            f"| {', '.join(map(str, layout))} | " + " | ".join(
                f"{memory[key] / GiB:.2f} GiB" for key in memory)
            + f" | {fused / GiB:.2f} GiB | {unfused / GiB:.2f} GiB | {fits}"
            f" | {model['communication_bytes'] / 1e9:.2f} GB | {model['compute_s'] * 1e3:.0f} ms"
            f" | {model['communication_s'] * 1e3:.0f} ms |")
    title = (f"{args.teacher} ({teacher.params / 1e9:.2f}B) → {args.student}"
             f" ({student.params / 1e9:.2f}B) on {args.slice} ({chip.memory / GiB:.0f} GiB,"
             f" {chip.peak_flops / 1e12:.0f} TFLOP/s bf16, {chip.interconnect / 1e9:.0f} GB/s ICI"
             f" per chip); global batch {args.global_batch} × {args.seq_len} tokens")
    return lines, title


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--teacher", choices=MODELS, default="llama3-8b")
    parser.add_argument("--student", choices=MODELS, default="llama3.2-1b")
    parser.add_argument("--slice", default="v5e-256", help="CHIP-DEVICES, CHIP one of "
                        + ", ".join(CHIPS))
    parser.add_argument("--global_batch", type=int, default=256)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--out", default=None, help="append the report to this file")
    args = parser.parse_args()
    started = time.perf_counter()
    measured, tokens = measured_table(args)
    modelled, title = modelled_table(args)
    lines = [
        f"## Sharding layouts: 8 simulated CPU devices, and a modelled TPU slice"
        f" ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        report.machine(f"{jax.device_count()} simulated CPU devices"),
        f"- wall time of the whole script: {time.perf_counter() - started:.0f} s", "",
        f"Measured: `minilm_sentences:local` (all-MiniLM-L6-v2 → 3-layer student), batch"
        f" {args.batch_size} × {tokens} tokens; per device; step time is the median of"
        f" {args.repeats}"
        f" repeats of {args.steps} steps. The 8 devices share the host's cores, so step times"
        " compare the partitioned programs, not hardware.", "", *measured, "",
        f"Modelled (formulas in `bench/scaling.py`): {title}. Per device; times are lower bounds"
        " at peak FLOP/s and full ICI bandwidth.", "", *modelled, ""]
    report.publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
