"""The `tldr-voice` command line (also `python -m tldr_core`).

Each command is a small function that imports what it needs only when it runs, so `--help` stays instant.
Expected failures (TldrError) print one clear line and exit with status 2, never a traceback; a check that misses
its target (`soak`) exits with status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

from tldr_core.errors import TldrError


def cmd_text(args: argparse.Namespace) -> None:
    from tldr_core import text

    for sentence in text.split_sentences(args.text):
        normalized = text.normalize_text(sentence)
        print(f"text:     {sentence}")
        print(f"words:    {normalized}")
        print(f"phonemes: {' '.join(text.phonemize(normalized))}")


def cmd_audio_check(args: argparse.Namespace) -> None:
    from tldr_core import audio

    clip = audio.load_reference_clip(args.clip)
    for notice in clip.notices:
        print(f"notice: {notice}")
    print(f"ok: {clip.speech_seconds:.2f} s of speech at {audio.SAMPLE_RATE} Hz, "
          f"{clip.loudness_lufs:.1f} LUFS before normalisation")
    if args.out:
        audio.write_wav(args.out, clip.samples, audio.SAMPLE_RATE)
        print(f"wrote {args.out}")


def cmd_speaker_compare(args: argparse.Namespace) -> None:
    from tldr_core import audio
    from tldr_core.speaker import SpeakerEncoder, cosine

    encoder = SpeakerEncoder(device=args.device)
    a, b = (encoder.embed(audio.load_reference_clip(p).samples) for p in (args.a, args.b))
    print(f"cosine similarity: {cosine(a, b):.4f}   (providers: {', '.join(encoder.providers)})")


def cmd_speaker_eval(args: argparse.Namespace) -> None:
    from tldr_core.evaluation.speaker_encoder import evaluate_speaker_encoder

    evaluate_speaker_encoder(args.corpus, split=args.split, per_speaker=args.per_speaker, seed=args.seed)


def cmd_speaker_export(args: argparse.Namespace) -> None:
    from tldr_core.training.speaker_export import export_speaker_encoder

    export_speaker_encoder(args.out)


def cmd_corpus_build(args: argparse.Namespace) -> None:
    from tldr_core.corpus.build import build_corpus

    build_corpus(args.out_dir, hours=args.hours, seed=args.seed, shippable_only=args.shippable_only,
                 jobs=args.jobs, engines=tuple(args.engines) if args.engines else None, real_speech=args.real_speech,
                 real_per_speaker=args.real_per_speaker)


def cmd_train_codec(args: argparse.Namespace) -> None:
    from tldr_core.codec.features import CONFIG as FEATURES
    from tldr_core.codec.model import CodecConfig
    from tldr_core.training.codec import TrainConfig, train_codec
    from tldr_core.errors import CorpusError

    new_codec = {"--levels": args.levels, "--phone-weight": args.phone_weight, "--source": args.source,
                 "--tokens-per-second": args.tokens_per_second}
    for option, value in new_codec.items():
        if value is not None and (args.resume or args.decoder_only):
            raise CorpusError(f"{option} sets up a new codec; a resumed or decoder-only run keeps its checkpoint's.")
    if args.levels and (min(args.levels) < 2 or math.prod(args.levels) > 8192):
        raise CorpusError(f"--levels {' '.join(map(str, args.levels))}: each level must be at least 2 and their "
                          f"product (the vocabulary) at most 8192.")
    cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                      jobs=args.jobs, validate_every=args.validate_every, phone_warmup=args.phone_warmup,
                      listener_weight=args.listener_weight, listener_steps=args.listener_steps,
                      calibrate=args.calibrate, perceiver_weight=args.perceiver_weight,
                      perceiver_clips=args.perceiver_clips, perceiver_frames=args.perceiver_frames,
                      shippable_only=not args.all_rows)
    codec_cfg = CodecConfig(source=args.source or "world")
    if args.levels:
        codec_cfg.levels = tuple(args.levels)
    if args.tokens_per_second:
        codec_cfg.frames_per_token = FEATURES.frames_per_second // args.tokens_per_second
    if args.phone_weight is not None:
        codec_cfg.ctc_weight = args.phone_weight
    if args.memory_dim is not None:
        if args.resume:
            raise CorpusError("--memory-dim changes the decoder; a resumed run keeps its checkpoint's.")
        codec_cfg.memory_dim = args.memory_dim
    history = train_codec(args.corpus_dir, args.out, cfg, resume=args.resume, codec_cfg=codec_cfg,
                          decoder_only_from=args.decoder_only, cache=args.cache)
    if history:
        print(f"step {history[-1]['step']}: validation reconstruction {history[-1]['val_recon']:.4f} (best.pt: the "
              f"lowest); checkpoint in {args.out}")


def cmd_train_own_tokens(args: argparse.Namespace) -> None:
    from tldr_core.training.own_tokens import OwnTokensConfig, train_own_tokens

    cfg = OwnTokensConfig(sentences=args.sentences, kinds=tuple(args.kinds), steps=args.steps, lr=args.lr,
                          anchor=args.anchor, listener_weight=args.listener_weight, calibrate=args.calibrate,
                          seed=args.seed, threads=args.threads, shippable_only=not args.all_rows)
    history = train_own_tokens(args.corpus_dir, args.codec, args.model, args.listener, args.out, cfg,
                               resume=args.resume)
    if history:
        last = history[-1]
        print(f"step {last['step']}: validation listener loss {last['val_listener']:.4f}, distance to the starting "
              f"decoder {last['val_anchor']:.4f}; export with `tldr-voice codec export "
              f"{Path(args.out) / 'checkpoint.pt'} OUT`")


def _lm_train_config(args: argparse.Namespace):
    from tldr_core.training.lm import TrainConfig

    return TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                       validate_every=args.validate_every, precision=args.precision, shippable_only=not args.all_rows,
                       batches=args.batches)


def _report(history: list[dict], out: Path) -> None:
    if history:
        last = history[-1]
        wrong = (f" (with another utterance's text {last['validation_wrong_text']:.4f})"
                 if "validation_wrong_text" in last else "")  # not in checkpoints from before it was measured
        print(f"step {last['step']}: validation loss {last['validation']:.4f}{wrong}; checkpoint in {out}")


def cmd_train_backbone(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from tldr_core.model import ModelConfig
    from tldr_core.training.lm import train_backbone

    model_cfg = ModelConfig(dim=args.dim, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, ffn=args.ffn,
                            alignment_hints=args.aligner is not None)
    cfg = replace(_lm_train_config(args), alignment_prior=args.alignment_prior, self_feed=args.self_feed)
    _report(train_backbone(args.corpus_dir, args.out, cfg, model_cfg, codec=args.codec, resume=args.resume,
                           jobs=args.jobs, device=args.device, init=args.init, aligner=args.aligner), args.out)


def cmd_train_tldr(args: argparse.Namespace) -> None:
    from tldr_core.model import TldrConfig
    from tldr_core.training.lm import train_tldr

    tldr_cfg = TldrConfig(patch_size=args.patch_size, lora_rank=args.lora_rank)
    _report(train_tldr(args.corpus_dir, args.backbone, args.out, _lm_train_config(args), tldr_cfg, codec=args.codec,
                       resume=args.resume, jobs=args.jobs, device=args.device, init=args.init, aligner=args.aligner),
            args.out)


def cmd_train_draft(args: argparse.Namespace) -> None:
    from tldr_core.model import ModelConfig
    from tldr_core.training.draft import train_draft

    size = ModelConfig(dim=args.dim, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, ffn=args.ffn)
    history = train_draft(args.corpus_dir, args.backbone, args.out, _lm_train_config(args), size, codec=args.codec,
                          resume=args.resume, jobs=args.jobs, device=args.device, init=args.init,
                          distill=args.distill, data=args.data, aligner=args.aligner)
    if history:
        last = history[-1]
        print(f"step {last['step']}: validation loss {last['validation']:.4f} (KL to the backbone "
              f"{last['validation_kl']:.4f}); a drafted token would be kept {last['validation_acceptance']:.1%} of "
              f"the time at temperature 1; checkpoint in {args.out}")


def cmd_train_aligner(args: argparse.Namespace) -> None:
    from tldr_core.training.lm import train_aligner

    history = train_aligner(args.corpus_dir, args.codec, args.out, _lm_train_config(args), resume=args.resume,
                            jobs=args.jobs, device=args.device)
    if history:
        last = history[-1]
        print(f"step {last['step']}: validation CTC loss {last['validation']:.4f} (with another utterance's text "
              f"{last['validation_wrong_text']:.4f}), phone error rate {last['validation_per']:.1f} %; align with "
              f"--aligner {Path(args.out) / 'checkpoint.pt'}")


def cmd_train_speed(args: argparse.Namespace) -> None:
    from tldr_core.model import ModelConfig
    from tldr_core.training.speed import measure_training_speed

    torch_threads(args.threads)
    model_cfg = ModelConfig(dim=args.dim, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, ffn=args.ffn)
    print(f"backbone d{args.dim} x {args.layers} layers, batch {args.batch}, {args.device}, {args.threads} threads, "
          f"{args.steps} timed steps per setting, taking turns")
    for result in measure_training_speed(args.corpus_dir, args.tokens, model_cfg, batch=args.batch, steps=args.steps,
                                         device=args.device):
        print(result.line())


def cmd_codec_roundtrip(args: argparse.Namespace) -> None:
    from tldr_core import audio
    from tldr_core.codec.runtime import CodecRuntime
    from tldr_core.codec.tuning import Tuning

    codec = CodecRuntime(args.model, calibration=args.calibration, tuning=Tuning(steps=args.tuning))
    samples = audio.to_model_rate(*audio.read_audio(args.input))
    voice = audio.to_model_rate(*audio.read_audio(args.voice)) if args.voice else None
    result = codec.roundtrip(samples, stream_tokens=args.stream, reference=voice)
    audio.write_wav(args.out, result.audio, audio.SAMPLE_RATE)
    seconds = len(samples) / audio.SAMPLE_RATE
    print(f"tokens: {len(result.tokens)} ({len(result.tokens) / seconds:.1f}/s, vocabulary {codec.vocab_size})")
    print(f"duration: {seconds:.2f} s")
    print(f"RTF: encode {result.encode_seconds / seconds:.4f}, decode+vocoder {result.decode_seconds / seconds:.4f}"
          f"{f' (streamed {args.stream} tokens at a time)' if args.stream else ''}")
    print(f"wrote {args.out}")


def cmd_codec_evaluate(args: argparse.Namespace) -> None:
    import json

    import numpy as np

    from tldr_core.codec.features import analyze
    from tldr_core.codec.runtime import CodecRuntime
    from tldr_core.codec.tuning import Tuning
    from tldr_core.codec.vocoder import synthesize
    from tldr_core.evaluation.codec_eval import evaluate_split
    from tldr_core.evaluation.judges import Judges
    from tldr_core.files import write_text

    codecs = {(str(path) if path else "shipped") + (f" calibration {k}" if len(args.calibration) > 1 else "")
              + (f" tuning {steps}" if len(args.tuning) > 1 else ""):
              CodecRuntime(path, calibration=k, tuning=Tuning(steps=steps))
              for path in args.model or [None] for k in args.calibration for steps in args.tuning}

    def roundtrip(codec: CodecRuntime):
        return lambda samples, reference: codec.roundtrip(samples, args.stream, reference).audio

    def copy_synthesis(samples: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return synthesize(analyze(samples), len(samples))

    roundtrips = {"copy synthesis (ceiling)": copy_synthesis, **{name: roundtrip(c) for name, c in codecs.items()}}
    reports = evaluate_split(args.corpus, roundtrips, split=args.split, limit=args.limit, voice=args.voice,
                             judges=Judges(asr=args.asr))
    for name, report in reports.items():
        print(f"codec {name}:\n  " + "\n  ".join(report.lines()))
    if args.json:
        write_text(args.json, json.dumps({name: asdict(r) for name, r in reports.items()}, indent=2) + "\n")
        print(f"wrote {args.json}")


def read_recipe(path: Path | None) -> dict:
    """The --recipe JSON file that a manifest records (how the weights were made, what they measured)."""
    import json

    if path is None:
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TldrError(f"Cannot read the recipe '{path}' ({error.strerror}).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TldrError(f"The recipe '{path}' is not valid JSON ({error}): fix it or leave --recipe out.") from None


def cmd_codec_export(args: argparse.Namespace) -> None:
    from tldr_core.training.codec_export import export_codec

    meta = export_codec(args.checkpoint, args.out_dir, read_recipe(args.recipe))
    print(f"the codec in {args.out_dir}: tokenizer.onnx, decoder.onnx, codec.json and manifest.json "
          f"(vocabulary {meta['vocab_size']}, look-ahead {meta['lookahead']} tokens)")


def _synthesizer(args: argparse.Namespace):
    from tldr_core.codec.tuning import Tuning
    from tldr_core.synthesis import Synthesizer

    torch_threads(args.threads)
    # speak and evaluate choose the tuning; bench and soak speak as the app does by default
    return Synthesizer(args.model, device=args.device, codec_dir=args.codec,
                       tuning=Tuning(steps=getattr(args, "tuning", Tuning().steps)))


def torch_threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def cmd_speak(args: argparse.Namespace) -> None:
    import numpy as np

    from tldr_core import audio
    from tldr_core.decoding import Sampling

    synth = _synthesizer(args)
    voice = synth.prepare_voice(audio.load_reference_clip(args.voice).samples)
    chunks = list(synth.stream(args.text, voice, args.mode, args.patch_size, Sampling(temperature=args.temperature),
                               seed=args.seed, speculation=_speculation(args, args.mode),
                               calibration=args.calibration))
    audio.write_wav(args.out, np.concatenate(chunks) if chunks else np.zeros(0, np.float32), audio.SAMPLE_RATE)
    s = synth.last_stats
    if s.speculation is not None:
        rule = ("exact acceptance" if s.speculation.acceptance == "exact"
                else f"the SSD paper's acceptance, tolerance {s.speculation.tolerance:g}")
        unit = (f"speculative (SSD), gamma {s.speculation.gamma}, {rule}" if s.patch_size == 1 else
                f"TLDR, patch size {s.patch_size}, verified speculatively: gamma {s.speculation.gamma} patches, {rule}")
    else:
        unit = "token-level baseline" if s.patch_size == 1 else f"TLDR, patch size {s.patch_size}"
    for notice in s.notices:
        print(f"notice: {notice}")
    print(f"mode: {unit} on {s.device}")
    print(f"audio: {s.audio_seconds:.2f} s in {s.sentences} sentence(s), {s.stopped_by_model} ended by the model")
    print(f"time to first audio: {s.first_audio_seconds * 1000:.0f} ms; real-time factor: {s.real_time_factor:.3f}")
    print(f"backbone steps: {s.backbone_steps} for {s.tokens} tokens")
    if s.speculation is not None:
        print(f"drafted tokens kept: {s.accepted} of {s.drafted} ({s.acceptance_rate:.1%}); "
              f"{s.tokens_per_step:.2f} tokens per backbone pass")
    print(f"KV cache: {s.kv_bytes / 1024:.0f} kB, of which speech {s.kv_speech_bytes / 1024:.0f} kB"
          + (" (the backbone's and the draft's)" if s.speculation is not None else ""))
    print(f"wrote {args.out}")


def _speculation(args: argparse.Namespace, mode: str, acceptance: str | None = None):
    """How a speculative mode speculates: SSD from --gamma and --tolerance, TLDR + SSD from --patch-gamma and
    --patch-tolerance; the acceptance rule from `acceptance`, else --acceptance; the mode's defaults for the rest."""
    from tldr_core.decoding import Speculation
    from tldr_core.synthesis import SSD, default_speculation

    default = default_speculation(mode)
    gamma, tolerance = (args.gamma, args.tolerance) if mode == SSD else (args.patch_gamma, args.patch_tolerance)
    return Speculation(gamma=gamma or default.gamma,
                       acceptance=acceptance or getattr(args, "acceptance", None) or default.acceptance,
                       tolerance=default.tolerance if tolerance is None else tolerance)


def cmd_bench(args: argparse.Namespace) -> None:
    from tldr_core.evaluation.bench import run_bench, table, write_json

    synth = _synthesizer(args)
    if not synth.has_draft and args.gammas:
        print("note: this model has no draft model, so the bench leaves SSD out")
    results = run_bench(synth, seed=args.seed, patch_sizes=args.patch_sizes, rounds=args.rounds, gammas=args.gammas,
                        tolerances=args.tolerances, patch_gammas=args.patch_gammas,
                        patch_tolerances=args.patch_tolerances)
    print(table(results))
    if args.json:
        write_json(results, synth, args.json)
        print(f"wrote {args.json}")


def cmd_soak(args: argparse.Namespace) -> int:
    from tldr_core.evaluation.soak import SoakConfig, run_soak

    synth = _synthesizer(args)
    config = SoakConfig(runs=args.runs, warmup=args.warmup, seed=args.seed,
                        max_memory_growth=args.max_memory_growth / 100)
    report = run_soak(synth, config, progress=lambda line: print(line, flush=True))
    print("\n".join(report.lines()))
    return 0 if report.passed else 1


def cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    from tldr_core.evaluation.judges import Judges
    from tldr_core.decoding import Sampling
    from tldr_core.evaluation.model_eval import evaluate_model
    from tldr_core.files import write_text

    synth = _synthesizer(args)
    synth.codec.neighbours = args.calibration
    named = {"baseline": ("baseline", 1), "ssd": ("ssd", 1, _speculation(args, "ssd", "exact")),
             "ssd-beta": ("ssd", 1, _speculation(args, "ssd", "ssd"))}
    for k in (2, 4, 6, 8):
        named[f"{k}+ssd"] = ("tldr-ssd", k, _speculation(args, "tldr-ssd", "exact"))
        named[f"{k}+ssd-beta"] = ("tldr-ssd", k, _speculation(args, "tldr-ssd", "ssd"))
    modes = [named.get(mode) or ("tldr", int(mode)) for mode in args.modes]
    reports = evaluate_model(synth, args.corpus, modes, split=args.split, limit=args.limit, seed=args.seed,
                             sampling=Sampling(temperature=args.temperature), judges=Judges(asr=args.asr))
    for report in reports:
        print("\n".join(report.lines()))
    if args.json:
        write_text(args.json, json.dumps([asdict(report) for report in reports], indent=2) + "\n")
        print(f"wrote {args.json}")


def cmd_compare(args: argparse.Namespace) -> None:
    from tldr_core.evaluation.model_eval import compare_runs, read_run

    print("\n".join(compare_runs(read_run(args.first), read_run(args.second))))


def cmd_model_pack(args: argparse.Namespace) -> None:
    from tldr_core.model_store import pack_model

    adapters = {}
    for item in args.tldr:
        k, _, path = item.partition("=")
        if not k.isdigit() or not path:
            raise TldrError(f"--tldr takes K=CHECKPOINT (for example 4=runs/tldr4/checkpoint.pt), not '{item}'.")
        adapters[int(k)] = Path(path)
    manifest = pack_model(args.backbone, adapters, args.out, read_recipe(args.recipe), draft_checkpoint=args.draft)
    total = sum(f["bytes"] for f in manifest["files"].values())
    print(f"wrote {len(manifest['files'])} files ({total / 2**20:.1f} MB) and manifest.json to {args.out}")


def all_rows_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all-rows", action="store_true",
                   help="also train on rows whose licence forbids shipping the weights")


def lm_options(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument("corpus_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for the token cache and checkpoints")
    p.add_argument("--codec", type=Path, help="codec folder or checkpoint (default: the shipped codec)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=8, help="utterances per process and step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--validate-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (keep <= idle cores)")
    p.add_argument("--jobs", type=int, default=2, help="processes tokenizing the corpus")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="auto: bfloat16 autocast on GPUs and on CPUs with native bfloat16 (AMX, AVX-512 BF16)")
    p.add_argument("--batches", choices=["similar", "random"], default="similar",
                   help="similar: utterances of similar length (less padding, faster steps); random: a random "
                        "mix (slower steps that learn more each)")
    p.add_argument("--seed", type=int, default=0)
    all_rows_option(p)
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--init", type=Path, metavar="WEIGHTS",
                   help="start from these weights (a checkpoint or a packed model file, e.g. the shipped "
                        "model's) instead of random ones; a new schedule of --steps follows")


def aligner_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aligner", type=Path, metavar="CODEC_CHECKPOINT",
                   help="for a backbone with hints whose run folder (and its durations) is not at hand: align the "
                        "utterances with this codec checkpoint (the codec's own, or `train aligner`'s)")


def size_options(p: argparse.ArgumentParser, title: str) -> None:
    sizes = p.add_argument_group(title)
    sizes.add_argument("--dim", type=int, default=256)
    sizes.add_argument("--layers", type=int, default=12)
    sizes.add_argument("--heads", type=int, default=4)
    sizes.add_argument("--kv-heads", type=int, default=2)
    sizes.add_argument("--ffn", type=int, default=768)


def model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="model folder (default: the shipped default model)")
    p.add_argument("--codec", type=Path, help="codec folder the model was trained with (default: the shipped one)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)


def speculation_options(p: argparse.ArgumentParser, acceptance: bool = True) -> None:
    # defaults: synthesis.default_speculation's (not imported here: --help stays instant)
    p.add_argument("--gamma", type=int, help="SSD: tokens the draft proposes per backbone pass (default 4)")
    p.add_argument("--patch-gamma", type=int, help="TLDR + SSD: patches the draft proposes per pass (default 2)")
    if acceptance:
        p.add_argument("--acceptance", choices=["exact", "ssd"],
                       help="exact speculative sampling (the backbone's own distribution) or the SSD paper's looser "
                            "rule (keeps a drafted token when r < min(1, p/q) + tolerance); default: exact for SSD, "
                            "the paper's for TLDR + SSD")
    p.add_argument("--tolerance", type=float, help="SSD: the tolerance (beta) of the paper's rule (default 0.1)")
    p.add_argument("--patch-tolerance", type=float, help="TLDR + SSD: the paper's tolerance (default 0.5)")


def temperature_option(p: argparse.ArgumentParser) -> None:
    from tldr_core.settings import TEMPERATURE

    p.add_argument("--temperature", type=float, default=TEMPERATURE,
                   help="sampling temperature (0: greedy; default %(default)s, the app's)")


def asr_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--asr", choices=["base", "tiny.en"], default="base",
                   help="the Whisper model that judges words (tiny.en: the judge of the figures before 2026-12-04)")


def voice_options(p: argparse.ArgumentParser, several: bool = False) -> None:
    """--calibration and --tuning: how the codec renders the voice sample's voice (the app's defaults)."""
    from tldr_core.codec.tuning import Tuning
    from tldr_core.settings import VOICE_MATCHES

    default, steps = VOICE_MATCHES[0], Tuning().steps
    each = "; several: each judged" if several else ""
    p.add_argument("--calibration", type=int, metavar="K", nargs="+" if several else None,
                   default=[default] if several else default,
                   help=f"voice match: correct each decoded frame by the decoder's errors on the K frames of the voice "
                        f"sample nearest to it (default {default}; 0: as decoded){each}")
    p.add_argument("--tuning", type=int, metavar="STEPS", nargs="+" if several else None,
                   default=[steps] if several else steps,
                   help=f"tune the codec's decoder to each voice sample for STEPS steps (default {steps}; 0: not at "
                        f"all; kept in the user cache){each}")


def add_speech_commands(commands: argparse._SubParsersAction) -> None:
    """speak, bench, soak, evaluate: the speech model at work."""
    p = commands.add_parser("speak", help="say TEXT in the voice of a reference clip, into a WAV file")
    p.add_argument("text")
    p.add_argument("--voice", type=Path, required=True, help="reference clip (any common audio format)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", choices=["tldr", "baseline", "ssd", "tldr-ssd"], default="tldr",
                   help="ssd: speculative decoding with the model's draft model (a model packed with --draft); "
                        "tldr-ssd: TLDR patches, the draft proposing whole patches")
    p.add_argument("--patch-size", type=int, choices=[2, 4, 6, 8], default=4)
    speculation_options(p)
    temperature_option(p)
    voice_options(p)
    model_options(p)
    p.set_defaults(run=cmd_speak)

    p = commands.add_parser("bench", help="baseline vs TLDR k=2,4,6,8: speed, steps, KV cache, memory")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--patch-sizes", type=int, nargs="+", choices=[2, 4, 6, 8])
    p.add_argument("--rounds", type=int, default=3, help="times each mode says every text in every voice")
    p.add_argument("--gammas", type=int, nargs="+", default=[2, 4], metavar="G",
                   help="SSD rows (a model with a draft): tokens drafted per backbone pass")
    p.add_argument("--tolerances", type=float, nargs="*", default=[0.1], metavar="BETA",
                   help="also SSD with the paper's acceptance rule at these tolerances, per gamma (none: leave out)")
    p.add_argument("--patch-gammas", type=int, nargs="*", default=[2], metavar="G",
                   help="TLDR k=4 + SSD rows (a model with a draft): patches drafted per backbone pass (none: leave "
                        "out)")
    p.add_argument("--patch-tolerances", type=float, nargs="*", default=[0.5], metavar="BETA",
                   help="TLDR k=4 + SSD also with the paper's rule at these tolerances, per patch gamma")
    model_options(p)
    p.set_defaults(run=cmd_bench)

    p = commands.add_parser("soak", help="many random Speak runs with Stops and odd input: memory growth, threads "
                                         "left running and failures; exit status 1 when a target is missed")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10, help="runs before memory and threads are first measured")
    p.add_argument("--max-memory-growth", type=float, default=5.0, metavar="PERCENT",
                   help="the target: resident memory at the end at most this much above after the warm-up")
    model_options(p)
    p.set_defaults(run=cmd_soak)

    p = commands.add_parser("evaluate", help="WER, speaker similarity and stopping on held-out voices of a corpus")
    p.add_argument("corpus", type=Path)
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--limit", type=int, default=40, help="utterances per mode")
    p.add_argument("--modes", nargs="+", default=["baseline", "4"],
                   choices=["baseline", "2", "4", "6", "8", "ssd", "ssd-beta",
                            *(f"{k}+ssd{rule}" for k in (2, 4, 6, 8) for rule in ("", "-beta"))],
                   help="baseline, TLDR patch sizes, ssd (speculative, exact), ssd-beta (speculative with the SSD "
                        "paper's acceptance rule at --tolerance), and TLDR + SSD at a patch size: 4+ssd (exact), "
                        "4+ssd-beta (the paper's rule at --patch-tolerance)")
    p.add_argument("--json", type=Path)
    speculation_options(p, acceptance=False)
    temperature_option(p)
    asr_option(p)
    voice_options(p)
    model_options(p)
    p.set_defaults(run=cmd_evaluate)
    p = commands.add_parser("compare", help="two `evaluate --json` runs on the same utterances (e.g. a new model "
                                            "against the shipped one): WER and similarity paired, mode by mode")
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.set_defaults(run=cmd_compare)


def add_tool_commands(commands: argparse._SubParsersAction) -> None:
    """text, audio, speaker: the front ends on their own."""
    p = commands.add_parser("text", help="show how text is normalised and turned into phonemes")
    p.add_argument("text")
    p.set_defaults(run=cmd_text)

    audio_cmds = commands.add_parser("audio", help="voice sample tools").add_subparsers(dest="audio_command",
                                                                                           required=True)
    p = audio_cmds.add_parser("check", help="load a clip as a voice sample and report problems")
    p.add_argument("clip", type=Path)
    p.add_argument("--out", type=Path, help="write the prepared (trimmed, normalised, 16 kHz) clip here")
    p.set_defaults(run=cmd_audio_check)

    speaker_cmds = commands.add_parser("speaker", help="speaker embedding tools").add_subparsers(
        dest="speaker_command", required=True)
    p = speaker_cmds.add_parser("compare", help="cosine similarity of the voices in two clips")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(run=cmd_speaker_compare)
    p = speaker_cmds.add_parser("eval", help="same- vs different-speaker similarity on a corpus split")
    p.add_argument("corpus", type=Path)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--per-speaker", type=int, default=4, help="utterances per speaker")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_speaker_eval)
    p = speaker_cmds.add_parser("export-onnx", help="export the speaker encoder to ONNX (needs the [export] extra)")
    p.add_argument("out", type=Path)
    p.set_defaults(run=cmd_speaker_export)


def add_corpus_commands(commands: argparse._SubParsersAction) -> None:
    """corpus build."""
    corpus_cmds = commands.add_parser("corpus", help="training corpus").add_subparsers(dest="corpus_command",
                                                                                         required=True)
    p = corpus_cmds.add_parser("build", help="synthesise a reproducible multi-speaker corpus")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--hours", type=float, default=1.0,
                   help="hours of synthetic audio to aim for (0 with --real-speech: real speech only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shippable-only", action="store_true",
                   help="keep only voices whose licence allows shipping weights trained on them")
    p.add_argument("--jobs", type=int, default=0, help="parallel workers (0: one per core)")
    p.add_argument("--engines", nargs="+", metavar="ENGINE",
                   help="use only these engines (espeak-ng flite festival rhvoice pico kokoro); default: all installed")
    p.add_argument("--real-speech", type=Path, metavar="DIR",
                   help="also add every utterance of DIR/manifest.tsv (read in place, split by speaker), "
                        "e.g. ../shared/speech")
    p.add_argument("--real-per-speaker", type=int, metavar="N",
                   help="only each real speaker's first N utterances (the split is made from all of them)")
    p.set_defaults(run=cmd_corpus_build)


def add_train_commands(commands: argparse._SubParsersAction) -> None:
    """train codec | own-tokens | backbone | tldr | draft | aligner | speed."""
    train_cmds = commands.add_parser("train", help="train models").add_subparsers(dest="train_command",
                                                                                  required=True)
    p = train_cmds.add_parser("codec", help="train the speech codec (tokenizer + decoder) on a corpus")
    p.add_argument("corpus_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for the checkpoints (and the feature cache)")
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help="the corpus's feature cache (default OUT/cache): runs on the same corpus can share one")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=12, help="whole clips per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warm-up, then cosine decay)")
    p.add_argument("--validate-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch threads and cache workers (keep <= idle cores)")
    all_rows_option(p)
    p.add_argument("--jobs", type=int, default=2, help="processes analysing the corpus (feature cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--decoder-only", type=Path, metavar="CODEC",
                   help="train only the decoder of this codec (checkpoint or exported folder, e.g. resources/codec); "
                        "its tokenizer (and so the tokens a speech model was trained on) stays as it is")
    p.add_argument("--levels", type=int, nargs="+", metavar="L",
                   help="FSQ levels of a new codec's token values; their product is the vocabulary "
                        "(default 8 5 5 5 = 1000 codes)")
    p.add_argument("--source", choices=["world", "whisper"],
                   help="what a new codec's tokenizer reads: the vocoder frames (world, the default) or the frozen "
                        "Whisper tiny.en encoder's output (whisper)")
    p.add_argument("--tokens-per-second", type=int, choices=[25, 50],
                   help="a new codec's token rate (default 25; 50 keeps more of the words, docs/EXPERIMENTS.md)")
    p.add_argument("--phone-weight", type=float, metavar="W",
                   help="weight of a new codec's phone (CTC) loss beside reconstruction (default 0.3)")
    p.add_argument("--phone-warmup", type=int, default=0, metavar="STEPS",
                   help="raise the phone loss weight from 0 over the first STEPS steps, so the codes form first")
    p.add_argument("--listener-weight", type=float, default=0.0, metavar="W",
                   help="add a phone listener's CTC loss on the decoded frames, so the decoder keeps phones apart "
                        "(trained first into OUT/listener.pt from the originals; default 0: none)")
    p.add_argument("--listener-steps", type=int, default=2000, metavar="STEPS", help="the listener's own training")
    p.add_argument("--calibrate", type=int, default=0, metavar="K",
                   help="with --listener-weight and a voice memory: the listener also hears the decoded frames as the "
                        "voice calibration corrects them with K neighbours, so the decoder learns to keep the words "
                        "through it (0: off)")
    p.add_argument("--perceiver-weight", type=float, default=0.0, metavar="W",
                   help="add how differently Whisper tiny.en's encoder hears the decoded frames and the originals "
                        "(rendered to its log-mel in closed form), so the decoder keeps what recognition needs "
                        "(default 0: none)")
    p.add_argument("--perceiver-clips", type=int, default=4, metavar="N",
                   help="clips of each batch Whisper hears (default %(default)s)")
    p.add_argument("--perceiver-frames", type=int, default=400, metavar="FRAMES",
                   help="the middle frames of each it hears, 100 per second (default %(default)s)")
    p.add_argument("--memory-dim", type=int, metavar="D",
                   help="give the decoder a voice memory of width D that attends over the reference clip (trained "
                        "in another clip's voice); with --decoder-only it is added to that codec's decoder")
    p.set_defaults(run=cmd_train_codec)

    p = train_cmds.add_parser("own-tokens", help="fine-tune the codec's decoder on the speech model's own tokens "
                                                 "(the model speaks the training sentences; a phone listener hears "
                                                 "them through the voice calibration)")
    p.add_argument("corpus_dir", type=Path)
    p.add_argument("--codec", type=Path, required=True,
                   help="the exported codec the model speaks (e.g. resources/codec)")
    p.add_argument("--model", type=Path, required=True,
                   help="the model folder that speaks (e.g. resources/default_model)")
    p.add_argument("--listener", type=Path, required=True,
                   help="the frozen phone listener of the codec's training (its listener.pt)")
    p.add_argument("--out", type=Path, required=True, help="folder for the spoken sentences and the checkpoint")
    p.add_argument("--sentences", type=int, default=300, help="training sentences the model speaks (a few seconds "
                                                              "each on a CPU; kept in OUT/spoken)")
    p.add_argument("--kinds", type=int, nargs="+", default=[1, 4], metavar="K",
                   help="how each sentence is said: 1 the model token by token, 2-8 TLDR patches of that size, 0 the "
                        "recording's own tokens (default 1 4)")
    p.add_argument("--steps", type=int, default=300, help="one spoken sentence per step")
    p.add_argument("--lr", type=float, default=1e-4, help="constant learning rate")
    p.add_argument("--anchor", type=float, default=2.0,
                   help="weight of the L1 distance to the starting decoder's frames (there is no recording)")
    p.add_argument("--listener-weight", type=float, default=0.5)
    p.add_argument("--calibrate", type=int, default=32, metavar="K", help="neighbours of the voice calibration "
                                                                         "the listener hears through")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    all_rows_option(p)
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.set_defaults(run=cmd_train_own_tokens)

    p = train_cmds.add_parser("backbone", help="train the token-level backbone (torchrun for several GPUs)")
    lm_options(p, steps=4000)
    size_options(p, "size of a new backbone (with --init or --resume the file's sizes are kept)")
    p.add_argument("--alignment-prior", type=float, default=0.0, metavar="FRACTION",
                   help="guide one attention head per layer along the text for this fraction of the steps, fading "
                        "(0: off)")
    p.add_argument("--self-feed", type=float, default=0.0, metavar="SHARE",
                   help="replace this share of the input tokens by the backbone's own samples, as inference feeds "
                        "it (0: off, pure teacher forcing)")
    p.add_argument("--aligner", type=Path, metavar="CODEC_CHECKPOINT",
                   help="a new backbone with alignment hints: every speech token is told the phoneme it says, from "
                        "this codec checkpoint's phone alignment (the codec of --codec), and the backbone learns "
                        "to predict the durations")
    p.set_defaults(run=cmd_train_backbone)
    p = train_cmds.add_parser("tldr", help="train one patch size's compressor, LoRA and extractor on a frozen backbone")
    lm_options(p, steps=2000)
    p.add_argument("--backbone", type=Path, required=True, help="backbone checkpoint or weights file")
    p.add_argument("--patch-size", type=int, choices=[2, 4, 6, 8], default=4)
    p.add_argument("--lora-rank", type=int, default=16,
                   help="rank of a new adapter's LoRA (with --init or --resume the file's rank is kept)")
    aligner_option(p)
    p.set_defaults(run=cmd_train_tldr)
    p = train_cmds.add_parser("draft", help="train SSD's small draft model by distillation from a frozen backbone")
    lm_options(p, steps=2000)
    p.add_argument("--backbone", type=Path, required=True, help="backbone checkpoint or weights file")
    p.add_argument("--distill", type=float, default=1.0, help="weight of the KL from the backbone's distribution")
    p.add_argument("--data", type=float, default=0.0, help="weight of the cross-entropy on the data's tokens")
    aligner_option(p)
    sizes = p.add_argument_group("size of a new draft (with --init or --resume the file's sizes are kept)")
    sizes.add_argument("--dim", type=int, default=128)
    sizes.add_argument("--layers", type=int, default=2)
    sizes.add_argument("--heads", type=int, default=2)
    sizes.add_argument("--kv-heads", type=int, default=1)
    sizes.add_argument("--ffn", type=int, default=384)
    p.set_defaults(run=cmd_train_draft)
    p = train_cmds.add_parser("aligner", help="train the phone head of an exported codec on its frozen tokens, to "
                                              "align utterances for a backbone with hints when the codec's own "
                                              "training checkpoint is gone")
    lm_options(p, steps=1500)
    p.set_defaults(run=cmd_train_aligner)
    p = train_cmds.add_parser("speed", help="seconds per backbone training step: float32 vs bfloat16, random vs "
                                            "similar-length batches, measured in one run")
    p.add_argument("corpus_dir", type=Path)
    p.add_argument("--tokens", type=Path, required=True, help="the tokens folder of a training run on this corpus")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed steps per setting (after 2 untimed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    size_options(p, "backbone size")
    p.set_defaults(run=cmd_train_speed)


def add_codec_commands(commands: argparse._SubParsersAction) -> None:
    """codec roundtrip | evaluate | export."""
    codec_cmds = commands.add_parser("codec", help="speech codec tools").add_subparsers(dest="codec_command",
                                                                                       required=True)
    p = codec_cmds.add_parser("roundtrip", help="encode a clip to tokens and decode it back")
    p.add_argument("input", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, help="exported codec folder or training checkpoint .pt "
                   "(default: the shipped codec)")
    p.add_argument("--stream", type=int, default=0, metavar="K",
                   help="decode K tokens at a time through the streaming path (0: offline)")
    p.add_argument("--voice", type=Path, metavar="CLIP", help="decode in the voice of this clip, as the app speaks "
                   "in a voice sample's (default: the input's own; the calibration then measures the input itself)")
    voice_options(p)
    p.set_defaults(run=cmd_codec_roundtrip)
    p = codec_cmds.add_parser("evaluate", help="round-trip WER, speaker similarity and DNSMOS on held-out voices")
    p.add_argument("corpus", type=Path)
    p.add_argument("--model", type=Path, nargs="+", help="exported codec folders or training checkpoints .pt, "
                   "judged in one run on the same clips (default: the shipped codec)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="at most this many clips, spread over the speakers")
    p.add_argument("--stream", type=int, default=4, metavar="K", help="decode K tokens at a time (0: offline)")
    p.add_argument("--voice", choices=["other", "own"], default="other",
                   help="decode each clip in the voice of another clip of its speaker (as the app does) or its own")
    asr_option(p)
    voice_options(p, several=True)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(run=cmd_codec_evaluate)
    p = codec_cmds.add_parser("export", help="export a codec checkpoint to ONNX for the app")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--recipe", type=Path, help="JSON file describing how the codec was made (goes in the manifest)")
    p.set_defaults(run=cmd_codec_export)


def add_model_commands(commands: argparse._SubParsersAction) -> None:
    """model pack."""
    model_cmds = commands.add_parser("model", help="model folders").add_subparsers(dest="model_command",
                                                                                 required=True)
    p = model_cmds.add_parser("pack", help="pack training checkpoints into a model folder the app loads")
    p.add_argument("--backbone", type=Path, required=True, help="backbone checkpoint")
    p.add_argument("--tldr", nargs="+", default=[], metavar="K=CHECKPOINT", help="TLDR checkpoints by patch size")
    p.add_argument("--draft", type=Path, metavar="CHECKPOINT", help="SSD's draft model (`train draft`), if any")
    p.add_argument("--recipe", type=Path, help="JSON file describing how the model was made (goes in the manifest)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=cmd_model_pack)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tldr-voice", description="TLDR Voice: voice cloning text-to-speech.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_speech_commands, add_tool_commands, add_corpus_commands, add_train_commands, add_codec_commands,
                add_model_commands):
        add(commands)
    return parser


def quiet_other_packages() -> None:
    """stderr is where the CLI says what went wrong: a library's notice printed there (pkg_resources' deprecation
    on importing webrtcvad, torch's on exporting ONNX) reads as our failure, or hides it. Warnings raised by
    tldr_core itself still show."""
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"tldr_core(\.|$)")


def main(argv: list[str] | None = None) -> int:
    quiet_other_packages()
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args) or 0
    except TldrError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status
