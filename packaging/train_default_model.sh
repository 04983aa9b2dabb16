#!/usr/bin/env bash
# Reproduce the shipped default model from a fresh machine: corpus -> codec -> backbone -> TLDR adapters -> SSD draft
# -> codec decoder -> resources/. Every stage is resumable (rerun the script after an interruption) and its wall time is printed.
# Sizes come from the environment; the defaults are what the 2-core CPU of the project's machine allows.
#
#   bash packaging/train_default_model.sh                    # CPU defaults
#   DEVICE=cuda NPROC=8 PHASES="20:40000:8000" DIM=512 bash packaging/train_default_model.sh
#   WORK=/tmp/try OUT=/tmp/try/out PHASES="0.03:3:2" ... EVAL_LIMIT=0   # a trial that leaves resources/ alone
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-runs/default}            # corpora, caches and checkpoints
OUT=${OUT:-resources}                 # where codec/ and default_model/ go (a trial run can point elsewhere)
# Training phases, HOURS:BACKBONE_STEPS:TLDR_STEPS each, on a corpus of that many hours (seed 0: the same speakers
# and held-out humans whatever the hours). The first starts from random weights with the alignment prior; each
# later one continues the previous one's backbone and adapters (--init: fresh optimiser, lr 5e-4), e.g. one phase
# per session on machines whose disk does not survive. The shipped model is one phase on this CPU (its adapters
# were trained longer in a later session: k=4 2000 steps, k = 2, 6, 8 1000; its manifest says how).
PHASES=${PHASES-"8:2600:2000"}
CODEC_STEPS=${CODEC_STEPS:-4000}      # the codec trains on the first phase's corpus
CODEC_LEVELS=${CODEC_LEVELS:-"8 5 5 5"}  # FSQ levels: their product is the token vocabulary
CODEC_PHONE_WEIGHT=${CODEC_PHONE_WEIGHT:-1.0}  # weight of the codec's phone (CTC) loss: how phonetic the tokens are
CODEC_PHONE_WARMUP=${CODEC_PHONE_WARMUP:-1000} # steps over which that weight rises from 0 (from the start it collapses)
DECODER_STEPS=${DECODER_STEPS:-2000}  # the codec's decoder trained further on the last phase's corpus (same tokens; 0: not)
DECODER_LR=${DECODER_LR:-1e-3}
DECODER_LISTENER_WEIGHT=${DECODER_LISTENER_WEIGHT:-0.5}  # ... with a phone listener's loss on its frames (docs/EXPERIMENTS.md)
DECODER_LISTENER_STEPS=${DECODER_LISTENER_STEPS:-2000}   # the listener's own training, on the originals
ALIGNMENT_PRIOR=${ALIGNMENT_PRIOR:-0.5}  # fraction of the first phase's backbone steps with the fading alignment prior
PATCH_SIZES=${PATCH_SIZES:-"2 4 6 8"}
DRAFT_STEPS=${DRAFT_STEPS:-2000}      # SSD's draft model, distilled from the last phase's backbone (0: none)
DRAFT_DIM=${DRAFT_DIM:-128}; DRAFT_LAYERS=${DRAFT_LAYERS:-2}
DIM=${DIM:-256}; LAYERS=${LAYERS:-12}; HEADS=${HEADS:-4}; FFN=${FFN:-768}
BATCH=${BATCH:-8}
# similar: utterances of similar length (faster steps); random: a random mix (slower steps that learn more each)
BACKBONE_BATCHES=${BACKBONE_BATCHES:-similar}; TLDR_BATCHES=${TLDR_BATCHES:-similar}
DEVICE=${DEVICE:-auto}
NPROC=${NPROC:-1}                     # processes for torchrun (GPUs, or CPU processes with gloo)
THREADS=${THREADS:-2}
PY=${PY:-python3}

if [ "$NPROC" -gt 1 ]; then LAUNCH="$PY -m torch.distributed.run --nproc_per_node $NPROC -m tldr_core";
else LAUNCH="$PY -m tldr_core"; fi
RESUME() { [ -f "$1/checkpoint.pt" ] && echo --resume || true; }
stage() { local name=$1; shift; local t0=$SECONDS; echo "== $name"; "$@"; echo "== $name took $((SECONDS - t0)) s"; }
# every installed voice is planned (so the held-out humans are those of docs/CORPUS.md); the stages below train on
# the rows whose licence lets the weights ship
corpus() { [ -f "$WORK/corpus_$1h/manifest.jsonl" ] || \
  stage "corpus ($1 h)" $PY -m tldr_core corpus build "$WORK/corpus_$1h" --hours "$1" --seed 0; }
mkdir -p "$WORK"
read -r -a PHASE_LIST <<< "$PHASES"
[ "${#PHASE_LIST[@]}" -gt 0 ] || { echo "PHASES is empty: give at least one HOURS:BACKBONE_STEPS:TLDR_STEPS" >&2; exit 2; }

FIRST_HOURS=${PHASE_LIST[0]%%:*}
corpus "$FIRST_HOURS"
stage "codec" $PY -m tldr_core train codec "$WORK/corpus_${FIRST_HOURS}h" --out "$WORK/codec" --steps "$CODEC_STEPS" --batch 12 \
  --threads "$THREADS" --phone-warmup "$CODEC_PHONE_WARMUP" \
  $([ -f "$WORK/codec/checkpoint.pt" ] && echo --resume || echo --levels $CODEC_LEVELS --phone-weight "$CODEC_PHONE_WEIGHT")
stage "codec export" $PY -m tldr_core codec export "$WORK/codec/checkpoint.pt" "$OUT/codec"

BACKBONE=""; declare -A ADAPTER=(); PHASES_JSON=""
for i in "${!PHASE_LIST[@]}"; do
  IFS=: read -r HOURS BACKBONE_STEPS TLDR_STEPS <<< "${PHASE_LIST[$i]}"
  P=$((i + 1)); RUN=$WORK/phase$P; DATA=$WORK/corpus_${HOURS}h
  corpus "$HOURS"
  if [ -z "$BACKBONE" ]; then START=(--alignment-prior "$ALIGNMENT_PRIOR" --dim "$DIM" --layers "$LAYERS" --heads "$HEADS" --ffn "$FFN")
  else START=(--init "$BACKBONE" --lr 5e-4); fi
  stage "backbone, phase $P" $LAUNCH train backbone "$DATA" --codec "$OUT/codec" --out "$RUN/backbone" --steps "$BACKBONE_STEPS" \
    --batch "$BATCH" --batches "$BACKBONE_BATCHES" "${START[@]}" --threads "$THREADS" --device "$DEVICE" $(RESUME "$RUN/backbone")
  BACKBONE=$RUN/backbone/checkpoint.pt
  for K in $PATCH_SIZES; do
    START=(); [ -n "${ADAPTER[$K]:-}" ] && START=(--init "${ADAPTER[$K]}")
    stage "TLDR k=$K, phase $P" $LAUNCH train tldr "$DATA" --codec "$OUT/codec" --backbone "$BACKBONE" --patch-size "$K" \
      --out "$RUN/tldr$K" --steps "$TLDR_STEPS" --batch "$BATCH" --batches "$TLDR_BATCHES" "${START[@]}" --threads "$THREADS" --device "$DEVICE" $(RESUME "$RUN/tldr$K")
    ADAPTER[$K]=$RUN/tldr$K/checkpoint.pt
  done
  PHASES_JSON+="${PHASES_JSON:+, }{\"hours\": $HOURS, \"backbone_steps\": $BACKBONE_STEPS, \"tldr_steps\": $TLDR_STEPS}"
done
# SSD's draft model learns the final backbone's distributions on the last phase's corpus (and its tokens)
DRAFT=()
if [ "$DRAFT_STEPS" -gt 0 ]; then
  stage "draft" $LAUNCH train draft "$DATA" --codec "$OUT/codec" --backbone "$BACKBONE" --out "$WORK/draft" \
    --steps "$DRAFT_STEPS" --batch "$BATCH" --dim "$DRAFT_DIM" --layers "$DRAFT_LAYERS" --threads "$THREADS" \
    --device "$DEVICE" $(RESUME "$WORK/draft")
  DRAFT=(--draft "$WORK/draft/checkpoint.pt")
fi
# the decoder learns further, with a phone listener's loss that keeps its phones apart; its tokenizer stays, and its
# re-export must carry the same fingerprint, since that is what pairs the model with its tokens
if [ "$DECODER_STEPS" -gt 0 ]; then
  stage "codec decoder" $PY -m tldr_core train codec "$DATA" --out "$WORK/codec_decoder" --decoder-only "$WORK/codec/checkpoint.pt" \
    --steps "$DECODER_STEPS" --lr "$DECODER_LR" --batch 12 --validate-every 500 --threads "$THREADS" \
    --listener-weight "$DECODER_LISTENER_WEIGHT" --listener-steps "$DECODER_LISTENER_STEPS" $(RESUME "$WORK/codec_decoder")
  stage "codec decoder export" $PY -m tldr_core codec export "$WORK/codec_decoder/checkpoint.pt" "$WORK/codec_decoder/onnx"
  $PY -c 'import sys; from tldr_core.codec.store import codec_fingerprint as f; sys.exit(f(sys.argv[1]) != f(sys.argv[2]))' \
    "$WORK/codec_decoder/onnx" "$OUT/codec" || \
    { echo "the decoder-only codec has another tokenizer fingerprint: the model's tokens would not match" >&2; exit 1; }
  cp "$WORK/codec_decoder/onnx/"{tokenizer.onnx,decoder.onnx,codec.json,manifest.json} "$OUT/codec/"
fi
cat > "$WORK/recipe.json" <<JSON
{"script": "packaging/train_default_model.sh", "phases": [$PHASES_JSON], "codec_steps": $CODEC_STEPS,
 "codec_decoder_steps": $DECODER_STEPS, "codec_decoder_lr": $DECODER_LR,
 "codec_decoder_listener_weight": $DECODER_LISTENER_WEIGHT, "codec_decoder_listener_steps": $DECODER_LISTENER_STEPS,
 "codec_phone_weight": $CODEC_PHONE_WEIGHT, "codec_phone_warmup": $CODEC_PHONE_WARMUP,
 "codec_levels": [${CODEC_LEVELS// /, }], "alignment_prior": $ALIGNMENT_PRIOR, "dim": $DIM, "layers": $LAYERS, "heads": $HEADS,
 "ffn": $FFN, "draft_steps": $DRAFT_STEPS, "draft_dim": $DRAFT_DIM, "draft_layers": $DRAFT_LAYERS, "batch": $BATCH, "backbone_batches": "$BACKBONE_BATCHES", "tldr_batches": "$TLDR_BATCHES", "processes": $NPROC, "device": "$DEVICE", "corpus_seed": 0}
JSON
ADAPTERS=(); for K in $PATCH_SIZES; do ADAPTERS+=("$K=${ADAPTER[$K]}"); done
stage "pack" $PY -m tldr_core model pack --backbone "$BACKBONE" --tldr "${ADAPTERS[@]}" "${DRAFT[@]}" \
  --recipe "$WORK/recipe.json" --out "$OUT/default_model"
MODEL=(--model "$OUT/default_model" --codec "$OUT/codec")
[ "${EVAL_LIMIT:-40}" -gt 0 ] && stage "evaluate" $PY -m tldr_core evaluate "$DATA" --modes baseline 4 --limit "${EVAL_LIMIT:-40}" "${MODEL[@]}" --json "$WORK/evaluate.json"
stage "bench" $PY -m tldr_core bench "${MODEL[@]}" --json "$WORK/bench.json"
