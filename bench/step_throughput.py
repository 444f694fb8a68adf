"""KD train-step throughput on CPU: jaxdistill's jitted step vs. an equivalent PyTorch eager step.

  python bench/step_throughput.py [--steps 50] [--batch_size 128] [--repeats 5] [--warmup 5]
                                  [--torch_threads N] [--out results/perf.md]

For an MLP and a small CNN student, each distilled from a teacher of its kind on the bundled
digits (8×8×1 images, 10 classes, config `hinton_kd_digits:local`), this times
  jax:   `run.train_step` of `jaxdistill.run.build` (one jitted step: teacher forward, Hinton
         KD loss, backward, AdamW update; it also computes its logged metrics), 1 CPU device;
  torch: the same architectures and loss in PyTorch eager mode: student in train mode,
         teacher in eval mode under `torch.no_grad()`, loss
         α·τ²·KL(softmax(t/τ)‖softmax(s/τ)) + (1−α)·CE with τ, α from the config, then
         `zero_grad(); backward(); AdamW.step()` at the config's lr.
Both start from the same weights (the torch models are loaded from the jax ones), and the script
checks that their first-step losses agree before timing anything. Batches are fetched and placed
(jax: sharded onto the device; torch: tensors) before timing, so only the step is timed.

Prints a markdown table (examples/s, median of the repeats; ratio = jax ÷ torch) under a header
with the machine, the command and the method. `--out FILE` also appends it, with the date and the
script's wall time, to FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxdistill import config as config_lib
from jaxdistill import data, train
from jaxdistill.run import Run, build

NUM_BATCHES = 8  # distinct pre-fetched batches, cycled through by both frameworks


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    teacher: dict
    student: dict


# Teachers regularised as in Hinton et al. (dropout; inactive in their eval-mode forward).
# Students are unregularised, as the paper's are, which also makes the first step deterministic
# so that the jax and torch losses must agree to float precision.
CASES = (
    Case("mlp",
         teacher={"model": "mlp", "hidden": (1200, 1200), "dropout": 0.5, "input_dropout": 0.2},
         student={"model": "mlp", "hidden": (800, 800), "dropout": 0.0, "input_dropout": 0.0}),
    Case("cnn",
         teacher={"model": "cnn", "channels": (64, 128), "dense": 256, "dropout": 0.5},
         student={"model": "cnn", "channels": (32, 64), "dense": 128, "dropout": 0.0}),
)


# ----------------------------------------------------------------------------- jax side

def train_teacher(model: dict, data_config, workdir: str) -> str:
    """A 2-step teacher run: throughput does not depend on how well the teacher is trained."""
    cfg = config_lib.load("hinton_teacher_digits:smoke")
    cfg.student = ml_collections.ConfigDict({**model, "num_classes": 10})
    cfg.data = data_config
    cfg.total_steps = 2
    cfg.eval_splits = ()  # no eval step to compile: only the checkpoint is needed
    cfg.checkpoint.async_save = False
    with contextlib.redirect_stdout(io.StringIO()):  # keep its run summary out of the report
        train.train_and_evaluate(cfg, workdir, progress=False, devices=jax.devices()[:1])
    return workdir


def kd_config(case: Case, data_config, teacher_dir: str, batch_size: int):
    config = config_lib.load("hinton_kd_digits:local")
    config.data = data_config
    config.batch_size = batch_size
    config.student = ml_collections.ConfigDict({**case.student, "num_classes": 10})
    config.teacher.checkpoint = teacher_dir
    return config


class JaxStepper:
    """Runs `run.train_step` over pre-sharded batches; `state` is donated, so keep the new one."""

    def __init__(self, run: Run, batches: list[dict]):
        self.run, self.state, self.i = run, run.init(), 0
        self.batches = [run.shard_batch(b) for b in batches]

    def __call__(self, steps: int) -> float:
        """Runs `steps` steps; returns the first step's loss."""
        first_loss = None
        for _ in range(steps):
            batch = self.batches[self.i % NUM_BATCHES]
            self.state, metrics = self.run.train_step(self.state, batch)
            self.i += 1
            first_loss = metrics["loss"] if first_loss is None else first_loss
        jax.block_until_ready(self.state)  # dispatch is async: wait for the last step to finish
        return float(first_loss)


# --------------------------------------------------------------------------- torch side

def _dropout(rate: float) -> list[nn.Module]:
    # Flax skips dropout entirely at rate 0; do the same rather than time a no-op.
    return [nn.Dropout(rate)] if rate else []


def torch_model(spec: dict, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The torch twin of `jaxdistill.models.build(spec)` (same layers, sizes and order)."""
    height, width, channels = image_shape
    if spec["model"] == "mlp":
        layers = [nn.Flatten(), *_dropout(spec.get("input_dropout", 0.0))]
        fan_in = height * width * channels
        for hidden in spec["hidden"]:
            layers += [nn.Linear(fan_in, hidden), nn.ReLU(), *_dropout(spec["dropout"])]
            fan_in = hidden
        return nn.Sequential(*layers, nn.Linear(fan_in, num_classes))
    layers, fan_in = [], channels
    for out in spec["channels"]:
        # 3×3 SAME conv, ReLU, 2×2/2 SAME max-pool (ceil_mode covers odd sizes as SAME does).
        layers += [nn.Conv2d(fan_in, out, 3, padding=1), nn.ReLU(),
                   nn.MaxPool2d(2, 2, ceil_mode=True)]
        fan_in = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(fan_in, spec["dense"]), nn.ReLU(), *_dropout(spec["dropout"]),
                         nn.Linear(spec["dense"], num_classes))


def load_flax_params(module: nn.Module, params) -> nn.Module:
    """Copies flax params (Conv_i, Dense_i, head) into the module's Conv2d/Linear layers."""
    tree = params["params"]
    index = lambda name: int(name.rsplit("_", 1)[1])  # noqa: E731
    names = [*sorted((n for n in tree if n.startswith("Conv_")), key=index),
             *sorted((n for n in tree if n.startswith("Dense_")), key=index), "head"]
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        for layer, name in zip(layers, names, strict=True):
            kernel = np.asarray(tree[name]["kernel"])
            # flax Dense (in, out) -> torch (out, in); flax Conv HWIO -> torch OIHW
            kernel = kernel.T if kernel.ndim == 2 else kernel.transpose(3, 2, 0, 1)
            layer.weight.copy_(torch.tensor(kernel))
            layer.bias.copy_(torch.tensor(np.asarray(tree[name]["bias"])))
    return module


class TorchStepper:
    """The eager KD step: teacher forward (no grad), student forward, loss, backward, AdamW."""

    def __init__(self, config, case: Case, student_params, teacher_params, batches: list[dict]):
        shape = batches[0]["image"].shape[1:]
        self.temperature, self.alpha, self.i = config.loss.temperature, config.loss.alpha, 0
        self.student = load_flax_params(torch_model(case.student, shape, 10), student_params)
        self.teacher = load_flax_params(torch_model(case.teacher, shape, 10), teacher_params)
        self.student.train()
        self.teacher.eval()
        opt = config.optimizer
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=opt.lr,
                                           betas=(opt.b1, opt.b2), weight_decay=opt.weight_decay)
        # The MLP flattens NHWC images exactly as flax does; the CNN wants NCHW, torch's layout.
        nchw = case.student["model"] == "cnn"
        layout = (lambda x: x.permute(0, 3, 1, 2)) if nchw else (lambda x: x)
        self.batches = [(layout(torch.from_numpy(b["image"])).contiguous(),
                         torch.from_numpy(b["label"]).long()) for b in batches]

    def loss(self, images, labels):
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = self.student(images)
        tau = self.temperature
        # kl_div(log q, log p, log_target) = Σ p (log p − log q), averaged over the batch.
        soft = tau**2 * F.kl_div(F.log_softmax(logits / tau, -1),
                                 F.log_softmax(teacher_logits / tau, -1),
                                 reduction="batchmean", log_target=True)
        return self.alpha * soft + (1 - self.alpha) * F.cross_entropy(logits, labels)

    def __call__(self, steps: int) -> float:
        """Runs `steps` steps; returns the first step's loss (eager: no sync needed)."""
        first_loss = None
        for _ in range(steps):
            self.optimizer.zero_grad()
            loss = self.loss(*self.batches[self.i % NUM_BATCHES])
            loss.backward()
            self.optimizer.step()
            self.i += 1
            first_loss = loss.item() if first_loss is None else first_loss
        return first_loss


# ----------------------------------------------------------------------------- harness

def describe(spec: dict) -> str:
    if spec["model"] == "mlp":
        return "MLP 64-" + "-".join(map(str, spec["hidden"])) + "-10"
    return f"CNN conv{'-'.join(map(str, spec['channels']))} fc{spec['dense']}-10"


def benchmark(case: Case, args, data_config, tmp: str) -> dict:
    teacher_dir = train_teacher(case.teacher, data_config, os.path.join(tmp, case.name))
    config = kd_config(case, data_config, teacher_dir, args.batch_size)
    run = build(config, devices=jax.devices()[:1])
    iterator = data.train_iterator(config.data, config.batch_size, config.seed)
    batches = [next(iterator) for _ in range(NUM_BATCHES)]
    jax_step = JaxStepper(run, batches)
    # Copy the weights before the first jax step donates (and so may overwrite) their buffers.
    torch_step = TorchStepper(config, case, jax.device_get(jax_step.state.params),
                              jax.device_get(run.teacher_params), batches)
    steppers = {"jax": jax_step, "torch": torch_step}

    # The first step of each (jax's includes compilation) runs from identical weights on the
    # same batch, so the losses must agree: a cheap proof that both sides do the same work.
    losses = {name: step(1) for name, step in steppers.items()}
    if not np.isclose(losses["jax"], losses["torch"], rtol=1e-4, atol=1e-5):
        raise SystemExit(f"{case.name}: first-step losses differ: {losses}")
    for step in steppers.values():
        step(args.warmup)

    # Alternate the frameworks repeat by repeat, so a slow phase of the (shared) machine hits both.
    rates = {name: [] for name in steppers}
    for _ in range(args.repeats):
        for name, step in steppers.items():
            start = time.perf_counter()
            step(args.steps)
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return {"case": case, "losses": losses, **medians}


def cpu_name() -> str:
    name = platform.processor()  # often empty on Linux: fall back to /proc/cpuinfo
    if not name and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), "")
    return f"{name or 'unknown CPU'} ({platform.machine()})"


def header(args, results: list[dict]) -> str:
    checks = "; ".join(f"{r['case'].name} {r['losses']['jax']:.5f} / {r['losses']['torch']:.5f}"
                       for r in results)
    return "\n".join([
        f"- machine: {os.cpu_count()} CPUs, {cpu_name()}, {platform.platform()}",
        f"- versions: jax {jax.__version__}, torch {torch.__version__},"
        f" python {platform.python_version()}",
        f"- threads: torch.set_num_threads({torch.get_num_threads()}); jax on 1 CPU device"
        f" with XLA's default intra-op thread pool",
        f"- load average (1 min) at start / end: {args.load_start:.1f} / {os.getloadavg()[0]:.1f}"
        " (the end value counts this run's own threads; other jobs on the machine skew both"
        " columns, torch's multi-threaded eager ops by far the most)",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        f"- method: per framework, 1 checked step (jax's includes compilation) and {args.warmup}"
        f" warm-up steps excluded; then {args.repeats} repeats of {args.steps} steps, alternating"
        f" jax and torch; examples/s = steps × batch / repeat wall time (jax: to"
        f" `jax.block_until_ready`); median of the {args.repeats} repeats. {NUM_BATCHES} fixed"
        f" batches of {args.batch_size}, prepared before timing; torch eager, fp32; jax fp32.",
        f"- check: first-step loss from the same weights and batch, jax / torch: {checks}",
    ])


def table(results: list[dict], batch_size: int) -> str:
    rows = ["| student ← teacher | batch | jax examples/s | torch examples/s | jax ÷ torch |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        case = r["case"]
        rows.append(f"| {describe(case.student)} ← {describe(case.teacher)} | {batch_size}"
                    f" | {r['jax']:,.0f} | {r['torch']:,.0f} | {r['jax'] / r['torch']:.2f} |")
    return "\n".join(rows)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed repeats; their median is reported")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--torch_threads", type=int, default=os.cpu_count(),
                        help="torch.set_num_threads (default: all CPUs, as XLA uses)")
    parser.add_argument("--out", help="also append the report to this markdown file")
    return parser.parse_args()


def main():
    args = parse_args()
    started, args.load_start = time.perf_counter(), os.getloadavg()[0]
    jax.config.update("jax_platforms", "cpu")  # a CPU benchmark: never pick up an accelerator
    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        data_config = config_lib.load("hinton_kd_digits:local").data
        data_config.data_dir = os.path.join(tmp, "tfds")  # digits are built here, offline
        results = [benchmark(case, args, data_config, tmp) for case in CASES]
    report = f"{header(args, results)}\n\n{table(results, args.batch_size)}\n"
    print(report)
    if args.out:
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "a") as f:
            f.write(f"\n## KD train-step throughput, CPU ({date})\n\n"
                    f"- wall time of the whole script: {time.perf_counter() - started:.0f} s\n"
                    f"{report}")


if __name__ == "__main__":
    main()
