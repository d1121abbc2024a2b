#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice. Every worker installs famjax from this
# checkout (copied with scp) and runs the same command; JAX detects the pod.
#   TPU=my-v5p-64 ZONE=us-east5-a MODEL_DIR=gs://bucket/run1 \
#     launch/tpu_pod.sh --gin_file=gin/runs/pretrain.gin [--gin.X=Y ...]
set -euo pipefail
: "${TPU:?name of the TPU VM}" "${ZONE:?its zone}" "${MODEL_DIR:?gs:// path}"
project=${PROJECT:+--project=$PROJECT}
tarball=$(mktemp -d)/famjax.tgz
git archive --format=tar.gz -o "$tarball" HEAD
gcloud compute tpus tpu-vm scp "$tarball" "$TPU":famjax.tgz --worker=all --zone="$ZONE" $project
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --worker=all --zone="$ZONE" $project --command "
  set -e; mkdir -p famjax && tar -xzf famjax.tgz -C famjax && cd famjax &&
  python3 -m venv .venv && . .venv/bin/activate &&
  pip install -q -e . 'jax[tpu]==0.10.2' &&
  famjax train $args --gin.train.multi_host=True --gin.MODEL_DIR='$MODEL_DIR'"
