"""Voice tuning (codec.tuning): the shipped decoder fine-tuned on a voice sample, once per voice."""

import numpy as np
import onnx
import pytest
import torch

from tldr_core import paths
from tldr_core.audio import load_reference_clip
from tldr_core.codec import runtime as runtime_module
from tldr_core.codec.runtime import DEFAULT_CODEC, CodecRuntime
from tldr_core.codec.tuning import Tuning, tune
from tldr_core.paths import RESOURCES_DIR

SAMPLE = RESOURCES_DIR / "voices" / "flite-rms.wav"
QUICK = Tuning(steps=12)


@pytest.fixture(scope="module")
def sample():
    return load_reference_clip(SAMPLE).samples


def reconstruction(codec, timbre) -> float:
    """How far the codec decodes the sample from its own analysed frames (the loss tuning lowers)."""
    q = codec.pad_window(codec.fsq.from_index(torch.from_numpy(timbre.tokens.astype(np.int64))[None]))
    stats = torch.from_numpy(timbre.stats)[None]
    ids, frames = timbre.memory(codec.cfg.frames_per_token)
    memory = codec.remember(codec.fsq.from_index(torch.from_numpy(ids)[None]), torch.from_numpy(frames)[None], stats,
                            torch.tensor([len(frames)]))
    with torch.no_grad():
        pred, _ = codec.decode_normalised(q, codec.conditioning(torch.from_numpy(timbre.embedding)[None], stats),
                                          memory=memory)
    target = torch.from_numpy(timbre.frames[:pred.shape[1]])[None]
    return float(codec.reconstruction(pred, target, stats, torch.tensor([target.shape[1]]))["recon"])


def snr_db(audio: np.ndarray, reference: np.ndarray) -> float:
    """How far `audio` is from `reference`: the reference's energy over the difference's, in dB."""
    return float(10 * np.log10((reference ** 2).sum() / max(float(((audio - reference) ** 2).sum()), 1e-30)))


def test_tuning_fits_the_decoder_to_the_voice_sample_and_leaves_the_shipped_weights_alone(sample):
    """A few steps on the sample lower the decoder's error on it; every weight the decoder graph runs comes back,
    by its ONNX initializer name and shape; the codec tuned from is unchanged; progress climbs to 1."""
    runtime = CodecRuntime(tuning=Tuning(steps=0))
    tokens, timbre = runtime.encode(sample)
    codec = runtime.backend.torch_codec
    shipped = {name: p.detach().clone() for name, p in codec.named_parameters()}
    heard = []
    weights = tune(codec, tokens, timbre.frames, timbre.memory(4), timbre.embedding, timbre.stats, QUICK, heard.append)
    assert heard == sorted(heard) and heard[-1] == 1.0 and len(heard) == QUICK.steps
    assert all(torch.equal(p, shipped[name]) for name, p in codec.named_parameters())
    graph = {i.name: tuple(i.dims) for i in onnx.load(DEFAULT_CODEC / "decoder.onnx").graph.initializer}
    assert {name: w.shape for name, w in weights.items()} == {n: s for n, s in graph.items() if n in weights}
    assert len(weights) == len(graph) - 1  # all but the frame scales, a buffer
    before = reconstruction(codec, timbre)
    tuned = type(codec)(codec.cfg)
    tuned.load_state_dict(codec.state_dict())
    tuned.load_state_dict({n.removeprefix("codec."): torch.from_numpy(w) for n, w in weights.items()}, strict=False)
    assert reconstruction(tuned, timbre) < 0.9 * before


def test_a_tuned_voice_streams_as_offline_sounds_different_and_is_kept_for_next_time(sample, tmp_path, monkeypatch):
    """The tuned decoder runs in the shipped ONNX graph: pushed k tokens at a time it equals the offline decode (its
    frames to float rounding; where that rounding moves a pitch pulse across a sample boundary, the pulse sounds one
    sample apart, so the audio is compared by its error's energy), and it differs from the untuned one. Its weights
    are kept in the user cache, so a new start decodes the same without tuning again; a damaged cache file is tuned
    again."""
    monkeypatch.setattr(paths, "voice_tuning_dir", lambda: tmp_path)
    runtime = CodecRuntime(tuning=QUICK)
    tokens, timbre = runtime.encode(sample)
    offline = runtime.decode(tokens, timbre)
    for k in (1, 4):
        stream = runtime.stream(timbre)
        pushed = np.concatenate([stream.push(tokens[i:i + k]) for i in range(0, len(tokens), k)] + [stream.finish()])
        assert snr_db(pushed, offline) > 40
    untuned = CodecRuntime(tuning=Tuning(steps=0)).decode(tokens, timbre)
    assert np.abs(untuned - offline).mean() > 1e-3
    kept = list(tmp_path.glob("*.npz"))
    assert len(kept) == 1

    def no_tuning(*args, **kwargs):
        raise AssertionError("tuned again")

    monkeypatch.setattr(runtime_module, "tune", no_tuning)
    assert np.array_equal(CodecRuntime(tuning=QUICK).decode(tokens, timbre), offline)
    kept[0].write_bytes(b"damaged")
    monkeypatch.undo()
    monkeypatch.setattr(paths, "voice_tuning_dir", lambda: tmp_path)
    assert snr_db(CodecRuntime(tuning=QUICK).decode(tokens, timbre), offline) > 40


def test_a_cancelled_tuning_prepares_nothing_and_keeps_nothing(sample, tmp_path, monkeypatch):
    """Stop while a voice is being tuned: prepare says None, nothing is cached, and the next try tunes afresh."""
    monkeypatch.setattr(paths, "voice_tuning_dir", lambda: tmp_path)
    runtime = CodecRuntime(tuning=QUICK)
    _, timbre = runtime.encode(sample)
    heard = []
    assert runtime.prepare(timbre, heard.append, cancel=lambda: len(heard) >= 3) is None
    assert len(heard) == 3 and not list(tmp_path.glob("*.npz"))
    assert runtime.prepare(timbre) is not None and len(list(tmp_path.glob("*.npz"))) == 1
