"""The `tldr-voice` command line (also `python -m tldr_core`).

Each command is a small function that imports what it needs only when it runs, so `--help` stays instant.
Expected failures (TldrError) print one clear line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
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

    clip = audio.load_voice_sample(args.clip)
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
    a, b = (encoder.embed(audio.load_voice_sample(p).samples) for p in (args.a, args.b))
    print(f"cosine similarity: {cosine(a, b):.4f}   (providers: {', '.join(encoder.providers)})")


def cmd_speaker_eval(args: argparse.Namespace) -> None:
    from tldr_core.evaluation.speaker_encoder import evaluate_speaker_encoder

    evaluate_speaker_encoder(args.corpus, split=args.split, per_speaker=args.per_speaker, seed=args.seed)


def cmd_speaker_export(args: argparse.Namespace) -> None:
    from tldr_core.speaker_export import export_speaker_encoder

    export_speaker_encoder(args.out)


def cmd_corpus_build(args: argparse.Namespace) -> None:
    from tldr_core.corpus.build import build_corpus

    build_corpus(args.out_dir, hours=args.hours, seed=args.seed, shippable_only=args.shippable_only,
                 jobs=args.jobs, engines=tuple(args.engines) if args.engines else None)


def cmd_train_codec(args: argparse.Namespace) -> None:
    from tldr_core.codec.train import TrainConfig, train_codec

    cfg = TrainConfig(steps=args.steps, batch=args.batch, seed=args.seed, threads=args.threads,
                      jobs=args.jobs, validate_every=args.validate_every)
    history = train_codec(args.corpus_dir, args.out, cfg, resume=args.resume)
    if history:
        print(f"step {history[-1]['step']}: validation loss {history[-1]['val_total']:.4f}; "
              f"checkpoint in {args.out}")


def cmd_codec_roundtrip(args: argparse.Namespace) -> None:
    from tldr_core import audio
    from tldr_core.codec.runtime import CodecRuntime

    codec = CodecRuntime(args.model)
    samples = audio.to_model_rate(*audio.read_audio(args.input))
    result = codec.roundtrip(samples, stream_tokens=args.stream)
    audio.write_wav(args.out, result.audio, audio.SAMPLE_RATE)
    seconds = len(samples) / audio.SAMPLE_RATE
    print(f"tokens: {len(result.tokens)} ({len(result.tokens) / seconds:.1f}/s, vocabulary {codec.vocab_size})")
    print(f"duration: {seconds:.2f} s")
    print(f"RTF: encode {result.encode_seconds / seconds:.4f}, decode+vocoder {result.decode_seconds / seconds:.4f}"
          f"{f' (streamed {args.stream} tokens at a time)' if args.stream else ''}")
    print(f"wrote {args.out}")


def cmd_codec_export(args: argparse.Namespace) -> None:
    from tldr_core.codec.export import export_codec

    meta = export_codec(args.checkpoint, args.out_dir)
    print(f"wrote tokenizer.onnx, decoder.onnx and codec.json to {args.out_dir} "
          f"(vocabulary {meta['vocab_size']}, look-ahead {meta['lookahead']} tokens)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tldr-voice", description="TLDR Voice: voice cloning text-to-speech.")
    commands = parser.add_subparsers(dest="command", required=True)

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

    corpus_cmds = commands.add_parser("corpus", help="training corpus").add_subparsers(dest="corpus_command",
                                                                                         required=True)
    p = corpus_cmds.add_parser("build", help="synthesise a reproducible multi-speaker corpus")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--hours", type=float, default=1.0, help="hours of audio to aim for")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shippable-only", action="store_true",
                   help="keep only voices whose licence allows shipping weights trained on them")
    p.add_argument("--jobs", type=int, default=0, help="parallel workers (0: one per core)")
    p.add_argument("--engines", nargs="+", metavar="ENGINE",
                   help="use only these engines (espeak-ng flite festival rhvoice pico kokoro); default: all installed")
    p.set_defaults(run=cmd_corpus_build)

    train_cmds = commands.add_parser("train", help="train models").add_subparsers(dest="train_command",
                                                                                  required=True)
    p = train_cmds.add_parser("codec", help="train the speech codec (tokenizer + decoder) on a corpus")
    p.add_argument("corpus_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for the feature cache and checkpoints")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--validate-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch threads and cache workers (keep <= idle cores)")
    p.add_argument("--jobs", type=int, default=2, help="processes analysing the corpus (feature cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.set_defaults(run=cmd_train_codec)

    codec_cmds = commands.add_parser("codec", help="speech codec tools").add_subparsers(dest="codec_command",
                                                                                       required=True)
    p = codec_cmds.add_parser("roundtrip", help="encode a clip to tokens and decode it back")
    p.add_argument("input", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, help="exported codec folder or training checkpoint .pt "
                   "(default: the shipped codec)")
    p.add_argument("--stream", type=int, default=0, metavar="K",
                   help="decode K tokens at a time through the streaming path (0: offline)")
    p.set_defaults(run=cmd_codec_roundtrip)
    p = codec_cmds.add_parser("export", help="export a codec checkpoint to ONNX for the app")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out_dir", type=Path)
    p.set_defaults(run=cmd_codec_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except TldrError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
