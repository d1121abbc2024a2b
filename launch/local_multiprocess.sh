#!/usr/bin/env bash
# Rehearse a multi-host run on one machine: N processes, each with D CPU
# devices, talking through a coordinator on 127.0.0.1 (port FAMJAX_PORT,
# random by default).
#   launch/local_multiprocess.sh 2 2 --gin_file=gin/runs/quickstart.gin --gin.MODEL_DIR=/tmp/mh
# --dry-run prints the commands instead; --aot=TOPOLOGY prints the AOT report
# of the run for a TPU topology first (launch/_common.sh).
set -euo pipefail
n=${1:?number of processes}; d=${2:?devices per process}; shift 2
. "$(dirname "$0")/_common.sh"
port=${FAMJAX_PORT:-$((20000 + RANDOM % 20000))}
aot_report
pids=()
for ((i = 0; i < n; i++)); do
  cmd=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$d"
       "FAMJAX_COORDINATOR_ADDRESS=127.0.0.1:$port" "FAMJAX_NUM_PROCESSES=$n"
       "FAMJAX_PROCESS_ID=$i" python -m famjax.train "${ARGS[@]}"
       --gin.train.multi_host=True)
  if ((DRY_RUN)); then
    echo "$(cmdline "${cmd[@]}") &"
  else
    "${cmd[@]}" &
    pids+=($!)
  fi
done
((DRY_RUN)) && echo wait && exit 0
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
