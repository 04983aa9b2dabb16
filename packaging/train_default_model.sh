#!/usr/bin/env bash
# Reproduce the shipped default model from a fresh machine: corpus -> codec -> backbone -> TLDR adapters ->
# resources/. Every stage is resumable (rerun the script after an interruption) and its wall time is printed.
# Sizes come from the environment; the defaults are what the 2-core CPU of the project's machine allows.
#
#   bash packaging/train_default_model.sh                    # CPU defaults
#   DEVICE=cuda NPROC=8 HOURS=20 BACKBONE_STEPS=40000 BACKBONE_MORE_STEPS=0 TLDR_MORE_STEPS=0 DIM=512 bash packaging/train_default_model.sh
#   WORK=/tmp/try OUT=/tmp/try/out HOURS=0.03 ... EVAL_LIMIT=0   # a trial that leaves resources/ alone
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-runs/default}            # corpus, caches and checkpoints
OUT=${OUT:-resources}                 # where codec/ and default_model/ go (a trial run can point elsewhere)
HOURS=${HOURS:-4}                     # corpus size (training uses its shippable rows only)
CODEC_STEPS=${CODEC_STEPS:-3000}
CODEC_LEVELS=${CODEC_LEVELS:-"8 5 5 5"}  # FSQ levels: their product is the token vocabulary
BACKBONE_STEPS=${BACKBONE_STEPS:-600}
ALIGNMENT_PRIOR=${ALIGNMENT_PRIOR:-0.5}  # fraction of the backbone's steps with the fading alignment prior
TLDR_STEPS=${TLDR_STEPS:-300}
# a second phase from the first one's weights (--init: fresh optimiser, lr 5e-4): how the shipped model was continued
# in a later session on a fresh machine; a run with the time for it in one go sets these to 0 and the steps above higher
BACKBONE_MORE_STEPS=${BACKBONE_MORE_STEPS:-1600}
TLDR_MORE_STEPS=${TLDR_MORE_STEPS:-250}
PATCH_SIZES=${PATCH_SIZES:-"2 4 6 8"}
DIM=${DIM:-256}; LAYERS=${LAYERS:-12}; HEADS=${HEADS:-4}; FFN=${FFN:-768}
BATCH=${BATCH:-8}
DEVICE=${DEVICE:-auto}
NPROC=${NPROC:-1}                     # processes for torchrun (GPUs, or CPU processes with gloo)
THREADS=${THREADS:-2}
PY=${PY:-python3}

if [ "$NPROC" -gt 1 ]; then LAUNCH="$PY -m torch.distributed.run --nproc_per_node $NPROC -m tldr_core";
else LAUNCH="$PY -m tldr_core"; fi
RESUME() { [ -f "$1/checkpoint.pt" ] && echo --resume || true; }
stage() { local name=$1; shift; local t0=$SECONDS; echo "== $name"; "$@"; echo "== $name took $((SECONDS - t0)) s"; }
mkdir -p "$WORK"

# every installed voice is planned (so the held-out humans are those of docs/CORPUS.md); the stages below train on
# the rows whose licence lets the weights ship
[ -f "$WORK/corpus/manifest.jsonl" ] || \
  stage "corpus ($HOURS h)" $PY -m tldr_core corpus build "$WORK/corpus" --hours "$HOURS" --seed 0
stage "codec" $PY -m tldr_core train codec "$WORK/corpus" --out "$WORK/codec" --steps "$CODEC_STEPS" --batch 12 --threads "$THREADS" \
  $([ -f "$WORK/codec/checkpoint.pt" ] && echo --resume || echo --levels $CODEC_LEVELS)
stage "codec export" $PY -m tldr_core codec export "$WORK/codec/checkpoint.pt" "$OUT/codec"
stage "backbone" $LAUNCH train backbone "$WORK/corpus" --codec "$OUT/codec" --out "$WORK/backbone" --steps "$BACKBONE_STEPS" --batch "$BATCH" \
  --alignment-prior "$ALIGNMENT_PRIOR" --dim "$DIM" --layers "$LAYERS" --heads "$HEADS" --ffn "$FFN" --threads "$THREADS" --device "$DEVICE" $(RESUME "$WORK/backbone")
ADAPTERS=()
for K in $PATCH_SIZES; do
  stage "TLDR k=$K" $LAUNCH train tldr "$WORK/corpus" --codec "$OUT/codec" --backbone "$WORK/backbone/checkpoint.pt" --patch-size "$K" \
    --out "$WORK/tldr$K" --steps "$TLDR_STEPS" --batch "$BATCH" --threads "$THREADS" --device "$DEVICE" $(RESUME "$WORK/tldr$K")
  ADAPTERS+=("$K=$WORK/tldr$K/checkpoint.pt")
done
BACKBONE=$WORK/backbone/checkpoint.pt
if [ "$BACKBONE_MORE_STEPS" -gt 0 ]; then
  stage "backbone, continued" $LAUNCH train backbone "$WORK/corpus" --codec "$OUT/codec" --out "$WORK/backbone2" --init "$BACKBONE" \
    --steps "$BACKBONE_MORE_STEPS" --lr 5e-4 --batch "$BATCH" --threads "$THREADS" --device "$DEVICE" $(RESUME "$WORK/backbone2")
  BACKBONE=$WORK/backbone2/checkpoint.pt
  ADAPTERS=()
  for K in $PATCH_SIZES; do
    stage "TLDR k=$K, continued" $LAUNCH train tldr "$WORK/corpus" --codec "$OUT/codec" --backbone "$BACKBONE" --patch-size "$K" \
      --init "$WORK/tldr$K/checkpoint.pt" --out "$WORK/tldr${K}b" --steps "$TLDR_MORE_STEPS" --batch "$BATCH" --threads "$THREADS" \
      --device "$DEVICE" $(RESUME "$WORK/tldr${K}b")
    ADAPTERS+=("$K=$WORK/tldr${K}b/checkpoint.pt")
  done
fi
cat > "$WORK/recipe.json" <<JSON
{"script": "packaging/train_default_model.sh", "hours": $HOURS, "codec_steps": $CODEC_STEPS, "codec_levels": [${CODEC_LEVELS// /, }],
 "backbone_steps": $BACKBONE_STEPS, "alignment_prior": $ALIGNMENT_PRIOR, "tldr_steps": $TLDR_STEPS,
 "backbone_more_steps": $BACKBONE_MORE_STEPS, "tldr_more_steps": $TLDR_MORE_STEPS, "dim": $DIM, "layers": $LAYERS, "heads": $HEADS,
 "ffn": $FFN, "batch": $BATCH, "processes": $NPROC, "device": "$DEVICE", "corpus_seed": 0}
JSON
stage "pack" $PY -m tldr_core model pack --backbone "$BACKBONE" --tldr "${ADAPTERS[@]}" \
  --recipe "$WORK/recipe.json" --out "$OUT/default_model"
MODEL=(--model "$OUT/default_model" --codec "$OUT/codec")
[ "${EVAL_LIMIT:-40}" -gt 0 ] && stage "evaluate" $PY -m tldr_core evaluate "$WORK/corpus" --modes baseline 4 --limit "${EVAL_LIMIT:-40}" "${MODEL[@]}" --json "$WORK/evaluate.json"
stage "bench" $PY -m tldr_core bench "${MODEL[@]}" --json "$WORK/bench.json"
