#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice. Every worker installs famjax from this
# checkout (copied with scp) and runs the same command; JAX detects the pod
# (no coordinator variables needed).
#   TPU=my-v5p-64 ZONE=us-east5-a MODEL_DIR=gs://bucket/run1 \
#     launch/tpu_pod.sh [--dry-run] [--aot=v5p:4x4x4] --gin_file=gin/runs/pretrain.gin [--gin.X=Y ...]
# --dry-run prints the commands instead; --aot=TOPOLOGY first prints the AOT
# report of the run for the slice's topology here and stops if it does not
# fit (launch/_common.sh).
set -euo pipefail
. "$(dirname "$0")/_common.sh"
: "${TPU:?name of the TPU VM}" "${ZONE:?its zone}" "${MODEL_DIR:?gs:// path}"
project=()
[[ -n ${PROJECT:-} ]] && project=(--project="$PROJECT")
tarball=${TMPDIR:-/tmp}/famjax-$TPU.tgz
aot_report
run git archive --format=tar.gz -o "$tarball" HEAD
run gcloud compute tpus tpu-vm scp "$tarball" "$TPU":famjax.tgz --worker=all \
  --zone="$ZONE" "${project[@]}"
args=$(cmdline "${ARGS[@]}")
remote="set -e; mkdir -p famjax && tar -xzf famjax.tgz -C famjax && cd famjax"
remote+=" && python3 -m venv .venv && . .venv/bin/activate"
remote+=" && pip install -q -e . 'jax[tpu]==0.10.2'"
remote+=" && famjax train $args --gin.train.multi_host=True --gin.MODEL_DIR=$(quote "$MODEL_DIR")"
run gcloud compute tpus tpu-vm ssh "$TPU" --worker=all --zone="$ZONE" \
  "${project[@]}" --command "$remote"
