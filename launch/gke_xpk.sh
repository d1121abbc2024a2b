#!/usr/bin/env bash
# Train on GKE with xpk (TPU or GPU node pools). The image must contain this
# checkout installed with `pip install -e .` (plus jax[tpu] or jax[cuda12]);
# JAX finds the other processes from the cluster's environment.
#   CLUSTER=c1 IMAGE=gcr.io/p/famjax:tag DEVICE=v5p-64 NUM_SLICES=1 \
#   MODEL_DIR=gs://bucket/run1 launch/gke_xpk.sh [--dry-run] [--aot=v5p:4x4x4] \
#     --gin_file=gin/runs/pretrain.gin
# --dry-run prints the command instead; --aot=TOPOLOGY first prints the AOT
# report for NUM_SLICES slices of TOPOLOGY here and stops if it does not fit.
set -euo pipefail
. "$(dirname "$0")/_common.sh"
: "${CLUSTER:?}" "${IMAGE:?}" "${DEVICE:?e.g. v5p-64 or h100-80gb-8}" "${MODEL_DIR:?}"
name=${WORKLOAD:-famjax-$(date +%m%d-%H%M%S)}
slices=${NUM_SLICES:-1}
aot_report --num_slices="$slices"
command="famjax train $(cmdline "${ARGS[@]}") --gin.train.multi_host=True"
command+=" --gin.MODEL_DIR=$(quote "$MODEL_DIR")"
run xpk workload create --cluster "$CLUSTER" --workload "$name" \
  --docker-image "$IMAGE" --device-type "$DEVICE" --num-slices "$slices" \
  --command "$command"
