#!/usr/bin/env bash
# Runs `jaxdistill train` on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_vm.sh [--dry-run] COMMAND [OPTIONS] [-- TRAIN_ARGS...]
#
# Commands:
#   create   create the TPU VM (--queued: as a queued resource; --spot: on spot capacity)
#   setup    copy this checkout (git HEAD) to every worker, install it with the TPU jaxlib, and
#            mount --bucket with gcsfuse at /gcs (a workdir every worker shares: orbax writes
#            each process's shards of a checkpoint into one directory)
#   train    run `jaxdistill train --distributed=on TRAIN_ARGS` on all workers (--worker=all);
#            their output streams here and into logs/NAME.log
#   logs     follow worker 0's log of a detached run (train --detach)
#   delete   delete the TPU VM (and its queued resource)
#   up       create, setup and train
#
# Options (or the environment variable in brackets):
#   --name NAME [TPU_NAME]            --zone ZONE [ZONE]            --project ID [PROJECT]
#   --type TYPE [ACCELERATOR_TYPE, default v5litepod-16]
#   --version V [RUNTIME_VERSION, default v2-alpha-tpuv5-lite]
#   --bucket B  [BUCKET: a GCS bucket name, mounted at /gcs on every worker]
#   --queued, --spot, --detach (train in the background: survives a dropped ssh session)
#   --dry-run   print every command instead of running it
#
# Example: distil on a v5e-16 slice, checkpoints in gs://my-bucket/runs/kd:
#   launch/tpu_vm.sh up --name kd --zone us-west4-a --project my-proj --bucket my-bucket -- \
#       --config configs/hinton_kd_digits.py:paper --workdir /gcs/runs/kd
# A preempted or interrupted run resumes with the same `train` command.
set -euo pipefail

dry_run=false
queued=false
spot=false
detach=false
name="${TPU_NAME:-}"
zone="${ZONE:-}"
project="${PROJECT:-}"
accelerator="${ACCELERATOR_TYPE:-v5litepod-16}"
version="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
bucket="${BUCKET:-}"
command=""
train_args=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --dry-run) dry_run=true ;;
    --queued) queued=true ;;
    --spot) spot=true ;;
    --detach) detach=true ;;
    --name) name="$2"; shift ;;
    --zone) zone="$2"; shift ;;
    --project) project="$2"; shift ;;
    --type) accelerator="$2"; shift ;;
    --version) version="$2"; shift ;;
    --bucket) bucket="$2"; shift ;;
    -h|--help) usage ;;
    --) shift; train_args=("$@"); break ;;
    create|setup|train|logs|delete|up) command="$1" ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

[[ -n "$command" ]] || die "give a command: create, setup, train, logs, delete or up"
[[ -n "$name" ]] || die "--name (or TPU_NAME) is required"
[[ -n "$zone" ]] || die "--zone (or ZONE) is required"
[[ -n "$project" ]] || die "--project (or PROJECT) is required"

# Single-quotes an argument when the shell would otherwise split or expand it.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# Prints a command (quoted so that it can be pasted), then runs it unless --dry-run.
run() {
  local words=() arg
  for arg in "$@"; do words+=("$(quote "$arg")"); done
  echo "+ ${words[*]}"
  if ! $dry_run; then "$@"; fi
}

where=(--zone="$zone" --project="$project")
ssh_all() { run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"; }

create() {
  local capacity=()
  $spot && capacity=(--spot)
  if $queued; then
    run gcloud compute tpus queued-resources create "$name" "${where[@]}" --node-id="$name" \
      --accelerator-type="$accelerator" --runtime-version="$version" "${capacity[@]}"
    echo "queued; the slice exists once this shows ACTIVE:"
    echo "  gcloud compute tpus queued-resources describe $name --zone=$zone --project=$project"
  else
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
      --accelerator-type="$accelerator" --version="$version" "${capacity[@]}"
  fi
}

setup() {
  local archive="${TMPDIR:-/tmp}/jaxdistill-$name.tar.gz"
  run git -C "$(dirname "$0")/.." archive --format=tar.gz --output="$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "$name:~/jaxdistill.tar.gz" "${where[@]}" \
    --worker=all
  ssh_all "rm -rf ~/jaxdistill && mkdir ~/jaxdistill && tar -xzf ~/jaxdistill.tar.gz \
-C ~/jaxdistill && cd ~/jaxdistill && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
  if [[ -n "$bucket" ]]; then
    ssh_all "command -v gcsfuse >/dev/null || { \
echo 'deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main' \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list \
&& curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - \
&& sudo apt-get update -q && sudo apt-get install -yq gcsfuse; } \
&& sudo mkdir -p /gcs && sudo chown \$USER /gcs \
&& { mountpoint -q /gcs || gcsfuse --implicit-dirs $bucket /gcs; }"
  fi
}

train() {
  ((${#train_args[@]})) || die "train needs its arguments after --, e.g. -- --config configs/X.py:paper --workdir /gcs/runs/X"
  local train_command
  train_command="cd ~/jaxdistill && .venv/bin/jaxdistill train --distributed=on --no_progress"
  local arg
  for arg in "${train_args[@]}"; do train_command+=" $(quote "$arg")"; done
  if $detach; then
    ssh_all "nohup bash -c $(quote "$train_command") > ~/jaxdistill.log 2>&1 &"
  elif $dry_run; then
    ssh_all "$train_command"
  else
    mkdir -p logs
    ssh_all "$train_command" 2>&1 | tee "logs/$name.log"
  fi
}

logs() {
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=0 \
    --command="tail -f ~/jaxdistill.log"
}

delete() {
  if $queued; then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

case "$command" in
  up) create; setup; train ;;
  *) "$command" ;;
esac
