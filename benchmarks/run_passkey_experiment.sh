#!/usr/bin/env bash
# PassKey from scratch, end to end: the curriculum runs behind docs/results.md
# and their scoring. Usage: benchmarks/run_passkey_experiment.sh [RUN_ROOT]
# (default /tmp/famjax_passkey). Each stage resumes if interrupted; rerunning
# a finished stage only re-evaluates it. Wall times on 2 shared CPU cores are
# in docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-/tmp/famjax_passkey}
OUT=${PASSKEY_RESULTS:-benchmarks/results}
mkdir -p "$ROOT"

# Stage 1 (fam, m = 0): 256-byte sequences, 400 steps of 16, whole-sequence loss.
famjax train --gin_file=gin/experiments/passkey_fam.gin \
  --gin.MODEL_DIR="$ROOT/fam_s1"

# Stage 2: 512-byte sequences (random needle depth), 250 steps of 8, from the
# stage-1 weights, once per attention mode.
famjax train --gin_file=gin/experiments/passkey_stage2.gin \
  --gin.MODEL_DIR="$ROOT/fam_s2" --gin.LOAD_PARAMS_FROM="$ROOT/fam_s1/export"
famjax train --gin_file=gin/experiments/passkey_stage2_bswa.gin \
  --gin.MODEL_DIR="$ROOT/bswa_s2" --gin.LOAD_PARAMS_FROM="$ROOT/fam_s1/export"
famjax train --gin_file=gin/experiments/passkey_stage2_full.gin \
  --gin.MODEL_DIR="$ROOT/full_s2" --gin.LOAD_PARAMS_FROM="$ROOT/fam_s1/export"

# Scoring: exact match by length (1x..64x of 512 bytes) x needle depth.
score() { python -m benchmarks.passkey_lengths --out_dir="$OUT" "$@"; }
score --model_dir="$ROOT/fam_s1/export" --name=fam_stage1 --train_len=256
score --model_dir="$ROOT/fam_s2/export" --name=fam --train_len=512
score --model_dir="$ROOT/bswa_s2/export" --name=bswa --train_len=512
score --model_dir="$ROOT/full_s2/export" --name=full --train_len=512 \
  --multiples=1,2,4,8
