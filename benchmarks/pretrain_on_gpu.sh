#!/usr/bin/env bash
# The GPU part of the transfer benchmark: more pretraining rooms and steps than this
# project's CPUs allow, then fine-tuning where the rest of the benchmark runs.
#
#   benchmarks/pretrain_on_gpu.sh OUT [SECONDS_EACH] [ROOMS]      # on a CUDA machine
#   for t in OUT/pretrain_*.tar; do tar -xf $t -C bench_out/t23b; done
#   .venv/bin/python benchmarks/bench_transfer.py --work bench_out/t23b --arms independent \
#       --pretrain-rooms ROOMS --pretrain-batch 8 --pretrain-tag gpu \
#       --pretrain-seconds SECONDS_EACH ...                  # here, on the CPU: fine-tuning
#
# Draws ROOMS (default 1536) class-independent pretraining rooms with the benchmark's seeds,
# then pretrains four tiny MAEs at once (opacity_only_normalised_decorrelated, the default,
# and paper, pretraining seeds 0 and 1; a tiny MAE keeps a fraction of one GPU busy), each for as
# many steps as fit SECONDS_EACH (default 300), and packs each run for the trip back
# (pack_pretraining.py).
# While the rooms are drawn, bench_pretrain_gpu.py measures swin_s at 160^3 (issue 5's
# throughput target). Logs go to OUT/logs.tar. PY, DEVICE and WORK (python3, cuda,
# /tmp/transfer_gpu) can be set for a dry run on a CPU.
set -uo pipefail
OUT=${1:?usage: pretrain_on_gpu.sh OUT [SECONDS_EACH] [ROOMS]}
SECONDS_EACH=${2:-300}
ROOMS=${3:-1536}
WORK=${WORK:-/tmp/transfer_gpu}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
LOGS=$WORK/logs
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
COMMON=(--work "$WORK" --arms independent --pretrain-rooms "$ROOMS" --pretrain-tag gpu
        --pretrain-batch 8 --threads 2)

"$PY" benchmarks/bench_transfer.py "${COMMON[@]}" --stage rooms \
    --room-workers 14 >"$LOGS/rooms.log" 2>&1 &
rooms=$!
timeout 120 "$PY" benchmarks/bench_pretrain_gpu.py --out "$OUT/bench_pretrain_gpu.json" \
    >"$LOGS/bench_pretrain_gpu.log" 2>&1
echo "bench_pretrain_gpu: exit $?"; tail -n 12 "$LOGS/bench_pretrain_gpu.log"
wait $rooms || { tail -n 30 "$LOGS/rooms.log"; exit 1; }
tail -n 2 "$LOGS/rooms.log"

pids=()
for objective in opacity_only_normalised_decorrelated paper; do
    for seed in 0 1; do
        "$PY" benchmarks/bench_transfer.py "${COMMON[@]}" --stage pretrain \
            --objectives $objective --pretrain-seeds $seed --pretrain-device "$DEVICE" \
            --pretrain-seconds "$SECONDS_EACH" --pretrain-workers 3 \
            >"$LOGS/pretrain_${objective}_s$seed.log" 2>&1 &
        pids+=($!)
    done
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
for log in "$LOGS"/pretrain_*.log; do
    echo "== $log"; grep -E "steps fit|^pretrain |Error|error" "$log" | tail -n 8
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
"$PY" benchmarks/pack_pretraining.py "$WORK" "$OUT"
tar -cf "$OUT/logs.tar" -C "$WORK" logs
exit $failed
