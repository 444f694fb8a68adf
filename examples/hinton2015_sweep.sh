#!/usr/bin/env bash
# Why distillation at τ=20 trails the scratch student on the full digits train split: sweep the
# temperature and the student's width, reusing the teachers of
# `jaxdistill reproduce hinton2015 --scale local` (runs/hinton2015_local/seed*/teacher).
# Writes results/hinton2015_investigation.md.
set -euo pipefail
cd "$(dirname "$0")/.."
teachers=runs/hinton2015_local
out=results/hinton2015_investigation.md
sweep=runs/hinton2015_sweep
seeds=(0 1 2)

test_accuracy() {  # the last test-split accuracy a run logged
  python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "\"test\"" in l][-1]["accuracy"])' "$1/metrics.jsonl"
}

row() {  # row NAME OVERRIDES...: trains one run per seed and prints a table row
  local name=$1; shift
  local values=()
  for seed in "${seeds[@]}"; do
    local workdir="$sweep/$name/seed$seed"
    jaxdistill train --config configs/hinton_kd_digits.py:local --workdir "$workdir" --no_progress \
      --config.seed="$seed" --config.teacher.checkpoint="$teachers/seed$seed/teacher" "$@" > /dev/null
    values+=("$(test_accuracy "$workdir")")
  done
  python3 - "$name" "$*" "${values[@]}" <<'PY'
import sys, statistics
name, overrides, *values = sys.argv[1:]
v = [float(x) for x in values]
print(f"| {name} | `{overrides}` | {statistics.mean(v):.4f} ± {statistics.pstdev(v):.4f} | {', '.join(f'{x:.4f}' for x in v)} |")
PY
}

started=$(date +%s)
{
  echo "| row | overrides of configs/hinton_kd_digits.py:local | test accuracy | per seed |"
  echo "|---|---|---|---|"
  row scratch_w32 --config.method=supervised
  for temperature in 1 2 4 20; do
    row "kd_w32_T$temperature" --config.loss.temperature=$temperature
  done
  row scratch_w800 --config.method=supervised "--config.student.hidden=(800,800)"
  row kd_w800_T20 "--config.student.hidden=(800,800)"
} > /tmp/hinton2015_sweep_rows.md
wall=$(( $(date +%s) - started ))
{
  echo "# hinton2015 investigation (local): temperature and student width on the full train split"
  echo
  echo "- command: \`bash examples/hinton2015_sweep.sh\` (after \`jaxdistill reproduce hinton2015 --scale local\`, whose teachers it reuses)"
  echo "- machine: $(nproc) host cores $(uname -m), $(python3 -c 'import jax; print(f"1× cpu, jax {jax.__version__}")')"
  echo "- wall time: ${wall} s; seeds: ${seeds[*]}; metric: digits test accuracy (360 images), mean ± std over seeds"
  echo
  cat /tmp/hinton2015_sweep_rows.md
} > "$out"
cat "$out"
