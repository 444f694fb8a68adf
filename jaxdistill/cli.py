"""The `jaxdistill` command.

    jaxdistill train --config configs/NAME.py[:ARG] --workdir DIR [--config.a.b=VALUE ...]
        [--distributed auto|on|off] [--coordinator_address HOST:PORT --num_processes N
         --process_id I]
    jaxdistill reproduce NAME --scale {smoke,local,paper} [--out DIR] [--seeds N] [--data_dir DIR]
    jaxdistill reproduce --list
    jaxdistill cache-teacher --config CONFIG --out DIR --top_k K [--split train]
        [--config.a.b=VALUE ...]
    jaxdistill export WORKDIR --out DIR [--dtype float32|bfloat16] [--max_shard_gib 2]
    jaxdistill methods
    jaxdistill configs
    jaxdistill --version

A `DistillError` (bad input, a diverged run) ends the command with one line on stderr and exit
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

import jaxdistill
from jaxdistill import cache_teacher, distributed, export, methods, reproduce, train
from jaxdistill import config as config_lib
from jaxdistill.errors import DistillError, Preempted


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxdistill train",
        description="Train or resume a run. Override any config key with --config.KEY=VALUE.")
    parser.add_argument("--config", required=True,
                        help="configs/NAME.py[:smoke|local|paper], or NAME[:ARG] of"
                             " jaxdistill.configs")
    parser.add_argument("--workdir", required=True, help="run directory; resumed when it exists")
    parser.add_argument("--stop_after_steps", type=int, default=None,
                        help="checkpoint and stop after this many steps of this invocation")
    parser.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                        help="join a multi-process run: auto (when the flags below are given or"
                             " SLURM / a TPU slice starts several processes), on (JAX detects"
                             " the cluster), off")
    parser.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--print_config", action="store_true",
                        help="print the config (overrides and the method's settings applied) and"
                             " exit")
    parser.add_argument("--dry_run", action="store_true",
                        help="run every check and print the memory estimate; train nothing")
    parser.add_argument("--preempted_exit_code", type=int, default=0,
                        help="exit status after a SIGTERM stop was saved (0; launchers that"
                             " restart failed workers, like a GKE JobSet, use 75)")
    return parser


def _parse_config(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """The config of `spec` with its method's settings and the overrides applied (by
    ml_collections' own flag parser), after checking that every overridden key exists."""
    config = config_lib.load(spec)  # fails clearly on a bad path or variant
    for override in overrides:
        if not override.startswith("--config."):
            raise DistillError(f"unrecognised argument {override}; see `jaxdistill train --help`")
        if override.startswith("--config.method="):  # its settings are overridable too
            config.method = override.partition("=")[2]
    methods.with_settings(config)
    for override in overrides:
        config_lib.check_key(config, override[len("--config."):].split("=", 1)[0])
    argv = ["jaxdistill", *overrides]
    flag_values = flags.FlagValues()
    config_flag = config_flags.DEFINE_config_dict("config", config, flag_values=flag_values,
                                                  sys_argv=argv)
    try:
        flag_values(argv)
    except flags.Error as e:
        raise DistillError(f"bad config override: {e}") from None
    return config_flag.value


def _train(argv: list[str]) -> None:
    args, overrides = _train_parser().parse_known_args(argv)
    config = _parse_config(args.config, overrides)
    if args.print_config:
        print(config_lib.to_json(config))
        return
    if args.dry_run:
        train.dry_run(config)
        return
    distributed.initialize(args.distributed, args.coordinator_address, args.num_processes,
                           args.process_id)

    try:
        train.train_and_evaluate(config, args.workdir, stop_after_steps=args.stop_after_steps,
                                 progress=not args.no_progress)
    except Preempted:
        jax.distributed.shutdown()
        sys.exit(args.preempted_exit_code)
    # Leave the multi-process runtime while every process is here, rather than in atexit
    # handlers that also tear down checkpoint and writer threads (a no-op for one process).
    jax.distributed.shutdown()


def _reproduce(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="jaxdistill reproduce",
                                     description="Run every row of a paper's table.")
    parser.add_argument("name", nargs="?", help="one of `jaxdistill reproduce --list`")
    parser.add_argument("--list", action="store_true", help="list the reproducible tables")
    parser.add_argument("--scale", choices=config_lib.SCALES, default="local")
    parser.add_argument("--out", default="reproduced",
                        help="writes OUT/NAME_SCALE.{md,json} (the repository's committed tables"
                             " are in results/: name it to replace them)")
    parser.add_argument("--workdir", default=None,
                        help="run directories (default OUT/runs/NAME_SCALE)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds (default per table)")
    parser.add_argument("--data_dir", default="", help="TFDS data directory (default TFDS's own)")
    parser.add_argument("--preempted_exit_code", type=int, default=0,
                        help="exit status after a SIGTERM stopped a run (the same command"
                             " resumes every run where it stopped)")
    args = parser.parse_args(argv)
    if args.list or not args.name:
        for name, experiment in reproduce.EXPERIMENTS.items():
            summary = experiment.description.split("\n\n")[0]  # the table's own paragraph
            print(f"{name:<16} {summary}")
        return
    try:
        reproduce.run(args.name, scale=args.scale, out=args.out, workdir=args.workdir,
                      seeds=args.seeds, data_dir=args.data_dir)
    except Preempted as stopped:
        print(f"jaxdistill: {stopped}; no table was written, and the same command resumes",
              file=sys.stderr)
        sys.exit(args.preempted_exit_code)


def _cache_teacher(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="jaxdistill cache-teacher",
        description="Write the teacher's top-k next-token targets for every row of a split, for"
                    " method cached_kd (config.data.teacher_cache=OUT).")
    parser.add_argument("--config", required=True, help="a student config naming its teacher")
    parser.add_argument("--out", required=True, help="the cache directory")
    parser.add_argument("--top_k", type=int, required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch_size", type=int, default=256)
    args, overrides = parser.parse_known_args(argv)
    config = _parse_config(args.config, overrides)
    recorded = cache_teacher.write(config, args.out, args.top_k, args.split, args.batch_size)
    print(f"{args.out}: top-{args.top_k} teacher targets of {recorded['splits'][args.split]}"
          f" {args.split} rows at temperature {recorded['temperature']}")


def _export(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="jaxdistill export",
        description="Write a run's student as a Hugging Face directory (a causal LM for"
                    " transformers, or a sentence-transformers encoder).")
    parser.add_argument("workdir", help="the run directory (its newest checkpoint is exported)")
    parser.add_argument("--out", required=True, help="the new Hugging Face directory")
    parser.add_argument("--dtype", choices=export.DTYPES, default="float32")
    parser.add_argument("--max_shard_gib", type=float,
                        default=export.DEFAULT_MAX_SHARD_BYTES / 2**30,
                        help="safetensors files are split past this size")
    args = parser.parse_args(argv)
    out = export.export(args.workdir, args.out, dtype=args.dtype,
                        max_shard_bytes=int(args.max_shard_gib * 2**30))
    print(f"{out}: the student of {args.workdir} as a Hugging Face directory ({args.dtype})")


def _methods(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="jaxdistill methods",
                            description="List the registered methods.").parse_args(argv)
    for name in methods.names():
        method = methods.get(name)
        print(f"{name:<14} teacher: {method.teacher:<5} data: {', '.join(method.tasks) or 'any'}")


def _configs(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="jaxdistill configs",
                            description="List the configs that ship with jaxdistill.").parse_args(
                                argv)
    for name in config_lib.available():
        with open(os.path.join(config_lib.configs_dir(), f"{name}.py")) as f:
            summary = (ast.get_docstring(ast.parse(f.read())) or "").split("\n")[0]
        print(f"{name:<22} {summary}")


COMMANDS = {"train": _train, "reproduce": _reproduce, "cache-teacher": _cache_teacher,
            "export": _export, "methods": _methods, "configs": _configs}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--version":
        print(f"jaxdistill {jaxdistill.__version__}")
        return
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(0 if argv else 2)
    try:
        if argv[0] not in COMMANDS:
            raise DistillError(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}"
                               " (`jaxdistill --help` shows their usage)")
        COMMANDS[argv[0]](argv[1:])
    except DistillError as e:
        print(f"jaxdistill: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
