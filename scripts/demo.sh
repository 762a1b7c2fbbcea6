#!/usr/bin/env bash
# The CPU demo (`make demo`): build the offline demo data, train the tiny config on 2 CPU ranks through the real
# `deepspeed` launcher (240 steps, the curriculum switch at step 120, an eval every 40 steps, GOLD saves), then print
# the first and last eval, where the outputs are, and the wall time. Training takes about 1.5 min on 2 cores
# (docs/RESULTS.md, "The demo and the test suite", for the figures and the CPUs they were measured on).
#
#   bash scripts/demo.sh                                     # from the repository root
#   PYTHON=python DEEPSPEED=deepspeed bash scripts/demo.sh   # other interpreters than .venv/ (with `pip install -e .` done)
#   DEMO_CONFIG=my_tiny.json bash scripts/demo.sh            # another training config (tests use a shorter run)
#   DEMO_PRECISION=bf16 bash scripts/demo.sh                 # bf16 even where the CPU has no native bf16 (~8x slower)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
DEEPSPEED="${DEEPSPEED:-.venv/bin/deepspeed}"
CONFIG="${DEMO_CONFIG:-configs/tiny/demo_cpu.json}"
PRECISION="${DEMO_PRECISION:-auto}"
NAME=demo_cpu

SECONDS=0
# The packing index is written for the block size the config trains at (one source of truth: the config).
BLOCK_SIZE=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["model"]["block_size"])' "$CONFIG")
"$PYTHON" scripts/unified_build/build_unified_dataset.py --sources data/sources/demo.json --out-root data/demo \
    --block-size "$BLOCK_SIZE"
build_seconds=$SECONDS

# Every demo starts fresh: an earlier demo's checkpoints would otherwise be resumed (or refused by --resume none).
rm -rf "checkpoints/$NAME" "runs/$NAME" "logs/train/${NAME}_train.jsonl" "logs/train/${NAME}_eval.jsonl"
# One intra-op thread per rank: two ranks on two cores, each with torch's default thread pool, spend more time
# contending (system time) than computing.
# DS_ACCELERATOR=cpu: the demo is the CPU path by design (and DeepSpeed then does not warn that it found no GPU);
# --quiet: the runner's own INFO lines (its command line, the rank table) are not the demo's story; errors still show.
SECONDS=0
DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 "$DEEPSPEED" --quiet --num_gpus 2 launcher/train.py \
    --config_file "$CONFIG" --model_name "$NAME" --resume none --precision "$PRECISION"
train_seconds=$SECONDS

"$PYTHON" scripts/train_summary.py "logs/train/${NAME}_eval.jsonl"
echo "TensorBoard: tensorboard --logdir runs/   (train/*, eval/*, gold/* of run $NAME)"
echo "GOLD checkpoint: checkpoints/$NAME/gold/  (export: python scripts/export_hf.py checkpoints/$NAME/gold out/hf_$NAME)"
capability=$("$PYTHON" -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
echo "demo wall time: training ${train_seconds}s (2 ranks, OMP_NUM_THREADS=1, $(nproc) cores, torch CPU capability" \
     "$capability), data build ${build_seconds}s"
