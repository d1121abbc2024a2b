#!/usr/bin/env bash
# Rehearse a multi-host run on one machine: N processes, each with D CPU
# devices, talking through a coordinator on 127.0.0.1.
#   launch/local_multiprocess.sh 2 2 --gin_file=gin/runs/quickstart.gin --gin.MODEL_DIR=/tmp/mh
set -euo pipefail
n=${1:?number of processes}; d=${2:?devices per process}; shift 2
port=${FAMJAX_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$d" \
  FAMJAX_COORDINATOR_ADDRESS="127.0.0.1:$port" FAMJAX_NUM_PROCESSES="$n" \
  FAMJAX_PROCESS_ID="$i" python -m famjax.train "$@" --gin.train.multi_host=True &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
