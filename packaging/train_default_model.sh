#!/usr/bin/env bash
# Reproduce the shipped codec and default model from a fresh machine: real-speech corpus -> codec (Whisper tiny.en
# tokens) -> its voice memory -> its phone listener -> a listener that also hears the calibrated frames -> Whisper
# hearing them too -> codec export -> backbone with alignment hints -> (that backbone fed its own samples) -> TLDR
# adapters -> SSD draft -> the model packed -> the codec's decoder fine-tuned on that model's own tokens -> resources/.
# Every stage is resumable (rerun the script after an interruption); each prints its wall time, and the times go into
# the model's manifest. Sizes come from the environment; the defaults are what the 2-core CPU of the project's
# machine allows and what the shipped files were trained with (docs/EXPERIMENTS.md).
#
#   bash packaging/train_default_model.sh                    # CPU defaults (about 5 CPU-hours, 2 threads)
#   DEVICE=cuda NPROC=8 BACKBONE_STEPS=40000 TLDR_STEPS=8000 DIM=512 bash packaging/train_default_model.sh
#   CODEC_RATE=50 SELF_FEED_STEPS=1000 WORK=/tmp/r50 OUT=/tmp/r50/out bash packaging/train_default_model.sh  # 50/s
#   WORK=/tmp/try OUT=/tmp/try/out REAL_PER_SPEAKER=1 CODEC_STEPS=3 ... EVAL_LIMIT=0   # a trial; resources/ stays
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-runs/default}            # corpus, caches and checkpoints
OUT=${OUT:-resources}                 # where codec/ and default_model/ go (a trial run can point elsewhere)
SPEECH=${SPEECH:-../shared/speech}    # real read speech with its manifest.tsv (docs/CORPUS.md), split by speaker
REAL_PER_SPEAKER=${REAL_PER_SPEAKER:-}  # at most this many clips per speaker (empty: all of them)
SYNTH_HOURS=${SYNTH_HOURS:-0}         # synthetic voices added to the real speech (0: none, as shipped)
# the codec: the frozen Whisper tiny.en encoder quantised to FSQ codes at 25/s, a phone CTC head keeping the phones
CODEC_STEPS=${CODEC_STEPS:-1400}
CODEC_LEVELS=${CODEC_LEVELS:-"8 5 5 5"}        # FSQ levels: their product is the token vocabulary
CODEC_RATE=${CODEC_RATE:-25}                   # tokens per second (25 or 50)
CODEC_PHONE_WEIGHT=${CODEC_PHONE_WEIGHT:-1.0}  # weight of the phone (CTC) loss on the tokens
CODEC_PHONE_WARMUP=${CODEC_PHONE_WARMUP:-300}  # steps over which that weight rises from 0
# ... its decoder continued with attention over the reference voice (the tokens stay) ...
MEMORY_STEPS=${MEMORY_STEPS:-3000}; MEMORY_DIM=${MEMORY_DIM:-128}
# ... then with a frozen phone listener's loss on its frames, which keeps the phones apart
DECODER_STEPS=${DECODER_STEPS:-1500}; DECODER_LR=${DECODER_LR:-1e-3}
DECODER_LISTENER_WEIGHT=${DECODER_LISTENER_WEIGHT:-0.5}
DECODER_LISTENER_STEPS=${DECODER_LISTENER_STEPS:-1500}  # the listener's own training, on the originals
# ... then with that listener also hearing the frames as the voice calibration corrects them (k neighbours)
CALIBRATE_STEPS=${CALIBRATE_STEPS:-800}; CALIBRATE_LR=${CALIBRATE_LR:-5e-4}; CALIBRATE_K=${CALIBRATE_K:-16}
# ... then Whisper tiny.en's encoder hearing the decoded frames too, beside that listener (training/perceiver.py)
PERCEIVER_STEPS=${PERCEIVER_STEPS:-800}; PERCEIVER_WEIGHT=${PERCEIVER_WEIGHT:-2}
PERCEIVER_CLIPS=${PERCEIVER_CLIPS:-8}; PERCEIVER_FRAMES=${PERCEIVER_FRAMES:-800}  # it hears 8 s of 8 clips per batch
BACKBONE_STEPS=${BACKBONE_STEPS:-2000}
# ... then continued on its own samples (scheduled sampling), as inference feeds it: at 50/s 600 steps took 9 WER
# points off; at 25/s 1000 steps took none, so the shipped 25/s model has no such stage (0 steps: none)
SELF_FEED=${SELF_FEED:-0.9}; SELF_FEED_STEPS=${SELF_FEED_STEPS:-0}; SELF_FEED_LR=${SELF_FEED_LR:-5e-4}
TLDR_STEPS=${TLDR_STEPS:-1000}
PATCH_SIZES=${PATCH_SIZES:-"2 4 6 8"}
DRAFT_STEPS=${DRAFT_STEPS:-1200}      # SSD's draft model, distilled from the backbone (0: none)
DRAFT_DIM=${DRAFT_DIM:-128}; DRAFT_LAYERS=${DRAFT_LAYERS:-2}
# the codec's decoder then learns the speech model's own tokens: the model speaks OWN_SENTENCES training sentences
# (token level and k=4), the phone listener hears them through the voice calibration (0 steps: no such stage)
OWN_SENTENCES=${OWN_SENTENCES:-300}; OWN_STEPS=${OWN_STEPS:-300}; OWN_LR=${OWN_LR:-1e-4}; OWN_ANCHOR=${OWN_ANCHOR:-2}
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
mkdir -p "$WORK"
# each stage's wall time, "name<TAB>seconds" lines for the manifest, summed over reruns: an interrupted stage's
# runs add up (a finished stage, rerun, adds the seconds it takes to see there is nothing left to do)
TIMES=$WORK/stage_seconds.tsv; touch "$TIMES"
stage() {
  local name=$1; shift; local t0=$SECONDS; echo "== $name"; "$@"; local took=$((SECONDS - t0))
  echo "== $name took $took s"
  awk -F'\t' -v n="$name" -v t="$took" '$1 == n {t += $2; next} {print} END {printf "%s\t%s\n", n, t}' "$TIMES" \
    > "$TIMES.new"
  mv "$TIMES.new" "$TIMES"
}

DATA=$WORK/corpus
[ -f "$DATA/manifest.jsonl" ] || stage "corpus" $PY -m tldr_core corpus build "$DATA" --hours "$SYNTH_HOURS" --seed 0 \
  --real-speech "$SPEECH" ${REAL_PER_SPEAKER:+--real-per-speaker "$REAL_PER_SPEAKER"}

CODEC=$WORK/codec
stage "codec" $PY -m tldr_core train codec "$DATA" --out "$CODEC" --steps "$CODEC_STEPS" --batch 12 --threads "$THREADS" \
  --phone-warmup "$CODEC_PHONE_WARMUP" $([ -f "$CODEC/checkpoint.pt" ] && echo --resume || \
  echo --source whisper --levels $CODEC_LEVELS --tokens-per-second "$CODEC_RATE" --phone-weight "$CODEC_PHONE_WEIGHT")
# the decoder stages read the first stage's feature cache (WORLD frames and Whisper features of the same corpus)
stage "codec voice memory" $PY -m tldr_core train codec "$DATA" --out "$WORK/codec_memory" --decoder-only \
  "$CODEC/checkpoint.pt" --cache "$CODEC/cache" --steps "$MEMORY_STEPS" --batch 12 --threads "$THREADS" \
  $([ -f "$WORK/codec_memory/checkpoint.pt" ] && echo --resume || echo --memory-dim "$MEMORY_DIM")
stage "codec listener" $PY -m tldr_core train codec "$DATA" --out "$WORK/codec_decoder" --decoder-only \
  "$WORK/codec_memory/checkpoint.pt" --cache "$CODEC/cache" --steps "$DECODER_STEPS" --lr "$DECODER_LR" --batch 12 \
  --threads "$THREADS" \
  --listener-weight "$DECODER_LISTENER_WEIGHT" --listener-steps "$DECODER_LISTENER_STEPS" $(RESUME "$WORK/codec_decoder")
# the later stages listen with the same phone listener, already trained (it hears the originals only, so training
# it again would give the same file)
for later in codec_calibrated codec_perceiver; do
  mkdir -p "$WORK/$later"; [ -f "$WORK/$later/listener.pt" ] || cp "$WORK/codec_decoder/listener.pt" "$WORK/$later/"
done
stage "codec calibrated listener" $PY -m tldr_core train codec "$DATA" --out "$WORK/codec_calibrated" --decoder-only \
  "$WORK/codec_decoder/checkpoint.pt" --cache "$CODEC/cache" --steps "$CALIBRATE_STEPS" --lr "$CALIBRATE_LR" \
  --batch 12 --threads "$THREADS" --listener-weight "$DECODER_LISTENER_WEIGHT" --calibrate "$CALIBRATE_K" \
  --validate-every 400 $(RESUME "$WORK/codec_calibrated")
stage "codec whisper listener" $PY -m tldr_core train codec "$DATA" --out "$WORK/codec_perceiver" --decoder-only \
  "$WORK/codec_calibrated/checkpoint.pt" --cache "$CODEC/cache" --steps "$PERCEIVER_STEPS" --lr "$CALIBRATE_LR" \
  --batch 12 --threads "$THREADS" --listener-weight "$DECODER_LISTENER_WEIGHT" --calibrate "$CALIBRATE_K" \
  --perceiver-weight "$PERCEIVER_WEIGHT" --perceiver-clips "$PERCEIVER_CLIPS" --perceiver-frames "$PERCEIVER_FRAMES" \
  --validate-every 400 $(RESUME "$WORK/codec_perceiver")
cat > "$WORK/codec_recipe.json" <<JSON
{"script": "packaging/train_default_model.sh", "source": "whisper tiny.en encoder (frozen)",
 "codec_steps": $CODEC_STEPS, "codec_levels": [${CODEC_LEVELS// /, }], "codec_tokens_per_second": $CODEC_RATE,
 "codec_phone_weight": $CODEC_PHONE_WEIGHT, "codec_phone_warmup": $CODEC_PHONE_WARMUP, "memory_steps": $MEMORY_STEPS,
 "memory_dim": $MEMORY_DIM,
 "decoder_steps": $DECODER_STEPS, "decoder_lr": $DECODER_LR, "decoder_listener_weight": $DECODER_LISTENER_WEIGHT,
 "decoder_listener_steps": $DECODER_LISTENER_STEPS, "calibrate_steps": $CALIBRATE_STEPS,
 "calibrate_lr": $CALIBRATE_LR, "calibrate_neighbours": $CALIBRATE_K, "perceiver_steps": $PERCEIVER_STEPS,
 "perceiver_weight": $PERCEIVER_WEIGHT, "perceiver_clips": $PERCEIVER_CLIPS, "perceiver_frames": $PERCEIVER_FRAMES,
 "own_tokens_sentences": $OWN_SENTENCES, "own_tokens_steps": $OWN_STEPS, "own_tokens_lr": $OWN_LR,
 "own_tokens_anchor": $OWN_ANCHOR, "real_speech": "$SPEECH",
 "synthetic_hours": $SYNTH_HOURS,
 "corpus_seed": 0}
JSON
stage "codec export" $PY -m tldr_core codec export "$WORK/codec_perceiver/checkpoint.pt" "$OUT/codec" \
  --recipe "$WORK/codec_recipe.json"

# the backbone reads: the codec's phone head aligns every training utterance's tokens to its phones (alignment hints)
BACKBONE=$WORK/backbone
stage "backbone" $LAUNCH train backbone "$DATA" --codec "$OUT/codec" --aligner "$CODEC/checkpoint.pt" --out "$BACKBONE" \
  --steps "$BACKBONE_STEPS" --batch "$BATCH" --batches "$BACKBONE_BATCHES" --dim "$DIM" --layers "$LAYERS" \
  --heads "$HEADS" --ffn "$FFN" --threads "$THREADS" --device "$DEVICE" $(RESUME "$BACKBONE")
if [ "$SELF_FEED_STEPS" -gt 0 ]; then
  # a new run folder beside the first: it starts from its weights and reads its tokens and durations (copied)
  FED=$WORK/backbone_fed; mkdir -p "$FED"; [ -d "$FED/tokens" ] || cp -r "$BACKBONE/tokens" "$FED/"
  stage "backbone self-fed" $LAUNCH train backbone "$DATA" --codec "$OUT/codec" --out "$FED" --steps "$SELF_FEED_STEPS" \
    --lr "$SELF_FEED_LR" --self-feed "$SELF_FEED" --batch "$BATCH" --batches "$BACKBONE_BATCHES" --threads "$THREADS" --device "$DEVICE" \
    $([ -f "$FED/checkpoint.pt" ] && echo --resume || echo --init "$BACKBONE/checkpoint.pt")
  BACKBONE=$FED
fi
ADAPTERS=()
for K in $PATCH_SIZES; do
  stage "TLDR k=$K" $LAUNCH train tldr "$DATA" --codec "$OUT/codec" --backbone "$BACKBONE/checkpoint.pt" --patch-size "$K" \
    --out "$WORK/tldr$K" --steps "$TLDR_STEPS" --batch "$BATCH" --batches "$TLDR_BATCHES" --threads "$THREADS" \
    --device "$DEVICE" $(RESUME "$WORK/tldr$K")
  ADAPTERS+=("$K=$WORK/tldr$K/checkpoint.pt")
done
DRAFT=()
if [ "$DRAFT_STEPS" -gt 0 ]; then
  stage "draft" $LAUNCH train draft "$DATA" --codec "$OUT/codec" --backbone "$BACKBONE/checkpoint.pt" --out "$WORK/draft" \
    --steps "$DRAFT_STEPS" --batch "$BATCH" --dim "$DRAFT_DIM" --layers "$DRAFT_LAYERS" --threads "$THREADS" \
    --device "$DEVICE" $(RESUME "$WORK/draft")
  DRAFT=(--draft "$WORK/draft/checkpoint.pt")
fi
SECONDS_JSON=$(awk -F'\t' '{printf "%s\"%s\": %s", (NR > 1 ? ", " : ""), $1, $2}' "$TIMES")
cat > "$WORK/recipe.json" <<JSON
{"script": "packaging/train_default_model.sh", "real_speech": "$SPEECH", "real_per_speaker": "${REAL_PER_SPEAKER:-all}",
 "synthetic_hours": $SYNTH_HOURS, "corpus_seed": 0, "codec": "resources/codec (its manifest's recipe)",
 "aligner": "the codec's phone CTC head (stage codec)", "backbone_steps": $BACKBONE_STEPS,
 "self_feed": $SELF_FEED, "self_feed_steps": $SELF_FEED_STEPS, "self_feed_lr": $SELF_FEED_LR, "tldr_steps": $TLDR_STEPS,
 "patch_sizes": [${PATCH_SIZES// /, }], "dim": $DIM, "layers": $LAYERS, "heads": $HEADS, "ffn": $FFN, "batch": $BATCH,
 "backbone_batches": "$BACKBONE_BATCHES", "tldr_batches": "$TLDR_BATCHES", "draft_steps": $DRAFT_STEPS,
 "draft_dim": $DRAFT_DIM, "draft_layers": $DRAFT_LAYERS, "processes": $NPROC, "device": "$DEVICE", "threads": $THREADS,
 "stage_seconds": {$SECONDS_JSON}}
JSON
stage "pack" $PY -m tldr_core model pack --backbone "$BACKBONE/checkpoint.pt" --tldr "${ADAPTERS[@]}" "${DRAFT[@]}" \
  --recipe "$WORK/recipe.json" --out "$OUT/default_model"
if [ "$OWN_STEPS" -gt 0 ]; then
  # the tokenizer stays, so the packed model stays paired with the re-exported codec (its fingerprint)
  stage "codec on own tokens" $PY -m tldr_core train own-tokens "$DATA" --codec "$OUT/codec" \
    --model "$OUT/default_model" --listener "$WORK/codec_decoder/listener.pt" --out "$WORK/codec_own_tokens" \
    --sentences "$OWN_SENTENCES" --steps "$OWN_STEPS" --lr "$OWN_LR" --anchor "$OWN_ANCHOR" --threads "$THREADS" \
    $(RESUME "$WORK/codec_own_tokens")
  # the codec's recipe, with every stage's seconds so far (the codec's and the speech model's that spoke)
  $PY - "$WORK/codec_recipe.json" "$TIMES" > "$WORK/codec_own_tokens/recipe.json" <<'PY'
import json, sys
recipe = json.load(open(sys.argv[1]))
recipe["stage_seconds"] = {name: int(s) for name, s in (line.rstrip("\n").split("\t") for line in open(sys.argv[2]))}
print(json.dumps(recipe, indent=1))
PY
  stage "codec export (own tokens)" $PY -m tldr_core codec export "$WORK/codec_own_tokens/checkpoint.pt" "$OUT/codec" \
    --recipe "$WORK/codec_own_tokens/recipe.json"
fi
MODEL=(--model "$OUT/default_model" --codec "$OUT/codec")
[ "${EVAL_LIMIT:-100}" -gt 0 ] && stage "evaluate" $PY -m tldr_core evaluate "$DATA" --modes baseline 4 \
  --limit "${EVAL_LIMIT:-100}" "${MODEL[@]}" --json "$WORK/evaluate.json"
stage "bench" $PY -m tldr_core bench "${MODEL[@]}" --rounds "${BENCH_ROUNDS:-3}" --json "$WORK/bench.json"
