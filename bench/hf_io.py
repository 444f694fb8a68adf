"""Hugging Face import and export: jaxdistill vs transformers on a ~1B-parameter Llama checkpoint.

  python bench/hf_io.py [--layers 16] [--shard_mib 1024] [--seed 0] [--out WORKDIR]
                        [--report results/perf.md]

The bench first writes a Llama-3.2-1B-shaped checkpoint of random bf16 weights (config.json with
its llama3 RoPE scaling and tied embeddings, HF tensor names, safetensors shards of at most
--shard_mib MiB with model.safetensors.index.json, written shard by shard) and a small byte-level
BPE tokenizer (saved by `transformers.PreTrainedTokenizerFast.save_pretrained`). Then each phase
runs in its own fresh Python process, so that its peak RSS is its own:

  jaxdistill import       `models.from_pretrained(dir)`: numpy float32 params
  transformers import     `AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)`
  jaxdistill export       import as above (not timed), then `export.write(out, model_config,
                          params, text_tokenizers.load(dir, ...), dtype="bfloat16")`
  transformers export     import as above (not timed), then `model.to(torch.bfloat16)` and
                          `model.save_pretrained(out)`: float32 in memory to bf16 files, as the
                          jaxdistill write does (its timing includes the cast, so this one does)

Each child times the operation alone (time.perf_counter around it) and, separately, its library
imports; it reports the whole process's peak RSS (so an export's includes the import before it)
and the peak of the operation alone: VmHWM of /proc/self/status, reset through
/proc/self/clear_refs just before the operation, and read both then and at the end.
`getrusage(RUSAGE_SELF).ru_maxrss`, read the same way, is listed beside it: Linux keeps the
launching process's peak in it across execve, so it can only be the larger of the two. A thread
samples RssAnon and RssFile every 20 ms during the operation, to tell arrays from the pages of
memory-mapped files (which count in RSS but are the page cache's, not a copy). Both
exports are checked against the input files: the same tensor names, shapes and dtypes, and the
same bytes (bf16 -> float32 -> bf16 is exact). Ratios are against transformers in the same
direction, measured in the same run. The files are read from a warm page cache (just written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from proc_memory import reset_peak, vm

GiB = 2**30
PHASES = ("jaxdistill_import", "transformers_import", "jaxdistill_export", "transformers_export")
LABELS = {"jaxdistill_import": "jaxdistill import (float32)",
          "transformers_import": "transformers import (float32)",
          "jaxdistill_export": "jaxdistill export (float32 → bf16 files)",
          "transformers_export": "transformers export (float32 → bf16 files)"}
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"

# Llama-3.2-1B's shape; `--layers` changes num_hidden_layers only.
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB = 2048, 32, 8, 64, 8192, 128256
ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
ROPE_THETA = 500000.0


# ------------------------------------------------------------------------ the checkpoint

def hf_config(layers: int, bos_id: int, eos_id: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": bos_id,
        "eos_token_id": eos_id, "head_dim": HEAD_DIM, "hidden_act": "silu",
        "hidden_size": HIDDEN, "initializer_range": 0.02, "intermediate_size": MLP,
        "max_position_embeddings": 131072, "mlp_bias": False, "num_attention_heads": HEADS,
        "num_hidden_layers": layers, "num_key_value_heads": KV_HEADS, "pretraining_tp": 1,
        "rms_norm_eps": 1e-5, "rope_theta": ROPE_THETA, "rope_scaling": dict(ROPE),
        "rope_parameters": {**ROPE, "rope_theta": ROPE_THETA}, "tie_word_embeddings": True,
        "dtype": "bfloat16", "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": VOCAB,
    }


def tensor_shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """HF names and shapes ([out, in] for projections), in the order the checkpoint stores them."""
    shapes = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (HIDDEN,)),
                   (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
                   (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
                   (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
                   (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
                   (p + "post_attention_layernorm.weight", (HIDDEN,)),
                   (p + "mlp.gate_proj.weight", (MLP, HIDDEN)),
                   (p + "mlp.up_proj.weight", (MLP, HIDDEN)),
                   (p + "mlp.down_proj.weight", (HIDDEN, MLP))]
    return shapes + [("model.norm.weight", (HIDDEN,))]


def _random_bf16(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    import ml_dtypes

    values = rng.standard_normal(shape, dtype=np.float32)
    values *= 0.02
    if name.endswith("norm.weight"):
        values += 1.0
    return values.astype(ml_dtypes.bfloat16)


def write_checkpoint(directory: str, layers: int, shard_bytes: int, seed: int) -> None:
    """config.json, the tokenizer and random bf16 shards, one shard in memory at a time."""
    from safetensors.numpy import save_file

    bos_id, eos_id = write_tokenizer(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config(layers, bos_id, eos_id), f, indent=2)
    shards, current, size = [], [], 0
    for name, shape in tensor_shapes(layers):
        nbytes = 2 * int(np.prod(shape))
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: _random_bf16(rng, name, shape) for name, shape in shard}
        save_file(tensors, os.path.join(directory, file), metadata={"format": "pt"})
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, file))
        del tensors
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_tokenizer(directory: str) -> tuple[int, int]:
    """A byte-level BPE without merges (258 tokens), BOS prepended as Llama 3's does; returns
    the bos and eos ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer.train_from_iterator([], trainers.BpeTrainer(
        vocab_size=2 + len(alphabet), special_tokens=[BOS, EOS], initial_alphabet=alphabet,
        show_progress=False))
    bos_id, eos_id = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS,
                            eos_token=EOS).save_pretrained(directory)
    return bos_id, eos_id


# ------------------------------------------------------------------- checking the exports

def _headers(directory: str) -> dict[str, tuple[str, str, tuple[int, ...], int, int]]:
    """name -> (file, dtype, shape, start, end) for every tensor of a HF directory's safetensors
    (start and end: absolute byte offsets in the file)."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    found = {}
    for file in files:
        path = os.path.join(directory, file)
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_size))
        header.pop("__metadata__", None)
        for name, e in header.items():
            begin, end = e["data_offsets"]
            found[name] = (path, e["dtype"], tuple(e["shape"]), 8 + header_size + begin,
                           8 + header_size + end)
    return found


def check_export(source: str, exported: str) -> str:
    """'ok: …' when `exported` holds the same tensors as `source` (names, shapes, dtypes and
    bytes), else what differs."""
    ours, theirs = _headers(source), _headers(exported)
    if set(ours) != set(theirs):
        return (f"different tensors: missing {sorted(set(ours) - set(theirs))[:3]},"
                f" extra {sorted(set(theirs) - set(ours))[:3]}")
    for name, (file, dtype, shape, begin, end) in ours.items():
        file2, dtype2, shape2, begin2, end2 = theirs[name]
        if (dtype, shape) != (dtype2, shape2):
            return f"{name}: {dtype} {shape} in the input, {dtype2} {shape2} exported"
        count = (end - begin) // 2
        a = np.fromfile(file, np.uint16, count=count, offset=begin)
        b = np.fromfile(file2, np.uint16, count=count, offset=begin2)
        if not np.array_equal(a, b):
            return f"{name}: {int(np.sum(a != b)):,} of {count:,} values differ"
    files = len({v[0] for v in theirs.values()})
    return f"ok: the same {len(ours)} tensors (names, shapes, dtypes, bytes), in {files} file(s)"


# ------------------------------------------------------------------------- the children


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@contextlib.contextmanager
def measured(result: dict, interval: float = 0.02):
    """Times the block and records its peak RSS (VmHWM, reset at the start; the peak so far is
    kept first) and, sampled every `interval` s by a thread, its peak anonymous and file-backed
    RSS (RssAnon, RssFile): file-backed pages are those of memory-mapped files."""
    result["peak_before"], result["ru_maxrss_before"] = vm("VmHWM"), _maxrss()
    result["reset_peak"] = reset_peak()
    result["rss_before"] = vm("VmRSS")
    peaks, done = {"RssAnon": 0, "RssFile": 0}, threading.Event()

    def sample():
        while True:
            for field in peaks:
                peaks[field] = max(peaks[field], vm(field))
            if done.wait(interval):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    yield
    result["seconds"] = time.perf_counter() - t0
    done.set()
    sampler.join()
    result["peak_operation"] = vm("VmHWM") if result["reset_peak"] else None
    result["peak_anon"], result["peak_file"] = peaks["RssAnon"], peaks["RssFile"]


def child(phase: str, checkpoint: str, export_dir: str) -> None:
    """Runs one phase and prints its measurements as one JSON line."""
    start = time.perf_counter()
    if phase.startswith("jaxdistill"):
        import jax

        from jaxdistill import export, models
        from jaxdistill.data import text_tokenizers
    else:
        import torch
        import transformers
    result = {"import_s": time.perf_counter() - start, "rss_after_imports": vm("VmRSS")}

    def load():
        if phase.startswith("jaxdistill"):
            pretrained = models.from_pretrained(checkpoint)
            jax.block_until_ready(pretrained.params)
            leaves = jax.tree.leaves(pretrained.params)
            result.update(params=sum(x.size for x in leaves),
                          dtypes=sorted({str(x.dtype) for x in leaves}))
            return pretrained
        model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint,
                                                                  dtype=torch.float32)
        result.update(params=sum(p.numel() for p in model.parameters()),
                      dtypes=sorted({str(p.dtype) for p in model.parameters()}),
                      torch_threads=torch.get_num_threads())
        return model

    if phase.endswith("import"):
        with measured(result):
            load()
    else:
        t0 = time.perf_counter()
        loaded = load()
        result["load_s"] = time.perf_counter() - t0
        if phase == "jaxdistill_export":
            # A directory name loads its tokenizer.json with transformers (no training, so
            # no dataset directory or texts are needed).
            tokenizer = text_tokenizers.load(checkpoint, None, tuple)
            with measured(result):
                export.write(export_dir, loaded.model_config, loaded.params, tokenizer,
                             dtype="bfloat16")
        else:
            with measured(result):
                t0 = time.perf_counter()
                loaded.to(torch.bfloat16)
                result["cast_s"] = time.perf_counter() - t0
                loaded.save_pretrained(export_dir)
    # clear_refs resets the peak: the process's is the larger of the two readings. VmHWM is
    # this process's own; ru_maxrss also keeps the launching process's peak across execve.
    result["peak_process"] = max(vm("VmHWM"), result["peak_before"])
    result["ru_maxrss"] = max(_maxrss(), result["ru_maxrss_before"])
    print(json.dumps(result), flush=True)


def run_phase(phase: str, checkpoint: str, export_dir: str) -> dict:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1",
           "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, os.path.abspath(__file__), "--_phase", phase,
               "--_checkpoint", checkpoint, "--_export_dir", export_dir]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.stderr.write(done.stderr)
        return {"failed": (done.stderr.strip().splitlines() or ["(no stderr)"])[-1],
                "process_s": wall}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    print(f"{phase}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


# ----------------------------------------------------------------------------- the report

def _gib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / GiB:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}"


def table(results: dict) -> list[str]:
    lines = ["| phase | operation s | library imports s | process s | RSS before operation"
             " GiB | peak RSS of the operation GiB | of which anonymous / file-backed GiB"
             " (sampled peaks) | peak RSS of the process GiB | time ÷ transformers | process"
             " peak ÷ transformers | operation peak ÷ transformers |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for phase in PHASES:
        r = results[phase]
        if "failed" in r:
            lines.append(f"| {LABELS[phase]} | failed: `{r['failed'][:200]}` |"
                         " | | | | | | | | |")
            continue
        base = results["transformers_" + phase.split("_")[1]]
        ok = "failed" not in base
        lines.append(
            f"| {LABELS[phase]} | {r['seconds']:.1f} | {r['import_s']:.1f} | {r['process_s']:.1f}"
            f" | {_gib(r['rss_before'])} | {_gib(r['peak_operation'])}"
            f" | {_gib(r['peak_anon'])} / {_gib(r['peak_file'])} | {_gib(r['peak_process'])}"
            f" | {_ratio(r['seconds'], ok and base['seconds'])}"
            f" | {_ratio(r['peak_process'], ok and base['peak_process'])}"
            f" | {_ratio(r['peak_operation'], ok and base['peak_operation'])} |")
    return lines


def _host() -> str:
    """CPU model, cores and RAM, from /proc."""
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), platform.machine())
    with open("/proc/meminfo") as f:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return (f"- host: {model}, {os.cpu_count()} cores, {meminfo['MemTotal'] / GiB:.1f} GiB RAM"
            f" ({meminfo['MemAvailable'] / GiB:.1f} GiB available at the end),"
            f" {meminfo['SwapTotal'] / GiB:.1f} GiB swap")


def _versions() -> str:
    from importlib.metadata import version

    names = ("jax", "flax", "transformers", "torch", "safetensors", "numpy")
    return (f"- versions: python {platform.python_version()}, "
            + ", ".join(f"{n} {version(n)}" for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16, help="num_hidden_layers (Llama-3.2-1B:"
                        " 16); fewer for a quick run")
    parser.add_argument("--shard_mib", type=int, default=1024,
                        help="largest safetensors shard of the written checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--out", default=None, help="work directory, empty or absent; it keeps"
                        " the checkpoint (default: a temporary one, deleted at the end)")
    parser.add_argument("--report", default=None, help="append the report to this file")
    parser.add_argument("--_phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--_checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--_export_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._phase:
        child(args._phase, args._checkpoint, args._export_dir)
        return

    import report

    section = report.Section("Hugging Face import and export (bench/hf_io.py)")
    if args.out and os.path.exists(args.out) and os.listdir(args.out):
        parser.error(f"--out {args.out} is not empty")
    workdir = args.out or tempfile.mkdtemp(prefix="hf_io.")
    checkpoint = os.path.join(workdir, "checkpoint")
    os.makedirs(checkpoint, exist_ok=True)
    try:
        t0 = time.perf_counter()
        write_checkpoint(checkpoint, args.layers, args.shard_mib * 2**20, args.seed)
        write_s = time.perf_counter() - t0
        params = sum(int(np.prod(s)) for _, s in tensor_shapes(args.layers))
        size = sum(os.path.getsize(os.path.join(checkpoint, f)) for f in os.listdir(checkpoint)
                   if f.endswith(".safetensors"))
        shards = sum(f.endswith(".safetensors") for f in os.listdir(checkpoint))
        print(f"checkpoint: {params:,} params, {size / GiB:.2f} GiB in {shards} shards,"
              f" written in {write_s:.0f} s", file=sys.stderr, flush=True)
        results, checks = {}, {}
        for phase in PHASES:
            export_dir = os.path.join(workdir, phase)
            results[phase] = run_phase(phase, checkpoint, export_dir)
            if phase.endswith("export") and "failed" not in results[phase]:
                checks[phase] = check_export(checkpoint, export_dir)
                shutil.rmtree(export_dir, ignore_errors=True)
    finally:
        if not args.out:  # a given work directory keeps the checkpoint (the exports are gone)
            shutil.rmtree(workdir, ignore_errors=True)

    fp32 = 4 * params
    loaded = "; ".join(f"{p}: {r['params']:,} {', '.join(r['dtypes'])}"
                       for p, r in results.items() if "failed" not in r)
    hf_export = results["transformers_export"]
    lines = [
        *section.lines(" (other jobs on the machine share its 2 cores and its page cache)"),
        _host(), _versions(),
        f"- checkpoint: Llama-3.2-1B shape with {args.layers} layers (hidden 2048, 32 heads, 8 kv"
        f" heads, head_dim 64, mlp 8192, vocab 128,256, tied embeddings, llama3 RoPE), random"
        f" bf16 weights N(0, 0.02²) (norms 1 + N(0, 0.02²)), seed {args.seed}; {params:,}"
        f" params, {size / GiB:.2f} GiB of safetensors in {shards} shards of at most"
        f" {args.shard_mib} MiB (written by the bench in {write_s:.0f} s); a 258-token"
        f" byte-level BPE tokenizer. As float32 the params take {fp32 / GiB:.2f} GiB.",
        "- method: each phase in a fresh process; operation s = time.perf_counter() around the"
        " operation alone; library imports s = the child's imports of jax + jaxdistill or torch"
        " + transformers; process s = the child's whole wall time, interpreter start included;"
        " peak RSS of the process = VmHWM of /proc/self/status, the larger of its readings"
        " before the reset below and at the child's end (for an export it includes the float32"
        " import before the write); peak RSS of the operation = VmHWM after resetting it"
        " (/proc/self/clear_refs) just before the operation; anonymous / file-backed = the"
        " peaks of RssAnon and RssFile, sampled every 20 ms during the operation (file-backed:"
        " pages of memory-mapped files, here the safetensors; anonymous: the arrays). Both"
        " sides end float32 in memory (import) or start float32 in memory and write bf16 files"
        " (export); the transformers export's time includes `model.to(torch.bfloat16)`"
        f" ({hf_export.get('cast_s', float('nan')):.1f} s of it), as jaxdistill's write includes"
        " its cast. Files read from a warm page cache; file-backed pages of memory-mapped"
        " safetensors count in RSS.",
        f"- params in memory after each import (count, dtypes): {loaded}",
        "- getrusage(RUSAGE_SELF).ru_maxrss of each child, GiB (it also holds the launching"
        f" script's peak, {_gib(vm('VmHWM'))} GiB, inherited across execve): " + ", ".join(
            f"{p} {_gib(r['ru_maxrss'])}" for p, r in results.items() if "failed" not in r),
        *(f"- check of the {p.split('_')[0]} export against the input: {c}"
          for p, c in checks.items()),
        "", *table(results), ""]
    report.publish("\n".join(lines), args.report)


if __name__ == "__main__":
    main()
