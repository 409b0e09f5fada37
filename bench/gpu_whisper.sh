#!/usr/bin/env bash
# Whisper fine-tuning and TAPT at GPU scale, prepared for a lent GPU machine (never CI).
#
#   bash bench/gpu_whisper.sh prepare     # here: fills .gpu/ (ignored by git): wheels, the
#                                         # whisper-tiny.en encoder as a transformers folder, EmoDB
#   bash bench/gpu_whisper.sh run         # there, with .gpu carried: results under $OUT (or runs/)
#   bash bench/gpu_whisper.sh smoke       # here: the same commands, tiny, on the CPU
#
# The GPU machine has python3 with torch, transformers and accelerate but no network: what after
# needs beyond them (soundfile, soxr) travels as wheels, the encoder as the folder that the
# CTranslate2 wheel's conversion makes (32 MB; whisper-base's 80 MB does not fit the 64 MB a run
# may carry with EmoDB), and EmoDB itself (23 MB). `run` does, on 3 folds:
#   1. bench/whisper_finetune.py: the default fine-tuning recipe against frozen features, timed;
#   2. bench/tapt_whisper.py: TAPT at the largest scale that fits a 10-minute call (STEPS steps of
#      BATCH clips; the paper's scale is 20,000 x 64), judged by the frozen probe at every layer,
#      with a 3-step control.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu
STEPS=${STEPS:-2000}
BATCH=${BATCH:-64}
FOLDS=${FOLDS:-0,4,8}

prepare() {
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    rm -rf "$GPU" && mkdir -p "$GPU/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$GPU/wheels" soundfile soxr
    .venv/bin/python -c "from after.models.backbones import resolve; import shutil, sys; \
shutil.copytree(resolve('whisper-tiny.en'), sys.argv[1])" "$GPU/whisper-tiny.en"
    cp -r ../shared/data/emodb "$GPU/emodb"
    du -sh "$GPU"
}

commands() {  # $1: python, $2: output folder, then steps, batch, folds, seeds, fine-tuning
    local py=$1 out=$2 steps=$3 batch=$4 folds=$5 seeds=$6 recipe=$7
    "$py" bench/whisper_finetune.py --backbone "$GPU/whisper-tiny.en" --data "$GPU/emodb" \
        --folds "$folds" --seeds "$seeds" --variants "$recipe" --out "$out/finetune" \
        > "$out/whisper_finetune.json"
    "$py" bench/tapt_whisper.py --backbone "$GPU/whisper-tiny.en" --data "$GPU/emodb" \
        --folds "$folds" --seeds "$seeds" --steps "$steps" --batch-size "$batch" \
        --variants "default;steps=3" --judges probe --out "$out/tapt" > "$out/tapt_whisper.json"
}

case "${1:-}" in
    prepare) prepare ;;
    run)
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$GPU"/wheels/*.whl
        export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
        out=${OUT:-runs/gpu} && mkdir -p "$out"
        nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpu.txt" || true
        commands python3 "$out" "$STEPS" "$BATCH" "$FOLDS" 0 default
        ;;
    smoke)
        out=$(mktemp -d) && OMP_NUM_THREADS=1 commands .venv/bin/python "$out" 3 2 0 0 \
            "epochs=1,min_steps=0"
        echo "smoke run: $out"
        ;;
    *) echo "usage: bash bench/gpu_whisper.sh prepare|run|smoke" >&2; exit 2 ;;
esac
