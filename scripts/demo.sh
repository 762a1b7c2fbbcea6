#!/usr/bin/env bash
# The CPU demo (`make demo`): build the offline demo data, train the tiny config on 2 CPU ranks through the real
# `deepspeed` launcher (240 steps, the curriculum switch at step 120, an eval every 40 steps, GOLD saves), then print
# the first and last eval and where the outputs are. About 4 minutes on 2 cores.
#
#   bash scripts/demo.sh                      # from the repository root
#   PYTHON=python DEEPSPEED=deepspeed bash scripts/demo.sh   # other interpreters than .venv/
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
DEEPSPEED="${DEEPSPEED:-.venv/bin/deepspeed}"
NAME=demo_cpu

"$PYTHON" scripts/unified_build/build_unified_dataset.py --sources data/sources/demo.json --out-root data/demo

# Every demo starts fresh: an earlier demo's checkpoints would otherwise be resumed (or refused by --resume none).
rm -rf "checkpoints/$NAME" "runs/$NAME" "logs/train/${NAME}_train.jsonl" "logs/train/${NAME}_eval.jsonl"
# One intra-op thread per rank: two ranks on two cores, each with torch's default thread pool, spend more time
# contending (system time) than computing.
OMP_NUM_THREADS=1 "$DEEPSPEED" --num_gpus 2 launcher/train.py \
    --config_file configs/tiny/demo_cpu.json --model_name "$NAME" --resume none

"$PYTHON" scripts/train_summary.py "logs/train/${NAME}_eval.jsonl"
echo "TensorBoard: tensorboard --logdir runs/   (train/*, eval/*, gold/* of run $NAME)"
echo "GOLD checkpoint: checkpoints/$NAME/gold/  (export: python scripts/export_hf.py checkpoints/$NAME/gold out/hf_$NAME)"
