#!/usr/bin/env bash
# One GPU window (15 minutes of device time, the machine's start included; commands of at most
# 10 minutes) in two calls: bench --train of every method, then stage-1 training of ffc-unet-gan at
# 128 px, its weights and checkpoint brought back. docs/gpu-window.md gives the calls in order.
#
#   tools/gpu_window.sh pack [SHARED]   here: pack the training sets into packs/ (once)
#   tools/gpu_window.sh bench           there: CUDA no-sync tests, bench --train (after, before, compiled) -> $OUT
#   tools/gpu_window.sh train MINUTES   there: train MINUTES, then export and copy the results to $OUT
#   tools/gpu_window.sh start MINUTES   there: start (or resume) the run in the background
#   tools/gpu_window.sh watch SECONDS   there: print the run's progress until it ends or SECONDS pass
#   tools/gpu_window.sh collect         there: wait for the run to stop, export, copy results to $OUT
#
# Environment: RUN (run folder, default runs/ffc-unet-gan-128), DEVICE (default cuda), SIZE (default 128), BATCH
# (default 128), STEPS (default 1000000: --time-limit ends the run), INIT (a weights file or run
# checkpoint to start from when the run folder holds no checkpoint), SET (space-separated method settings, each passed
# as --set; default "adv_weight=1.0 fm_weight=10.0", the GAN weights of the shipped CPU model;
# SET= for the method's defaults), FF (the facefill command), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/ffc-unet-gan-128}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-128}
SIZE=${SIZE:-128}
STEPS=${STEPS:-1000000}
OUT=${OUT:-out/gpu-window}
SET=${SET-adv_weight=1.0 fm_weight=10.0}
if [ -z "${FF:-}" ]; then
  if command -v facefill >/dev/null; then FF=facefill; else export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}; FF="python3 -m facefill"; fi
fi
PY="$(dirname "$(command -v "${FF%% *}")")/python"   # the Python beside facefill's command (a venv's)
[ -x "$PY" ] || PY=python3

die() { echo "gpu_window: $*" >&2; exit 1; }

pack() {  # on this machine: the packed training sets the device machine receives in `carry`
  local shared=${1:-../shared/data}
  [ -d "$shared/celeba-aligned" ] || die "$shared: no celeba-aligned (give the shared data folder)"
  $FF prepare "$shared/celeba-aligned" packs/data128 --size 128 --pack \
      --identities "$shared/celeba-aligned/identities.csv" --masks center
  $FF prepare "$shared/celeba-crops" packs/crops128 --size 128 --crop center --test-fraction 0 --masks center --pack
  # the same split as the hq128 test set, and its label maps for the sunglasses and surgical-mask occluders
  $FF prepare "$shared/celeba-hq/images" packs/hq128 --size 128 --crop center --test-fraction 0.1 --masks center --pack
  $PY tools/parsing_maps.py packs/hq128 "$shared/celeba-hq/parsing" packs/parsing128
  rm -rf packs/*/test packs/*/masks   # test splits stay here: the device machine only trains
  du -sh --apparent-size packs/* packs/*/*.npz
}

METHODS=dense-gan,ffc-unet-gan,two-stage-gan,glcic,ddpm-ffc,wgan,autoencoder,context-encoder

bench() {  # about 4 minutes; each part has a time cap and keeps what it measured (rows are saved one by one)
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt" || true
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_no_sync.py -k cuda 2>&1 \
      | tail -n 15 | tee "$OUT/no-sync-cuda.txt" || true
  local common=(--train --size 128 --repeat 10 --warmup 3 --device "$DEVICE" --methods "$METHODS")
  timeout 100 $FF bench "${common[@]}" --batch-sizes 256 --amp --out "$OUT/bench-cuda-train.json" || true
  timeout 60 $FF bench "${common[@]}" --batch-sizes 256 --data-on workers --workers 12 --no-channels-last \
      --out "$OUT/bench-cuda-train-before.json" || true
  timeout 60 $FF bench --train --size 128 --repeat 10 --warmup 3 --device "$DEVICE" --methods dense-gan \
      --batch-sizes 256,512 --amp --compile --out "$OUT/bench-cuda-train-compile.json" || true
}

start() {
  local minutes=${1:?minutes of training}
  mkdir -p "$RUN"
  local resume=()
  if ls "$RUN"/ckpt-*.pt >/dev/null 2>&1; then resume=(--resume)
  elif [ -n "${INIT:-}" ]; then resume=(--init-from "$INIT"); fi
  local settings=() kv
  for kv in $SET; do settings+=(--set "$kv"); done
  # --time-limit stops the run cleanly with a checkpoint before the window closes
  FACEFILL_PARSING_DIR=packs/parsing128 setsid nohup $FF train --method ffc-unet-gan \
      --data packs/data128:3 --data packs/crops128 --data packs/hq128:2 --size "$SIZE" \
      --masks full --augment --data-on device --batch-size "$BATCH" --amp --ema 0.999 --steps "$STEPS" \
      --time-limit "$minutes" --val-every 1000 --ckpt-every 1000 --part-mib 15 --set keep_last=1 \
      --device "$DEVICE" --seed 0 --out "$RUN" "${resume[@]}" "${settings[@]}" >>"$RUN/stdout.log" 2>&1 < /dev/null &
  echo $! >"$RUN/pid"
  sleep 60
  tail -n 5 "$RUN/stdout.log"
}

running() { [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null; }

watch() {
  local until=$(( $(date +%s) + ${1:?seconds} ))
  while running && [ "$(date +%s)" -lt "$until" ]; do sleep 30; done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
  tail -n 3 "$RUN/log.jsonl" 2>/dev/null || tail -n 5 "$RUN/stdout.log"
  running && echo "still training" || echo "stopped"
}

collect() {
  watch 150   # the time limit ends the run; its last validation and checkpoint follow
  running && die "the run is still going: collect again after it stops"
  mkdir -p "$OUT"
  $FF export "$RUN/best.pt" "$OUT/ffc-unet-gan-$SIZE.pt" --note "stage 1 of docs/training-default-model.md"
  local newest
  newest=$(ls "$RUN"/ckpt-*.pt | sort | tail -n 1)
  cp "$newest" "$newest".part-* "$OUT"/ 2>/dev/null || cp "$newest" "$OUT"/
  cp "$RUN/log.jsonl" "$OUT"/
  ls -la "$OUT"
}

train() {  # the whole training call: MINUTES of training, then its results in $OUT
  local minutes=${1:?minutes of training}
  start "$minutes"
  watch $(( ${minutes%.*} * 60 ))
  collect
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  bench) bench ;;
  train) shift; train "$@" ;;
  start) shift; start "$@" ;;
  watch) shift; watch "$@" ;;
  collect) collect ;;
  *) sed -n 2,18p "$0"; exit 2 ;;
esac
