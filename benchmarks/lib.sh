# shellcheck shell=bash
# Shared by the scripts in benchmarks/ (gpu_smoke.sh, gpu_check.sh): source it from the
# repository root after setting OUT (a folder) and optionally SUMMARY (a text file) and BUDGET.
#
#   lib_setup DEFAULT_OUT          cd to the repository root; PY (PYTHON, .venv, python3) and
#                                  OUT (an absolute folder, default DEFAULT_OUT), created
#   lib_init                       start the clock; steps.tsv and the text summary begin empty
#   step NAME LIMIT COMMAND...     run COMMAND with a time limit, its output to $OUT/NAME.log;
#                                  one line in $SUMMARY, one row in $OUT/steps.tsv; FAILED=1 if
#                                  it failed. COMMAND may be a shell function of the script: it
#                                  runs in a child bash, which sees PY, OUT and what is exported
#   summary_table                  the steps so far as a Markdown table (step, seconds, result)
#   remaining                      seconds left of $BUDGET

lib_setup() {
  PY=${PYTHON:-.venv/bin/python}
  [ -x "$PY" ] || PY=python3
  OUT=${OUT:-$1}
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
}

lib_init() {
  : "${OUT:?set OUT before lib_init}"
  BUDGET=${BUDGET:-470}
  SUMMARY=${SUMMARY:-$OUT/summary.txt}
  STEPS_TSV="$OUT/steps.tsv"
  START=$SECONDS
  FAILED=0
  : > "$SUMMARY"
  : > "$STEPS_TSV"
}

remaining() { echo $(( BUDGET - (SECONDS - START) )); }

_now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

step() {
  local name=$1 limit=$2; shift 2
  local left; left=$(remaining)
  if [ "$left" -le 5 ]; then
    printf '%-34s SKIPPED (time budget spent)\n' "$name" | tee -a "$SUMMARY"
    printf '%s\t-\tSKIPPED\ttime budget spent\n' "$name" >> "$STEPS_TSV"
    FAILED=1
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0 rc secs why
  echo "== $name (limit ${limit}s)"
  t0=$(_now_ms)
  if declare -F "$1" > /dev/null; then
    # A function of the calling script: run it in a child bash that timeout can stop (it
    # sees exported variables and functions only: PY and OUT are exported here).
    export -f "$1"
    export PY OUT
    timeout --signal=TERM --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" \
      > "$OUT/$name.log" 2>&1
  else
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  fi
  rc=$?
  secs=$(awk -v ms=$(( $(_now_ms) - t0 )) 'BEGIN { printf "%.1f", ms / 1000 }')
  if [ $rc -eq 0 ]; then
    printf '%-34s ok      %6ss\n' "$name" "$secs" | tee -a "$SUMMARY"
    printf '%s\t%s\tok\t\n' "$name" "$secs" >> "$STEPS_TSV"
  else
    why="rc=$rc"
    [ $rc -eq 124 ] && why="timed out after ${limit}s"
    printf '%-34s FAILED  %6ss  %s (%s)\n' "$name" "$secs" "$why" "$OUT/$name.log" \
      | tee -a "$SUMMARY"
    printf '%s\t%s\tFAILED\t%s, see %s\n' "$name" "$secs" "$why" "$name.log" >> "$STEPS_TSV"
    tail -n 15 "$OUT/$name.log"
    FAILED=1
  fi
  return $rc
}

summary_table() {
  echo "| step | seconds | result |"
  echo "|---|---:|---|"
  local name secs result detail
  while IFS=$'\t' read -r name secs result detail; do
    echo "| $name | $secs | $result${detail:+ ($detail)} |"
  done < "$STEPS_TSV"
}
