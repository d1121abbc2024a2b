# Sourced by the launchers. Takes their own flags out of the arguments:
#   --dry-run        print the exact commands, one a line, and run nothing
#   --aot=TOPOLOGY   first print `famjax compile`'s report of the run's train
#                    step for TOPOLOGY (e.g. v5p:4x4x4) on this machine, and
#                    stop if it does not fit (needs `pip install -e '.[tpu]'`)
# and leaves the rest (the famjax train flags) in ARGS.
DRY_RUN=0
AOT=""
ARGS=()
for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    --aot=*) AOT=${a#--aot=} ;;
    *) ARGS+=("$a") ;;
  esac
done

# One word as the shell reads it: plain if it can be, else single-quoted.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else printf '%s' "${1@Q}"; fi
}

# The command line of "$@", quoted.
cmdline() {
  local out="" w
  for w in "$@"; do out+="$(quote "$w") "; done
  printf '%s' "${out% }"
}

# Run a command, or print it with --dry-run.
run() {
  if ((DRY_RUN)); then cmdline "$@"; echo; else "$@"; fi
}

# The AOT report (--aot=TOPOLOGY); extra arguments go to famjax compile.
aot_report() {
  if [[ -n $AOT ]]; then
    run famjax compile "${ARGS[@]}" --topology="$AOT" "$@" --require_fit
  fi
}
