#!/usr/bin/env bash
# GPU check (issue 10): the course's lab 05 as the course runs it, on one GPU, in under 8 minutes
# on an H100, with no network and only the project's files plus a folder of flower photos.
#
#   benchmarks/gpu_check.sh                          # from anywhere
#   FLOWERS_DIR=/data/flowers benchmarks/gpu_check.sh
#   DRY_RUN=1 benchmarks/gpu_check.sh                # a CPU: the same steps, tiny (~2-3 minutes)
#
# Steps (each logged to $OUT/<step>.log; a table of step, seconds, ok/FAILED in $OUT/summary.md):
#  1 labutils doctor
#  2 torchrun --nproc_per_node=1 -m labutils train fmnist-cfg --profile ci (one process: labutils
#    then trains without a process group), and a one-process NCCL all-reduce under torchrun
#  3 labutils bench --device cuda (labs 03, 04, 05: the course's way vs labutils'; its table is
#    copied into summary.md)
#  4 labutils train flowers-clip --profile full (100 epochs; the stand-in CLIP offline unless CLIP
#    weights are staged), SIGTERM once the grid of epoch $STOP_EPOCH or a checkpoint exists:
#    exit 143 expected; then --resume to the end
#  5 labutils sample of the 7 x 3 grid from that run: DDIM 50 steps, then DDPM (all 400 steps)
#
# Environment: OUT (default runs/gpu-check), FLOWERS_DIR (default /work/shared/data/flowers,
# else data/flowers, else data/cropped_flowers: <dir>/{daisy,roses,sunflowers}/*.jpg), PYTHON
# (default .venv/bin/python), CHECK_BUDGET_S (seconds for the whole script, default 470),
# CHECK_EPOCHS (default: the course's 100), STOP_EPOCH (default 50; the first checkpoint, at
# step 500, may come first), BENCH_ARGS (more options
# for labutils bench), DRY_RUN=1 (CPU, --profile ci, bench --smoke, one thread per process).
# Exit 0 when every step passed, 1 otherwise, 2 without a usable GPU (unless DRY_RUN=1).
set -u
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/lib.sh
. benchmarks/lib.sh
lib_setup runs/gpu-check
DRY=${DRY_RUN:-0}
if [ -z "${FLOWERS_DIR:-}" ]; then
  for d in /work/shared/data/flowers data/flowers data/cropped_flowers; do
    if [ -d "$d" ]; then FLOWERS_DIR=$d; break; fi
  done
fi
FLOWERS_DIR=${FLOWERS_DIR:-data/flowers}
[ -d "$FLOWERS_DIR" ] && FLOWERS_DIR=$(cd "$FLOWERS_DIR" && pwd)
# Offline: staged CLIP weights are still used (LABUTILS_CLIP_MODEL or the download folder);
# otherwise the stand-in CLIP is trained on the photos (cached in data/clip).
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 LABUTILS_CLIP_OFFLINE=${LABUTILS_CLIP_OFFLINE:-1}
export LABUTILS_FLOWERS_DIR="$FLOWERS_DIR"
BUDGET=${CHECK_BUDGET_S:-470}
SUMMARY="$OUT/summary.txt"
lib_init
PICS="$OUT/pictures"
mkdir -p "$PICS"
rm -f "$PICS"/*.png

if [ "$DRY" = 1 ]; then
  DEV=cpu PROFILE=ci DDIM_STEPS=3
  EPOCHS=${CHECK_EPOCHS:-4} STOP_EPOCH=${STOP_EPOCH:-1}
  # shellcheck disable=SC2206
  BENCH=(--device cpu --smoke --labs fmnist-cfg flowers-clip ${BENCH_ARGS:-})
  # A shared CPU: one thread per process; the stand-in CLIP cached in $OUT, not in data/clip.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} LABUTILS_CLIP_CACHE=${LABUTILS_CLIP_CACHE:-$OUT/clip}
  MACHINE="DRY RUN on the CPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)):"
  MACHINE+=" --device cpu, --profile ci, bench --smoke; the times mean nothing"
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no usable CUDA GPU (see: $PY -m labutils doctor); DRY_RUN=1 runs the steps on a CPU" >&2
    exit 2
  fi
  DEV=cuda PROFILE=full DDIM_STEPS=50
  EPOCHS=${CHECK_EPOCHS:-} STOP_EPOCH=${STOP_EPOCH:-50}
  # shellcheck disable=SC2206
  BENCH=(--device cuda ${BENCH_ARGS:-})
  MACHINE=$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: '
    f'{p.name} x {torch.cuda.device_count()}, capability {p.major}.{p.minor}, torch '
    f'{torch.__version__}, CUDA {torch.version.cuda}')")
fi
EPOCH_ARGS=()
[ -n "$EPOCHS" ] && EPOCH_ARGS=(--epochs "$EPOCHS")
echo "$MACHINE" | tee -a "$SUMMARY"
echo "flowers: $FLOWERS_DIR; outputs: $OUT" | tee -a "$SUMMARY"

# --- the steps that need more than one command ---------------------------------------------------

# train_sigterm_resume RUN STOP_EPOCH DEVICE PROFILE [TRAIN OPTIONS...]
train_sigterm_resume() {
  local run=$1 stop=$2 dev=$3 profile=$4
  shift 4
  rm -rf "$run" "$run.first.log"
  local grid
  grid=$(printf '%s/samples/epoch%03d.png' "$run" "$stop")
  "$PY" -m labutils train flowers-clip --profile "$profile" --device "$dev" "$@" --out "$run" \
    --quiet > "$run.first.log" 2>&1 &
  local pid=$! t0 rc at
  echo "training (pid $pid); SIGTERM once $grid or a checkpoint exists"
  until [ -e "$grid" ] || compgen -G "$run/checkpoints/ckpt-step*.pt" > /dev/null \
      || ! kill -0 "$pid" 2> /dev/null; do
    sleep 0.2
  done
  at=$(tail -n 1 "$run/loss.jsonl" 2> /dev/null)
  t0=$(date +%s%N)
  kill -TERM "$pid" 2> /dev/null
  wait "$pid"
  rc=$?
  echo "check: SIGTERM after ${at:-no logged step} -> exit $rc," \
       "$(( ($(date +%s%N) - t0) / 1000000 )) ms after the signal"
  tail -n 4 "$run.first.log"
  if [ $rc -ne 143 ]; then
    echo "expected exit 143 (0: the run ended before the signal)"
    return 1
  fi
  ls "$run/checkpoints"
  "$PY" -m labutils train flowers-clip --device "$dev" "$@" --out "$run" --resume --quiet \
    || return 1
  "$PY" - "$run/summary.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"check: resumed from step {s['resumed_from_step']} to {s['step']} of {s['total_steps']} "
      f"({s['epochs']} epochs); {s['seconds_per_epoch']} s/epoch, {s['images_per_second']} "
      f"images/s, bf16 {s['bf16']}")
assert s["step"] == s["total_steps"] and s["resumed_from_step"] > 0, "did not resume to the end"
PYEOF
}

# nccl_allreduce: one process under torchrun joins an NCCL group and all-reduces on the GPU.
nccl_allreduce() {
  cat > "$OUT/nccl_allreduce.py" <<'PYEOF'
import torch, torch.distributed as dist
dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
x = torch.ones(1 << 20, device="cuda")
dist.all_reduce(x)
torch.cuda.synchronize()
print(f"check: NCCL {'.'.join(map(str, torch.cuda.nccl.version()))} all_reduce over "
      f"{dist.get_world_size()} process: {x[0].item():g}")
assert x[0].item() == dist.get_world_size()
dist.destroy_process_group()
PYEOF
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 "$OUT/nccl_allreduce.py"
}

# --- 1. doctor ------------------------------------------------------------------------------------
step 1-doctor 60 "$PY" -m labutils doctor

# --- 2. torchrun (short steps first: the long ones cannot starve them) ------------------------------
rm -rf "$OUT/torchrun"
step 2-torchrun-fmnist-cfg 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
  -m labutils train fmnist-cfg --profile ci --device "$DEV" --out "$OUT/torchrun" --quiet
if [ "$DRY" = 1 ]; then
  printf '%s\t-\tskipped\tdry run: no GPU\n' 2-nccl-allreduce >> "$STEPS_TSV"
else
  step 2-nccl-allreduce 60 nccl_allreduce
fi

# --- 3. bench -------------------------------------------------------------------------------------
rm -rf "$OUT/bench"
step 3-bench 240 "$PY" -m labutils bench "${BENCH[@]}" --flowers-dir "$FLOWERS_DIR" \
  --out "$OUT/bench"

# --- 4. lab 05 as the course trains it, SIGTERM in the middle, resume ------------------------------
RUN="$OUT/flowers-clip"
step 4-train-flowers-clip-sigterm-resume 330 train_sigterm_resume "$RUN" "$STOP_EPOCH" "$DEV" \
  "$PROFILE" "${EPOCH_ARGS[@]}"
for png in "$RUN"/samples/epoch*.png; do
  [ -e "$png" ] && cp "$png" "$PICS/train-$(basename "$png")"
done

# --- 5. the 7 x 3 grid from the checkpoint --------------------------------------------------------
if compgen -G "$RUN/checkpoints/ckpt-step*.pt" > /dev/null; then
  step "5-sample-ddim$DDIM_STEPS" 90 "$PY" -m labutils sample "$RUN" --device "$DEV" \
    --sampler ddim --steps "$DDIM_STEPS" --out "$PICS/sample-ddim$DDIM_STEPS.png"
  step 5-sample-ddpm 150 "$PY" -m labutils sample "$RUN" --device "$DEV" \
    --out "$PICS/sample-ddpm.png" --gif "$PICS/sample-ddpm.gif"
else
  printf '%s\t-\tskipped\tno checkpoint from step 4\n' 5-sample >> "$STEPS_TSV"
  FAILED=1
fi

# --- summary.md -------------------------------------------------------------------------------------
TOTAL=$((SECONDS - START))
{
  echo "# GPU check, $(date '+%Y-%m-%d %H:%M:%S %z')"
  echo
  echo "$MACHINE"
  echo
  echo "Flowers: \`$FLOWERS_DIR\`; total $TOTAL s (budget $BUDGET s);" \
       "$([ "$FAILED" = 0 ] && echo "every step passed" || echo "**some steps FAILED**")."
  echo
  summary_table
  echo
  echo "Seconds are whole commands (process start, data, CLIP, model) as a learner waits for them."
  echo
  echo "## Checks"
  echo
  grep -h "^check:" "$OUT"/*.log 2> /dev/null | sed 's/^check: /- /'
  grep -h "(checkpoint .*images ->" "$OUT"/5-sample-*.log 2> /dev/null | sed 's/^/- sample: /'
  grep -h "process(es) on" "$OUT"/2-torchrun-*.log 2> /dev/null | sed 's/^/- torchrun: /'
  if [ -f "$OUT/bench/bench.md" ]; then
    echo
    echo "## labutils bench (\`bench/bench.md\`, \`bench/bench.json\`)"
    echo
    sed -n '/^- device/,$p' "$OUT/bench/bench.md"
  fi
  echo
  echo "## Pictures"
  echo
  for png in "$PICS"/*.png; do
    [ -e "$png" ] && echo "- \`pictures/$(basename "$png")\`: ![]($(basename "$PICS")/$(basename "$png"))"
  done
} > "$OUT/summary.md"
echo "total $TOTAL s; summary: $OUT/summary.md" | tee -a "$SUMMARY"
exit "$FAILED"
