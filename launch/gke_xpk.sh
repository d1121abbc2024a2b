#!/usr/bin/env bash
# Train on GKE with xpk (TPU or GPU node pools). The image must contain this
# checkout installed with `pip install -e .` (plus jax[tpu] or jax[cuda12]).
#   CLUSTER=c1 IMAGE=gcr.io/p/famjax:tag DEVICE=v5p-64 NUM_SLICES=1 \
#   MODEL_DIR=gs://bucket/run1 launch/gke_xpk.sh --gin_file=gin/runs/pretrain.gin
set -euo pipefail
: "${CLUSTER:?}" "${IMAGE:?}" "${DEVICE:?e.g. v5p-64 or h100-80gb-8}" "${MODEL_DIR:?}"
name=${WORKLOAD:-famjax-$(date +%m%d-%H%M%S)}
args=$(printf '%q ' "$@")
xpk workload create --cluster "$CLUSTER" --workload "$name" \
  --docker-image "$IMAGE" --device-type "$DEVICE" --num-slices "${NUM_SLICES:-1}" \
  --command "famjax train $args --gin.train.multi_host=True --gin.MODEL_DIR=$MODEL_DIR"
