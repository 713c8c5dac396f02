#!/usr/bin/env bash
# GPU smoke test (issue 13): what a CPU cannot show, on one GPU, in under 8 minutes on an H100.
#
#   benchmarks/gpu_smoke.sh            # from the repository root; no network needed
#
# Writes every step's output under $OUT (if set) or runs/gpu-smoke/, and a summary table to
# $OUT/summary.txt. Exit 0 when every step passed, 1 otherwise (the table says which).
#
# Needs: the project's environment (.venv, or PYTHON=...), Fashion-MNIST where labutils finds it
# (LABUTILS_DATA_DIR or /usr/share/datasets/fashion-mnist). Flower photos are not needed: the
# flowers steps use generated pictures (a 2,100-image folder for the `full` run).
#
# Steps:
#  1 doctor, and `labutils bench --what train` on cuda (course's way vs labutils', ms per step)
#  2 torch.cuda.set_sync_debug_mode("warn") over 20 steps of lab 04 (fmnist-cfg): the syncs, listed
#  3 each lab under `ci` with --device cuda, then sampling its checkpoint on cuda and on cpu
#  4 a CUDA checkpoint resumed on the CPU, and a CPU checkpoint resumed on CUDA
#  5 flowers-cfg `full` for 2 epochs, SIGTERM mid-run: time to exit 143; then --resume
#  6 the GPU variant of the SIGTERM + resume test (steps and loss trajectory)
#  7 the notebooks under nbval (`ci` profile) on CUDA
#  8 with 2+ GPUs: torchrun with 2 processes (NCCL), SIGTERM to torchrun, resume, equal digests
set -u
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/lib.sh
. benchmarks/lib.sh
lib_setup runs/gpu-smoke
export TQDM_DISABLE=1 LABUTILS_CLIP_OFFLINE=1 PYTHONUNBUFFERED=1
BUDGET=${SMOKE_BUDGET_S:-470}      # seconds for the whole script (8 minutes less a margin)
SUMMARY="$OUT/summary.txt"
lib_init

lu() { "$PY" -m labutils "$@"; }

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no usable CUDA GPU: nothing to smoke-test here (see: $PY -m labutils doctor)" >&2
  exit 2
fi
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, '
  f'capability {p.major}.{p.minor}, torch {torch.__version__}, CUDA {torch.version.cuda}')" \
  | tee -a "$SUMMARY"

# --- 1. doctor and bench -----------------------------------------------------------------------
step 1-doctor 60 lu doctor
step 1-bench 150 lu bench --device cuda --what train --reps 10 --out "$OUT/bench" \
  --labs fmnist-ddpm fmnist-optimized fmnist-cfg   # flowers: benchmarks/gpu_check.sh

# --- 2. host syncs over 20 training steps of lab 04 ----------------------------------------------
step 2-sync-debug 120 "$PY" - <<'EOF'
import collections, traceback, warnings
import torch
from labutils import lab_settings
from labutils.data import BatchLoader
from labutils.labs import Lab
from labutils.training import train

s = lab_settings("fmnist-cfg", "full")
lab = Lab(s, "cuda")
model, data = lab.build_model(), lab.dataset().subset(128 * 30)
opt = lab.optimizer(model)
loader = BatchLoader(data, 128, augment=lab.augment(), device="cuda", max_batches=20)
train(model, lab.loss_fn(), loader, opt, 1, progress=False)       # warm-up: cuDNN autotuning
torch.cuda.synchronize()
sites = collections.Counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        result = train(model, lab.loss_fn(), loader, opt, 2, start_step=20, progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
for w in caught:
    if "synchroniz" in str(w.message):
        sites[f"{w.filename}:{w.lineno}"] += 1
print(f"20 steps (global {result.step}); synchronizing operations by call site:")
for site, n in sites.most_common():
    print(f"  {n:3d} x {site}")
print(f"total {sum(sites.values())} syncs in 20 steps (losses are read every 25 steps and at "
      "epoch ends; labels once per data set)")
EOF
grep -E "^ +[0-9]+ x|^total" "$OUT/2-sync-debug.log" | sed 's/^/    /' | tee -a "$SUMMARY"

# --- 3. every lab under ci on cuda; sampling on cuda and on cpu ----------------------------------
for lab in fmnist-unet fmnist-ddpm fmnist-optimized fmnist-cfg flowers-cfg flowers-clip; do
  run="$OUT/ci/$lab"
  rm -rf "$run"
  if step "3-train-$lab" 120 lu train "$lab" --profile ci --device cuda --out "$run" --quiet; then
    step "3-sample-$lab-cuda" 60 lu sample "$run" --device cuda --out "$run/sample-cuda.png"
    step "3-sample-$lab-cpu" 90 lu sample "$run" --device cpu --out "$run/sample-cpu.png"
  fi
done

# --- 4. checkpoints across devices --------------------------------------------------------------
x="$OUT/cross"
rm -rf "$x"
step 4-cuda-then-cpu 120 bash -c "
  $PY -m labutils train fmnist-cfg --profile ci --device cuda --epochs 1 --out '$x/a' --quiet &&
  $PY -m labutils train fmnist-cfg --device cpu --epochs 2 --resume --out '$x/a' --quiet &&
  grep -q '\"step\": 6' '$x/a/summary.json'"
step 4-cpu-then-cuda 120 bash -c "
  $PY -m labutils train fmnist-cfg --profile ci --device cpu --epochs 1 --out '$x/b' --quiet &&
  $PY -m labutils train fmnist-cfg --device cuda --epochs 2 --resume --out '$x/b' --quiet &&
  grep -q '\"step\": 6' '$x/b/summary.json'"

# --- 5. flowers-cfg full, 2 epochs, SIGTERM mid-run, resume --------------------------------------
photos="$OUT/flowers-photos"
[ -d "$photos" ] || "$PY" -c "
from labutils.data.flowers import make_flowers_fixture
make_flowers_fixture('$photos', per_class=700, size=64)"   # ~2,100 pictures, like the course's
run="$OUT/flowers-full"
rm -rf "$run"
step 5-flowers-full-sigterm 200 env LABUTILS_FLOWERS_DIR="$photos" bash -c '
  '"$PY"' -m labutils train flowers-cfg --profile full --epochs 2 --device cuda --out '"$run"' \
      --quiet > '"$run"'.train.log 2>&1 &
  pid=$!
  until [ -s '"$run"'/loss.jsonl ] || ! kill -0 $pid 2>/dev/null; do sleep 0.05; done
  t0=$(date +%s%N); kill -TERM $pid; wait $pid; rc=$?
  echo "exit code $rc, $(( ($(date +%s%N) - t0) / 1000000 )) ms after SIGTERM"
  tail -n 3 '"$run"'.train.log
  [ $rc -eq 143 ] || { echo "expected 143 (0: the run ended before the signal)"; exit 1; }
  '"$PY"' -m labutils train flowers-cfg --epochs 2 --device cuda --out '"$run"' --resume --quiet &&
  '"$PY"' -c "import json; s = json.load(open(\"'"$run"'/summary.json\"));
print(\"resumed from\", s[\"resumed_from_step\"], \"to\", s[\"step\"], \"of\", s[\"total_steps\"],
      \";\", s[\"seconds_per_epoch\"], \"s/epoch\"); assert s[\"step\"] == s[\"total_steps\"]"'
grep -E "exit code|resumed from" "$OUT/5-flowers-full-sigterm.log" | sed 's/^/    /' \
  | tee -a "$SUMMARY"

# --- 6. the GPU variant of the SIGTERM + resume test ----------------------------------------------
step 6-pytest-gpu 150 "$PY" -m pytest -q -p no:cacheprovider \
  "tests/test_gpu_ready.py::test_sigterm_and_resume_on_cuda_keep_steps_and_loss_trajectory" \
  tests/test_checkpoint.py::test_sigterm_saves_and_resume_matches_an_uninterrupted_run

# --- 7. the notebooks under nbval on CUDA --------------------------------------------------------
step 7-notebooks-nbval 240 env LABUTILS_PROFILE=ci LABUTILS_OUTPUT_DIR="$OUT/notebooks" \
  "$PY" -m pytest -q -p no:cacheprovider --nbval-lax notebooks/

# --- 8. two GPUs: torchrun (NCCL), SIGTERM, resume ---------------------------------------------------
if [ "$NGPU" -ge 2 ]; then
  run="$OUT/ddp"
  rm -rf "$run"
  step 8-torchrun-nccl 150 bash -c '
    export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=100
    ddp="'"$PY"' -m torch.distributed.run --standalone --nproc_per_node=2 -m labutils train
         fmnist-cfg --profile ci --device cuda --out '"$run"' --quiet"
    $ddp --epochs 400 > '"$run"'.log 2>&1 &    # $! is torchrun itself, not a subshell
    pid=$!
    until [ -s '"$run"'/loss.jsonl ] || ! kill -0 $pid 2>/dev/null; do sleep 0.05; done
    sleep 1; kill -TERM $pid; wait $pid; echo "torchrun exit $? after SIGTERM"
    grep "stopped at step" '"$run"'.log || exit 1
    step=$(ls '"$run"'/checkpoints | tail -n 1 | tr -dc 0-9 | sed "s/^0*//")
    $ddp --epochs $(( step / 3 + 2 )) --resume &&
    '"$PY"' -c "import json; d = json.load(open(\"'"$run"'/summary.json\"))[\"param_digests\"];
print(\"digests\", d); assert len(d) == 2 and d[0] == d[1]"'
else
  printf '%-34s skipped (1 GPU; needs 2)\n' 8-torchrun-nccl | tee -a "$SUMMARY"
fi

echo "total $((SECONDS - START)) s; outputs in $OUT" | tee -a "$SUMMARY"
exit $FAILED
