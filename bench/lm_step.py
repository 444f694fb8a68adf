"""LM distillation train step on CPU: jaxdistill's `run.train_step` vs the same step in PyTorch.

  python bench/lm_step.py [--vocab 8192 32768] [--batch 8] [--length 256] [--steps 10]
                          [--warmup 3] [--teacher_layers 4] [--teacher_width 256]
                          [--student_layers 2] [--student_width 128] [--seed 0]
                          [--implementations jax_unfused jax_fused torch_eager torch_compile]
                          [--torch_threads N] [--report results/perf.md]

Word-level KD (method `logit_kd`: forward KL(teacher ‖ student) of the next-token
distributions at temperature 1, mean over the counted tokens) of a Llama-shaped student by a
Llama-shaped teacher, on `--batch` rows of `--length` random token ids, for each vocabulary V:

  jax_unfused     `jaxdistill.run.build(config).train_step`, config `gkd_docs:local` with
                  method logit_kd, divergence fkl, temperature 1, loss.fused=False: one jitted
                  step (teacher forward under stop_gradient, student forward and backward, both
                  [tokens, V] logits materialized, AdamW update, the step's metrics), 1 device
  jax_fused       the same with loss.fused=True: `kernels.fused_linear_divergence` (on CPU its
                  chunked XLA path), no [tokens, V] logits
  torch_eager     transformers' `LlamaForCausalLM` teacher (eval, `torch.no_grad()`) and
                  student (train), logits → log_softmax → `F.kl_div(..., log_target=True)`
                  summed over V, masked mean over tokens; `zero_grad`, `backward`,
                  `clip_grad_norm_`, `torch.optim.AdamW` with the config's hyperparameters
  torch_compile   the same under `torch.compile` (Inductor): the loss function (both forwards,
                  and through AOTAutograd the student's backward) and the clip + AdamW update,
                  compiled as two functions, `backward()` called between them

Models (heads, kv heads and MLP widths are the bench's choice, Llama-like ratios): teacher
`--teacher_layers` × `--teacher_width` (4 heads, 2 kv heads, MLP 8/3 × width rounded up to 8),
student `--student_layers` × `--student_width` (4 heads, 2 kv heads, MLP likewise), tied
embeddings, RoPE θ 10⁴, float32. The teacher's weights are jaxdistill's random init (seed + 1),
written as a Hugging Face directory by `jaxdistill.export.write`; jaxdistill loads it as
`config.teacher.pretrained`, torch with `from_pretrained`. The student's initial weights are
`run.init()`'s (config.seed), written the same way for torch; every jaxdistill process rebuilds
them from the seed. The dataset's tokenizer (a V-token word-level tokenizer, saved with the
teacher) satisfies the run's tokenizer and vocabulary checks; the data pipeline is bypassed:
batches are built in the packed-row format the method reads (`input_ids` = <bos> then the
targets shifted right, `targets`, `segment_ids` 1, `positions` 0..L−1, `loss_mask` 1; one
document per row), from token ids drawn by `numpy.random.default_rng(seed)`, and placed with
`run.shard_batch` (torch: tensors) before timing.

Each implementation runs in its own fresh process, so that its peak RSS is its own. It takes a
first step on batch 0 from the shared initial weights and checks its loss against the first
implementation's (jax_unfused by default) to 1e-4 relative before anything is timed (a process
that disagrees stops there); then `--warmup` untimed steps (compilation happens in the first
step and here), then `--steps` timed steps, each to completion (jax: `block_until_ready`),
cycling through 4 fixed batches. tokens/s = batch × length / the median step time. Memory:
the peak RSS growth during the timed steps (VmHWM of /proc/self/status, reset through
/proc/self/clear_refs just before them, minus VmRSS then) and, for jaxdistill, the temporaries
of XLA's memory analysis of the compiled step (`Run.compiled_memory`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from proc_memory import reset_peak, vm

MiB = 2**20
IMPLEMENTATIONS = ("jax_unfused", "jax_fused", "torch_eager", "torch_compile")
LABELS = {"jax_unfused": "jaxdistill, unfused logits", "jax_fused": "jaxdistill, fused",
          "torch_eager": "PyTorch eager", "torch_compile": "PyTorch torch.compile"}
NUM_BATCHES = 4  # distinct batches, cycled through by every implementation
RTOL = 1e-4
# The goals: tokens/s ÷ torch.compile's at the same V.
GOALS = {"jax_fused": 1.2, "jax_unfused": 1.0}


# --------------------------------------------------------------------- models and batches

def mlp_dim(width: int) -> int:
    """Llama's 8/3 × width, rounded up to a multiple of 8."""
    return 8 * math.ceil(8 * width / 3 / 8)


def model_fields(layers: int, width: int, vocab: int, length: int) -> dict:
    return {"num_layers": layers, "width": width, "num_heads": 4, "num_kv_heads": 2,
            "head_dim": None, "mlp_dim": mlp_dim(width), "vocab_size": vocab,
            "max_length": max(256, length)}


def describe(layers: int, width: int) -> str:
    return (f"{layers} layers × width {width} (4 heads of {width // 4}, 2 kv heads,"
            f" MLP {mlp_dim(width)})")


def make_config(args, vocab: int, workdir: str, fused: bool):
    """The jaxdistill run: gkd_docs:local switched to logit_kd with fkl at temperature 1."""
    import ml_collections

    from jaxdistill import config as config_lib

    teacher_dir = os.path.join(workdir, "teacher")
    config = config_lib.load("gkd_docs:local")
    config.method = "logit_kd"
    config.update_from_flattened_dict({
        "loss.divergence": "fkl", "loss.temperature": 1.0, "loss.fused": fused,
        "data.format": "packed", "data.max_length": args.length,
        "data.data_dir": os.path.join(workdir, "tfds"), "data.tokenizer": teacher_dir,
        "teacher.pretrained": teacher_dir, "teacher.config": "",
        # A constant learning rate, so that torch's AdamW needs no schedule to match.
        "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
        "batch_size": args.batch, "seed": args.seed})
    config.student = ml_collections.ConfigDict({**config.student.to_dict(), **model_fields(
        args.student_layers, args.student_width, vocab, args.length)})
    return config


def word_tokenizer(vocab: int):
    """A word-level tokenizer of exactly `vocab` tokens (<unk>, <s>, </s>, t3, ...): the run's
    checks need one of the model's vocabulary size; the bench never tokenizes with it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tokenizer = Tokenizer(models.WordLevel(tokens, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def batches(args, vocab: int) -> list[dict[str, np.ndarray]]:
    """`NUM_BATCHES` packed-row batches of random ids (one document per row), as numpy."""
    rng = np.random.default_rng(args.seed)
    shape = (args.batch, args.length)
    found = []
    for _ in range(NUM_BATCHES):
        targets = rng.integers(3, vocab, size=shape, dtype=np.int32)
        input_ids = np.concatenate([np.full((args.batch, 1), 1, np.int32), targets[:, :-1]], 1)
        found.append({"input_ids": input_ids, "targets": targets,
                      "segment_ids": np.ones(shape, np.int32),
                      "positions": np.broadcast_to(np.arange(args.length, dtype=np.int32),
                                                   shape).copy(),
                      "loss_mask": np.ones(shape, np.int32)})
    return found


def prepare(args, vocab: int, workdir: str) -> dict:
    """Writes the teacher (random init, seed + 1) and the student's initial weights (the run's
    own `init()`) as Hugging Face directories under `workdir`; prepares the TFDS corpus the
    run's checks read."""
    import flax.linen as nn
    import jax
    import ml_collections

    from jaxdistill import config as config_lib
    from jaxdistill import export, models
    from jaxdistill.run import build

    tokenizer = word_tokenizer(vocab)
    teacher_fields = {**config_lib.load("gkd_docs:local").student.to_dict(), **model_fields(
        args.teacher_layers, args.teacher_width, vocab, args.length)}
    teacher = models.build(ml_collections.ConfigDict(teacher_fields))
    params = nn.unbox(teacher.init(jax.random.key(args.seed + 1),
                                   np.ones((1, args.length), np.int32), train=False))
    export.write(os.path.join(workdir, "teacher"), teacher_fields, jax.device_get(params),
                 tokenizer)
    config = make_config(args, vocab, workdir, fused=False)
    run = build(config, devices=jax.devices()[:1])
    state = run.init()
    export.write(os.path.join(workdir, "student"), config.student.to_dict(),
                 jax.device_get(state.params), tokenizer)
    with open(os.path.join(workdir, "optimizer.json"), "w") as f:  # for the torch processes
        json.dump(config.optimizer.to_dict(), f)
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    return {"teacher_params": count(params), "student_params": count(state.params),
            "optimizer": config.optimizer.to_dict()}


# ---------------------------------------------------------------------------- measuring


def timed_steps(step, steps: int) -> dict:
    """Times `steps` calls of `step(i)` (each must finish its work) and the RSS they add."""
    rss_before = vm("VmRSS")
    reset = reset_peak()
    sampled, done = [rss_before], threading.Event()
    if not reset:  # no clear_refs: sample VmRSS instead (misses peaks shorter than 5 ms)
        def sample():
            while not done.wait(0.005):
                sampled.append(vm("VmRSS"))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    done.set()
    peak = vm("VmHWM") if reset else max(sampled)
    return {"seconds": statistics.median(times), "times": times, "rss_before": rss_before,
            "rss_growth": max(peak - rss_before, 0), "peak_from": "VmHWM" if reset else
            "sampled VmRSS"}


def check_first_loss(loss: float, reference: float | None) -> None:
    if reference is not None and not math.isclose(loss, reference, rel_tol=RTOL):
        raise SystemExit(f"first-step loss {loss:.8g} differs from the reference {reference:.8g}"
                         f" by {abs(loss / reference - 1):.2e} relative (> {RTOL:g}): not timed")


def jax_child(args, impl: str, vocab: int, workdir: str, reference: float | None) -> dict:
    import jax

    from jaxdistill.run import build

    run = build(make_config(args, vocab, workdir, fused=impl == "jax_fused"),
                devices=jax.devices()[:1])
    state = run.init()
    placed = [run.shard_batch(b) for b in batches(args, vocab)]
    memory = run.compiled_memory(state, placed[0])
    state, metrics = run.train_step(state, placed[0])
    loss = float(metrics["loss"])
    check_first_loss(loss, reference)
    for i in range(args.warmup):
        state, _ = run.train_step(state, placed[(i + 1) % NUM_BATCHES])
    jax.block_until_ready(state)

    def step(i):
        nonlocal state
        state, _ = run.train_step(state, placed[(args.warmup + 1 + i) % NUM_BATCHES])
        jax.block_until_ready(state)

    return {"first_loss": loss, "xla": memory, **timed_steps(step, args.steps)}


def torch_child(args, impl: str, vocab: int, workdir: str, reference: float | None) -> dict:
    import torch
    import torch.nn.functional as F
    import transformers

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    load = lambda name: transformers.LlamaForCausalLM.from_pretrained(  # noqa: E731
        os.path.join(workdir, name), dtype=torch.float32, attn_implementation="sdpa")
    teacher, student = load("teacher").eval(), load("student").train()
    teacher.requires_grad_(False)
    with open(os.path.join(workdir, "optimizer.json")) as f:  # the jaxdistill run's
        opt = json.load(f)
    if opt["name"] != "adamw" or opt["schedule"] != "constant" or opt["warmup_steps"]:
        raise SystemExit(f"the torch step implements a constant-lr AdamW, not {opt}")
    optimizer = torch.optim.AdamW(student.parameters(), lr=opt["lr"],
                                  betas=(opt["b1"], opt["b2"]), eps=1e-8,  # optax's default
                                  weight_decay=opt["weight_decay"])
    params = [p for p in student.parameters() if p.requires_grad]
    tau = 1.0

    def loss_fn(input_ids, mask):
        with torch.no_grad():
            teacher_logits = teacher(input_ids=input_ids, use_cache=False).logits
        logits = student(input_ids=input_ids, use_cache=False).logits
        # kl_div(log q, log p, log_target) = p (log p − log q): KL(teacher ‖ student) per entry.
        per_token = F.kl_div(F.log_softmax(logits / tau, -1),
                             F.log_softmax(teacher_logits / tau, -1),
                             reduction="none", log_target=True).sum(-1)
        return tau**2 * (per_token * mask).sum() / mask.sum().clamp_min(1.0)

    def update():
        if opt["grad_clip_norm"]:
            torch.nn.utils.clip_grad_norm_(params, opt["grad_clip_norm"])
        optimizer.step()

    if impl == "torch_compile":
        loss_fn, update = torch.compile(loss_fn), torch.compile(update)
    data = [(torch.from_numpy(b["input_ids"]).long(), torch.from_numpy(b["loss_mask"]).float())
            for b in batches(args, vocab)]

    def train_step(batch) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(*batch)
        loss.backward()
        update()
        return loss

    loss = train_step(data[0]).item()
    check_first_loss(loss, reference)
    for i in range(args.warmup):
        train_step(data[(i + 1) % NUM_BATCHES])
    result = timed_steps(lambda i: train_step(data[(args.warmup + 1 + i) % NUM_BATCHES]).item(),
                         args.steps)
    return {"first_loss": loss, "torch_threads": torch.get_num_threads(), **result}


def child(args) -> None:
    reference = None if args._reference == "none" else float(args._reference)
    run = jax_child if args._impl.startswith("jax") else torch_child
    result = run(args, args._impl, args._vocab, args._workdir, reference)
    print(json.dumps(result), flush=True)


def run_child(args, impl: str, vocab: int, workdir: str, reference: float | None) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, os.path.abspath(__file__), *args.forwarded, "--_impl", impl,
               "--_vocab", str(vocab), "--_workdir", workdir,
               "--_reference", "none" if reference is None else repr(reference)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        return {"failed": (done.stderr.strip().splitlines() or ["(no stderr)"])[-1][:300],
                "process_s": wall}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    brief = {k: v for k, v in result.items() if k != "times"}
    print(f"{impl} V={vocab}: {json.dumps(brief)}", file=sys.stderr, flush=True)
    return result


# ----------------------------------------------------------------------------- the report

def _mib(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / MiB:,.0f}"


def _ratio(result: dict, base: dict | None) -> str:
    if base is None or "failed" in base:
        return "n/a"
    return f"{base['seconds'] / result['seconds']:.2f}"


def table(args, results: dict) -> list[str]:
    tokens = args.batch * args.length
    lines = ["| implementation | V | step ms (median) | tokens/s | ÷ torch.compile | ÷ torch eager"
             " | peak RSS growth, timed steps MiB | RSS before timed steps MiB"
             " | XLA temporaries MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for vocab in args.vocab:
        for impl in args.implementations:
            r = results[vocab][impl]
            if "failed" in r:
                lines.append(f"| {LABELS[impl]} | {vocab} | failed: `{r['failed']}` | | | | | |"
                             " |")
                continue
            xla = r.get("xla")
            lines.append(
                f"| {LABELS[impl]} | {vocab} | {1e3 * r['seconds']:,.0f}"
                f" | {tokens / r['seconds']:,.0f}"
                f" | {_ratio(r, results[vocab].get('torch_compile'))}"
                f" | {_ratio(r, results[vocab].get('torch_eager'))}"
                f" | {_mib(r['rss_growth'])} | {_mib(r['rss_before'])}"
                f" | {_mib(xla['temporaries']) if xla else '—'} |")
    return lines


def loss_checks(args, results: dict) -> list[str]:
    lines = []
    for vocab in args.vocab:
        found = {impl: r["first_loss"] for impl, r in results[vocab].items() if "first_loss" in r}
        if not found:
            lines.append(f"- first-step loss check, V = {vocab}: no implementation ran")
            continue
        reference = found[next(iter(found))]
        worst = max(abs(loss / reference - 1) for loss in found.values())
        failed = [impl for impl, r in results[vocab].items() if "failed" in r]
        verdict = (f"agree to {worst:.1e} relative (≤ {RTOL:g})" if not failed
                   else f"{', '.join(failed)} failed (see the table)")
        lines.append(f"- first-step loss check, V = {vocab} (same weights, same batch): "
                     + ", ".join(f"{impl} {loss:.7f}" for impl, loss in found.items())
                     + f"; {verdict}")
    return lines


def goal_notes(args, results: dict) -> list[str]:
    lines = []
    for impl, goal in GOALS.items():
        for vocab in args.vocab:
            r, base = results[vocab].get(impl), results[vocab].get("torch_compile")
            if r is None or base is None or "failed" in r or "failed" in base:
                lines.append(f"- goal {LABELS[impl]} ≥ {goal}× torch.compile at V = {vocab}:"
                             " not measured (an implementation is missing or failed)")
                continue
            ratio = base["seconds"] / r["seconds"]
            verdict = "met" if ratio >= goal else "NOT met"
            lines.append(f"- goal {LABELS[impl]} ≥ {goal}× torch.compile at V = {vocab}:"
                         f" measured {ratio:.2f}×, {verdict}{shortfall(results[vocab], impl)}")
    return lines


def shortfall(by_impl: dict, impl: str) -> str:
    """What the same run measured about a missed goal: for the fused step, its time and XLA
    temporaries against the unfused step's (the fused loss exists to save memory; on CPU it is
    a loop over token chunks)."""
    r, base, unfused = by_impl[impl], by_impl["torch_compile"], by_impl.get("jax_unfused")
    if base["seconds"] / r["seconds"] >= GOALS[impl]:
        return ""
    if impl == "jax_fused" and unfused and "failed" not in unfused:
        ours, theirs = r["xla"]["temporaries"], unfused["xla"]["temporaries"]
        saved = ""
        if ours < theirs:
            saved = (": on CPU the fused loss is the chunked XLA path (a loop over token"
                     " chunks of the head matmuls), which here saved memory")
            if r["seconds"] > unfused["seconds"]:
                saved += ", not time"
        return (f"; the fused step took {r['seconds'] / unfused['seconds']:.2f}× the unfused"
                f" step's time, with {_mib(ours)} MiB of XLA temporaries against"
                f" {_mib(theirs)} MiB{saved}")
    return (f"; torch.compile's step took {1e3 * base['seconds']:,.0f} ms, this one"
            f" {1e3 * r['seconds']:,.0f} ms")


def caveats(args, results: dict, load_start: float) -> list[str]:
    notes = []
    load = os.getloadavg()[0]
    if load_start > 0.5 * (os.cpu_count() or 1):  # the end value counts this run's threads
        notes.append(
            f"- the machine was not idle (load average {load_start:.1f} at start, {load:.1f} at"
            f" the end, on {os.cpu_count()} cores, which this run's own threads partly make):"
            " other jobs slow the implementations unevenly, torch's multi-threaded ops most"
            " (their OpenMP threads wait on each other when a core is taken: on a busy 2-core"
            " machine a 2-thread torch step was measured 40× slower than a 1-thread one), so"
            " the ratios say little; rerun on an idle machine before reading the goals, or"
            " compare with --torch_threads 1")
    spread = [max(r["times"]) / min(r["times"]) for v in results.values() for r in v.values()
              if "times" in r]
    if spread and max(spread) > 1.5:
        notes.append(f"- step times varied by up to {max(spread):.1f}× (slowest ÷ fastest timed"
                     f" step of one implementation) with {args.steps} timed steps: noisy timing")
    notes.append(
        "- peak RSS growth counts only memory the timed steps take beyond what the warm-up"
        " left resident: allocators keep freed memory, so a step whose working set the warm-up"
        " already touched shows little or none; RSS before timed steps (compiled code, caches"
        " and that retained memory included) and XLA's temporaries say more about the step")
    notes.append(
        "- what the comparison is not: the jaxdistill step also computes its logged metrics"
        " (l2 norms of grads, updates and params, a non-finite count) that the torch step"
        " does not; torch.compile compiles the loss and the update as two graphs around"
        " backward() (default mode, no CUDA graphs on CPU); the teacher is random, so the"
        " divergence values are those of untrained models (the cost is the same)")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--batch", type=int, default=8, help="rows per batch")
    parser.add_argument("--length", type=int, default=256, help="tokens per row")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps after the checked first step")
    parser.add_argument("--teacher_layers", type=int, default=4)
    parser.add_argument("--teacher_width", type=int, default=256)
    parser.add_argument("--student_layers", type=int, default=2)
    parser.add_argument("--student_width", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0,
                        help="data (numpy) and student init (config.seed); teacher: seed + 1")
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS,
                        default=list(IMPLEMENTATIONS),
                        help="the first one run gives the reference first-step loss")
    parser.add_argument("--torch_threads", type=int, default=os.cpu_count(),
                        help="torch.set_num_threads (default: all CPUs, as XLA uses)")
    parser.add_argument("--report", default=None, help="append the report to this file")
    parser.add_argument("--_impl", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--_vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_workdir", help=argparse.SUPPRESS)
    parser.add_argument("--_reference", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("steps", "batch", "length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.student_width % 4 or args.teacher_width % 4:
        parser.error("widths must be multiples of the 4 heads")
    if args._impl:
        child(args)
        return

    import jax
    import report

    jax.config.update("jax_platforms", "cpu")  # a CPU benchmark: never pick up an accelerator
    load_start = os.getloadavg()[0]
    section = report.Section("LM distillation train step, jaxdistill vs PyTorch (bench/lm_step.py)")
    args.forwarded = [f"--{name}={getattr(args, name)}" for name in (
        "batch", "length", "steps", "warmup", "teacher_layers", "teacher_width",
        "student_layers", "student_width", "seed", "torch_threads")]
    results, prepared = {}, {}
    for vocab in args.vocab:
        workdir = tempfile.mkdtemp(prefix=f"lm_step.{vocab}.")
        try:
            t0 = time.perf_counter()
            prepared[vocab] = prepare(args, vocab, workdir)
            prepared[vocab]["seconds"] = time.perf_counter() - t0
            results[vocab], reference = {}, None
            for impl in args.implementations:
                results[vocab][impl] = run_child(args, impl, vocab, workdir, reference)
                if reference is None and "first_loss" in results[vocab][impl]:
                    reference = results[vocab][impl]["first_loss"]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    from importlib.metadata import version

    first = prepared[args.vocab[0]]
    opt = first["optimizer"]
    threads = {r["torch_threads"] for v in results.values() for r in v.values()
               if "torch_threads" in r}
    sizes = "; ".join(f"V = {v}: teacher {p['teacher_params']:,}, student"
                      f" {p['student_params']:,} params" for v, p in prepared.items())
    lines = [
        *section.lines(" (other jobs on the machine share its cores)"),
        "- versions: python " + platform.python_version() + ", " + ", ".join(
            f"{n} {version(n)}" for n in ("jax", "flax", "optax", "torch", "transformers")),
        f"- threads: torch.set_num_threads({', '.join(map(str, sorted(threads))) or 'n/a'});"
        " jax on 1 CPU device with XLA's default thread pool",
        f"- models: teacher {describe(args.teacher_layers, args.teacher_width)}, student"
        f" {describe(args.student_layers, args.student_width)}; Llama (RMSNorm, RoPE θ 10⁴,"
        f" SwiGLU, tied embeddings), float32; {sizes}",
        f"- data: {args.batch} rows × {args.length} tokens = {args.batch * args.length:,} tokens"
        f" per step, random ids from numpy.random.default_rng({args.seed}), one document per"
        f" row, every token counted; {NUM_BATCHES} batches cycled; built before timing, the"
        " config's data pipeline bypassed",
        f"- seeds: data and student init {args.seed} (config.seed), teacher init"
        f" {args.seed + 1}",
        f"- loss: logit_kd, forward KL(teacher ‖ student) at temperature 1, mean over counted"
        f" tokens; optimizer: AdamW lr {opt['lr']:g} (constant), b1 {opt['b1']}, b2"
        f" {opt['b2']}, eps 1e-8, weight decay {opt['weight_decay']} on every param, global"
        f" gradient-norm clip {opt['grad_clip_norm']} (gkd_docs:local's, schedule made"
        " constant), the same in torch",
        f"- method: each implementation in a fresh process; a first step on batch 0 checked"
        f" against the first implementation's loss (rtol {RTOL:g}) before timing; then"
        f" {args.warmup} warm-up steps (compilation: jax's first step, torch.compile's first"
        f" calls), then {args.steps} timed steps, each run to completion; tokens/s = tokens per"
        " step ÷ the median step time; ratios ÷ torch.* = this row's tokens/s ÷ that row's at"
        " the same V, measured in the same run; peak RSS growth = peak RSS during the timed"
        " steps (VmHWM, reset just before them) − RSS just before them; XLA temporaries ="
        " `Run.compiled_memory(...)['temporaries']` of the compiled step (jaxdistill only)",
        "- setup (not timed): teacher export, student init and export, TFDS corpus prepared: "
        + ", ".join(f"V = {v} {p['seconds']:.0f} s" for v, p in prepared.items()),
        *loss_checks(args, results),
        "", *table(args, results), "",
        "Goals (tokens/s ÷ torch.compile's, same V):", "",
        *goal_notes(args, results),
        *caveats(args, results, load_start), ""]
    report.publish("\n".join(lines), args.report)
    if any("failed" in r for v in results.values() for r in v.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
