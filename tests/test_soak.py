"""`tldr-voice soak` on the shipped model: a short soak reports its figures and passes; a traceback, a wrong
outcome and threads left running each make it fail. (The README's soak figures come from a long run.)"""

import pytest
import torch

from cli_runner import run_cli
from tldr_core.errors import AudioInputError
from tldr_core.evaluation.soak import (CANCEL, CLOSE, Case, SoakConfig, SoakReport, SoakText, SoakVoice, run_case,
                                       run_soak, soak_voices)
from tldr_core.synthesis import BASELINE, TLDR, Synthesizer


@pytest.fixture(scope="module")
def synth():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `--threads 1`: two threads on a shared 2-core machine spin-wait
    yield Synthesizer(device="cpu")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def voices():
    return soak_voices()


def test_the_soak_voices_hold_the_clips_people_bring(voices):
    names = [v.name for v in voices]
    for variant in ("at 8 kHz", "at 96 kHz", "in stereo, 16 bit", "lightly clipped", "badly clipped", "cut to 0.5 s"):
        assert f"flite-rms {variant}" in names
    assert {"silence", "empty"} <= set(names)
    assert sum(v.usable for v in voices) > sum(not v.usable for v in voices) >= 6


SHORT_TEXTS = (SoakText("Hello there.", True), SoakText("I ❤️ this 😀!", True),  # short: the soak's make minutes
               SoakText("Привет, мир.", True), SoakText("😀🎉👍", False), SoakText("", False))


def test_a_short_soak_reports_memory_threads_and_no_failures(synth, voices):
    config = SoakConfig(runs=8, warmup=5, seed=3, bad_input_chance=0.4, stop_chance=0.4, texts=SHORT_TEXTS)
    report = run_soak(synth, config, voices)
    assert report.failures == [], "\n".join(report.lines())
    assert report.runs == 8 and report.spoken + report.stopped + sum(report.refused.values()) == 8
    assert report.spoken and report.stopped and report.refused and report.audio_seconds > 1
    assert 100 * 2**20 < report.rss_start and report.rss_end > 0 and abs(report.memory_growth) < 0.05
    assert report.threads_start > 0 and report.threads_left == 0 and report.new_threads == []
    assert report.passed
    lines = report.lines()
    assert lines[0].startswith("soak: 8 runs in") and all(line.endswith(" ok") for line in lines[1:])


def test_a_traceback_is_a_failure_and_fails_the_soak(synth, voices):
    """An unknown decoding mode is a programming error: Synthesizer.stream raises ValueError, not a TldrError."""
    config = SoakConfig(runs=2, warmup=1, bad_input_chance=0.0, stop_chance=0.0, decodings=(("warble", 1),))
    report = run_soak(synth, config, voices)
    assert [f.run for f in report.failures] == ["warm-up 1", "run 1", "run 2"] and not report.passed
    assert all(f.error == "ValueError: unknown mode 'warble'" and "Traceback" in f.traceback for f in report.failures)
    assert "failures: 3 (target 0) MISSED" in report.lines()


def test_an_outcome_other_than_the_one_due_is_a_failure(synth, voices):
    clean = voices[0]
    report = SoakReport(max_memory_growth=0.05)
    cases = [Case(SoakText("😀🎉", True), clean, TLDR, 4, seed=0),  # refused, though marked speakable
             Case(SoakText("Hello there.", False), clean, TLDR, 4, seed=0),  # spoken, though marked unspeakable
             Case(SoakText("Hello there.", True), SoakVoice("said to be clipped", clean.samples, clean.sample_rate,
                                                            True, "lightly clipped"), TLDR, 4, seed=0),
             Case(SoakText("Hello there.", True), voices[-1], BASELINE, 1, seed=0)]  # 'empty' is refused: due
    for i, case in enumerate(cases):
        run_case(synth, case, report, f"run {i + 1}")
    assert [(f.run, f.error.split(" ")[0]) for f in report.failures] == [
        ("run 1", "TextInputError"), ("run 2", "spoken,"), ("run 3", "no")]
    assert report.refused == {AudioInputError.__name__: 1}


@pytest.mark.parametrize("stop_by", [CANCEL, CLOSE])
def test_a_stop_ends_the_run_with_the_chunks_heard_so_far(synth, voices, stop_by):
    report = SoakReport(max_memory_growth=0.05)
    long = SoakText("A sentence long enough to be stopped. " * 4, True)
    run_case(synth, Case(long, voices[0], TLDR, 2, seed=0, stop_after=2, stop_by=stop_by), report, "run 1")
    assert report.failures == [] and report.stopped == 1 and synth.last_stats.cancelled
    assert 0 < report.audio_seconds < 1.0


def test_without_a_warm_up_the_threads_the_first_speak_starts_count_as_left_running():
    """The codec's worker thread starts with the first Speak and stays: measured from before it, the soak says so
    and exits with status 1."""
    result = run_cli("soak", "--runs", "2", "--warmup", "0", "--threads", "1", "--device", "cpu", "--seed", "1",
                     timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    threads = next(line for line in result.stdout.splitlines() if line.startswith("threads:"))
    assert "codec_0" in threads and threads.endswith("MISSED")

