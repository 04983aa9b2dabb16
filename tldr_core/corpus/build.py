"""`tldr-voice corpus build`: plan, synthesise in parallel, and describe a multi-speaker corpus.

Output folder:
  plan.json          the settings and the plan hash: a rerun resumes only the same plan
  audio/<speaker>/<utterance>.wav   16 kHz mono PCM_16, ~0.1 s of silence at both ends, -23 LUFS
  manifest.jsonl     one utterance per line, sorted by id: text, normalised text, phonemes, who, licence
  speakers.json      every pseudo-speaker with its source voice, human, split and warp parameters
  corpus.json        settings, counts per split, hours, licences, failures
  build_stats.json   timings: the one file that differs between two builds with the same seed

With --real-speech DIR, every usable utterance of DIR/manifest.tsv joins manifest.jsonl as a row whose path is
the absolute path of the file in DIR (read in place, never copied), split by speaker (real.py); --hours 0 then
builds a real-speech-only corpus without synthesising anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from tldr_core.audio import SAMPLE_RATE
from tldr_core.corpus.plan import PLAN_FORMAT, SPLITS, Plan, Utterance, check_hours, make_plan
from tldr_core.corpus.real import (RealSpeech, describe_real, read_real_speech, real_rows, real_speakers,
                                   report_lines)
from tldr_core.corpus.render import Rendered, cpu_seconds, render, wav_path
from tldr_core.corpus.engines import available_voices
from tldr_core.errors import CorpusError
from tldr_core.files import write_text


def build_corpus(out_dir: Path, hours: float = 1.0, seed: int = 0, shippable_only: bool = False, jobs: int = 0,
                 engines: tuple[str, ...] | None = None, real_speech: Path | None = None,
                 real_per_speaker: int | None = None) -> dict:
    """Build (or resume) the corpus in out_dir; returns corpus.json's content plus "stats".

    jobs 0 means one worker per core; engines restricts the build to some engines (all installed if None);
    real_speech adds every utterance of that folder's manifest.tsv, read in place (hours 0: only those), or
    each speaker's first real_per_speaker utterances.
    """
    wall_start, cpu_start = time.perf_counter(), cpu_seconds()
    if jobs < 0:
        raise CorpusError(f"--jobs must be 0 (one per core) or a number of workers, not {jobs}.")
    out_dir = Path(out_dir)
    if real_per_speaker is not None and real_speech is None:
        raise CorpusError("--real-per-speaker limits --real-speech: give the real-speech folder too.")
    real = read_real_speech(real_speech, seed, shippable_only, real_per_speaker) if real_speech is not None else None
    if real is not None and hours == 0:  # real speech only: no engine is needed, nothing is synthesised
        plan, notices = Plan(seed, 0.0, shippable_only, (), (), ()), []
    else:
        check_hours(hours)  # before looking for engines
        voices, notices = available_voices(engines)
        plan = make_plan(seed, hours, shippable_only, voices)
        notices += _split_notices(plan)
    if real is not None:
        notices += list(real.notices)
        if not real.utterances:
            raise CorpusError(f"No utterance of {real.folder / 'manifest.tsv'} can be used"
                              f"{_reasons(real.dropped)}.")
        names = {u.id for u in plan.utterances} | {s.id for s in plan.speakers} | {v.source_human for v in plan.voices}
        clash = sorted(({u.id for u in real.utterances} | {u.speaker for u in real.utterances}) & names)
        if clash:
            raise CorpusError(f"Real utterance or speaker ids {', '.join(clash[:5])} are also synthetic ones; rename "
                              f"them in {real.folder / 'manifest.tsv'}.")
    for notice in notices:
        print(f"notice: {notice}", file=sys.stderr)
    _claim(out_dir, plan, real)
    for leftover in out_dir.glob("audio/*/.*.wav"):  # temp files of a run that was killed mid-write
        leftover.unlink()

    jobs = jobs or os.cpu_count() or 1
    results = _render_all(plan, out_dir, jobs)
    done = {r.id: r for r in results if r.error is None}
    failed = sorted((r.id, r.error) for r in results if r.error is not None)
    rows = [_manifest_row(u, done[u.id]) for u in plan.utterances if u.id in done]
    speakers = _speakers(plan, rows)

    real_summary, real_seconds = None, 0.0
    if real is not None:
        start = time.perf_counter()
        real_part, skipped = real_rows(real, jobs)
        real_seconds = time.perf_counter() - start
        if not real_part:
            raise CorpusError(f"No transcript of {real.folder / 'manifest.tsv'} could be phonemised"
                              f"{_reasons(skipped)}.")
        real_summary = describe_real(real, real_part, skipped, SPLITS)
        for line in report_lines(real_summary):
            print(line)
        if skipped:
            print(f"warning: {len(skipped)} real utterances were skipped: their transcript cannot be phonemised "
                  f"(listed in corpus.json){_reasons(skipped)}", file=sys.stderr)
        rows = sorted(rows + real_part, key=lambda r: r["id"])
        speakers += real_speakers(real_part)

    write_text(out_dir / "manifest.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _write_json(out_dir / "speakers.json", speakers)
    corpus = _describe(plan, real, rows, notices, failed)
    if real_summary is not None:
        corpus["real_speech"] = real_summary
    _write_json(out_dir / "corpus.json", corpus)

    cpu = cpu_seconds() - cpu_start
    stats = _stats(plan, results, [r for r in rows if not r["real"]], jobs, time.perf_counter() - wall_start, cpu)
    if real is not None:
        stats["real_utterances"] = len(real_part)
        stats["real_phonemize_seconds"] = round(real_seconds, 1)
    _write_json(out_dir / "build_stats.json", stats)
    total = corpus["totals"]
    print(f"corpus: {total['utterances']} utterances, {total['hours']:.3f} h, {total['speakers']} speakers, "
          f"{total['source_voices']} source voices, {total['source_humans']} source humans in {out_dir} "
          f"({stats['synthesized']} synthesised, {stats['resumed']} already there"
          f"{f', {len(real_part)} real' if real is not None else ''}, "
          f"{stats['wall_seconds']:.0f} s wall, {cpu:.0f} CPU-s)")
    if failed:
        print(f"warning: {len(failed)} utterances failed twice and are not in the manifest (listed in "
              f"corpus.json); rerun the same command to retry them.", file=sys.stderr)
    return {**corpus, "stats": stats}


def _reasons(dropped, shown: int = 3) -> str:
    """': <the first few (id, reason)>' for an error or warning."""
    return (": " + "; ".join(f"{i}: {why}" for i, why in list(dropped)[:shown])
            + (f"; and {len(dropped) - shown} more" if len(dropped) > shown else "")) if dropped else ""


def plan_hash(plan: Plan, real: RealSpeech | None) -> str:
    """The synthetic plan's hash, combined with the real speech's when there is some."""
    if real is None:
        return plan.hash()
    return hashlib.sha256(f"{plan.hash()} {real.hash()}".encode()).hexdigest()


def _settings(plan: Plan, real: RealSpeech | None) -> dict:
    return {**plan.settings(), **(real.settings() if real is not None else {})}


def _split_notices(plan: Plan) -> list[str]:
    """Say when a split lacks a family, which happens when fewer than 3 humans of it are installed."""
    families = {s.voice.family for s in plan.speakers}
    present = {(s.split, s.voice.family) for s in plan.speakers}
    return [f"the {split} split has no {family} voices: fewer than 3 {family} source humans are available"
            for split in SPLITS for family in sorted(families) if (split, family) not in present]


def _claim(out_dir: Path, plan: Plan, real: RealSpeech | None) -> None:
    """Mark out_dir as this plan's, or refuse it when it holds something else."""
    marker = out_dir / "plan.json"
    record = {"plan_hash": plan_hash(plan, real), **_settings(plan, real)}
    if marker.exists():
        try:
            old = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CorpusError(f"{marker} is unreadable ({e}); delete {out_dir} to start over.") from e
        if old.get("plan_hash") != record["plan_hash"]:
            raise CorpusError(
                f"{out_dir} holds a corpus planned with other settings (seed {old.get('seed')}, "
                f"{old.get('hours')} h, shippable_only {old.get('shippable_only')}, {len(old.get('voices', []))} "
                f"voices, real speech {old.get('real_speech')}) than this run (seed {plan.seed}, {plan.hours} h, "
                f"shippable_only {plan.shippable_only}, {len(plan.voices)} voices, real speech "
                f"{real.folder if real is not None else None}); resume with the same settings, or use a new folder.")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise CorpusError(f"{out_dir} is not empty and holds no corpus; choose a new or empty folder.")
    else:
        _write_json(marker, record)


def _render_all(plan: Plan, out_dir: Path, jobs: int) -> list[Rendered]:
    """Every utterance, existing files skipped; in this process when jobs is 1, else in spawned workers."""
    # Slow Kokoro utterances first, so the workers do not end waiting on one long tail.
    tasks = sorted(plan.utterances, key=lambda u: (u.speaker.voice.engine != "kokoro", u.id))
    if not tasks:  # a real-speech-only corpus
        return []
    work = partial(render, out_dir)
    results = []
    with tqdm(total=len(tasks), unit="utt", desc="corpus", file=sys.stderr) as bar:
        def collect(stream) -> None:
            for result in stream:
                if result.error:
                    bar.write(f"failed twice: {result.id}: {result.error}", file=sys.stderr)
                results.append(result)
                bar.update()

        if jobs == 1:
            collect(map(work, tasks))
        else:
            pool = get_context("spawn").Pool(min(jobs, len(tasks)))
            try:
                collect(pool.imap_unordered(work, tasks))
                pool.close()
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()  # also lets getrusage count the workers' CPU time
    return results


def _manifest_row(utterance: Utterance, result: Rendered) -> dict:
    speaker, voice = utterance.speaker, utterance.speaker.voice
    return {
        "id": utterance.id,
        "path": wav_path(Path(), utterance).as_posix(),
        "speaker": speaker.id,
        "source_voice": voice.id,
        "source_human": voice.source_human,
        "engine": voice.engine,
        "split": speaker.split,
        "text": utterance.text,
        "normalized_text": utterance.normalized_text,
        "phonemes": result.phonemes,
        "duration": result.duration,
        "licence": voice.licence,
        "shippable": voice.shippable,
        "real": False,
    }


def _speakers(plan: Plan, rows: list[dict]) -> list[dict]:
    count, seconds = Counter(), defaultdict(float)
    for row in rows:
        count[row["speaker"]] += 1
        seconds[row["speaker"]] += row["duration"]
    return [{
        "id": s.id,
        "split": s.split,
        "source_voice": s.voice.id,
        "source_human": s.voice.source_human,
        "engine": s.voice.engine,
        "engine_voice": s.voice.engine_voice,
        "family": s.voice.family,
        "licence": s.voice.licence,
        "shippable": s.voice.shippable,
        "f0_scale": s.f0_scale,
        "envelope_scale": s.envelope_scale,
        "kokoro_mix": dict(s.mix) or None,
        "utterances": count[s.id],
        "hours": round(seconds[s.id] / 3600, 5),
    } for s in plan.speakers]


def _summary(rows: list[dict]) -> dict:
    return {
        "utterances": len(rows),
        "hours": round(sum(r["duration"] for r in rows) / 3600, 4),
        "speakers": len({r["speaker"] for r in rows}),
        "source_voices": len({r["source_voice"] for r in rows}),
        "source_humans": len({r["source_human"] for r in rows}),
    }


def _describe(plan: Plan, real: RealSpeech | None, rows: list[dict], notices: list[str],
              failed: list[tuple[str, str]]) -> dict:
    splits = {}
    for split in SPLITS:
        mine = [r for r in rows if r["split"] == split]
        splits[split] = {**_summary(mine), "source_human_ids": sorted({r["source_human"] for r in mine}),
                         "engines": dict(sorted(Counter(r["engine"] for r in mine).items()))}
    return {
        "settings": {"format": PLAN_FORMAT, "plan_hash": plan_hash(plan, real), "sample_rate": SAMPLE_RATE,
                     **_settings(plan, real)},
        "notices": notices,
        "totals": _summary(rows),
        "splits": splits,
        "licences": [{"voice": v.id, "engine": v.engine, "engine_voice": v.engine_voice,
                      "source_human": v.source_human, "family": v.family, "licence": v.licence,
                      "shippable": v.shippable, "source": v.source} for v in plan.voices],
        "failed": [{"id": i, "error": e} for i, e in failed],
    }


def _stats(plan: Plan, results: list[Rendered], rows: list[dict], jobs: int, wall: float, cpu: float) -> dict:
    cpu_hours = max(cpu, 1e-3) / 3600
    engine_of = {u.id: u.speaker.voice.engine for u in plan.utterances}
    engine_cpu, engine_audio = defaultdict(float), defaultdict(float)
    for r in results:
        if r.synthesized and r.error is None:
            engine_cpu[engine_of[r.id]] += r.cpu_seconds
            engine_audio[engine_of[r.id]] += r.duration
    total = _summary(rows)
    return {
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "jobs": jobs,
        "synthesized": sum(r.synthesized and r.error is None for r in results),
        "resumed": sum(not r.synthesized for r in results),
        "failed": sum(r.error is not None for r in results),
        "hours_per_cpu_hour": round(total["hours"] / cpu_hours, 2),
        "speakers_per_cpu_hour": round(total["speakers"] / cpu_hours, 1),
        "source_humans_per_cpu_hour": round(total["source_humans"] / cpu_hours, 1),
        "cpu_seconds_per_audio_second": {e: round(engine_cpu[e] / engine_audio[e], 3)
                                         for e in sorted(engine_audio) if engine_audio[e]},
    }


def _write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


