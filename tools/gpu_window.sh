#!/usr/bin/env bash
# One GPU window (30 minutes of device time, commands of at most 10 minutes) spent on the default
# model: bench --train of every method, then stage-1 training of ffc-unet-gan at 128 px that a
# later window resumes from its checkpoint parts. docs/gpu-window.md gives the calls in order.
#
#   tools/gpu_window.sh pack [SHARED]   here: pack the training sets into packs/ (once)
#   tools/gpu_window.sh bench           there: bench --train of every trainable method -> $OUT
#   tools/gpu_window.sh start MINUTES   there: start (or resume) the run in the background
#   tools/gpu_window.sh watch SECONDS   there: print the run's progress until it ends or SECONDS pass
#   tools/gpu_window.sh collect         there: wait for the run to stop, export, copy results to $OUT
#
# Environment: RUN (run folder, default runs/ffc-unet-gan-128), DEVICE (default cuda), BATCH
# (default 128), STEPS (default 1000000: --time-limit ends the run), FF (the facefill command).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/ffc-unet-gan-128}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-128}
STEPS=${STEPS:-1000000}
OUT=${OUT:-out/gpu-window}
if [ -z "${FF:-}" ]; then
  if command -v facefill >/dev/null; then FF=facefill; else export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}; FF="python3 -m facefill"; fi
fi

die() { echo "gpu_window: $*" >&2; exit 1; }

pack() {  # on this machine: the packed training sets the device machine receives in `carry`
  local shared=${1:-../shared/data}
  [ -d "$shared/celeba-aligned" ] || die "$shared: no celeba-aligned (give the shared data folder)"
  $FF prepare "$shared/celeba-aligned" packs/data128 --size 128 --pack \
      --identities "$shared/celeba-aligned/identities.csv" --masks center
  $FF prepare "$shared/celeba-crops" packs/crops128 --size 128 --crop center --test-fraction 0 --masks center --pack
  rm -rf packs/*/test packs/*/masks   # test splits stay here: the device machine only trains
  du -sh packs/* packs/*/*
}

bench() {
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,memory.total --format=csv || true
  $FF bench --train --size 128 --batch-sizes 64,256 --repeat 20 --warmup 5 --amp --device "$DEVICE" \
      --out "$OUT/bench-cuda-train.json"
  $FF bench --train --methods dense-gan,ffc-unet-gan --size 128 --batch-sizes 256 --repeat 20 --warmup 5 \
      --amp --compile --device "$DEVICE" --out "$OUT/bench-cuda-train-compile.json" || true
}

start() {
  local minutes=${1:?minutes of training}
  mkdir -p "$RUN"
  local resume=()
  ls "$RUN"/ckpt-*.pt >/dev/null 2>&1 && resume=(--resume)
  # --time-limit stops the run cleanly with a checkpoint before the window closes
  setsid nohup $FF train --method ffc-unet-gan --data packs/data128:2 --data packs/crops128 --size 128 \
      --masks full --augment --data-on device --batch-size "$BATCH" --amp --ema 0.999 --steps "$STEPS" \
      --time-limit "$minutes" --val-every 1000 --ckpt-every 1000 --part-mib 15 --set keep_last=1 \
      --device "$DEVICE" --seed 0 --out "$RUN" "${resume[@]}" >>"$RUN/stdout.log" 2>&1 < /dev/null &
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
  watch 540
  running && die "the run is still going: collect again after it stops"
  mkdir -p "$OUT"
  $FF export "$RUN/best.pt" "$OUT/ffc-unet-gan-128.pt" --note "stage 1 of docs/training-default-model.md"
  local newest
  newest=$(ls "$RUN"/ckpt-*.pt | sort | tail -n 1)
  cp "$newest" "$newest".part-* "$OUT"/ 2>/dev/null || cp "$newest" "$OUT"/
  cp "$RUN/log.jsonl" "$OUT"/
  ls -la "$OUT"
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  bench) bench ;;
  start) shift; start "$@" ;;
  watch) shift; watch "$@" ;;
  collect) collect ;;
  *) sed -n 2,15p "$0"; exit 2 ;;
esac
