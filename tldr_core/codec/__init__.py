"""The speech codec at run time: audio <-> discrete speech tokens (25 or 50 per second), streamed.

  features.py  WORLD-style analysis: 16 kHz audio -> vocoder frames at 100 per second
  vocoder.py   frames -> audio, streaming
  model.py     the codec network: FSQ tokenizer and causal decoder (`DecoderStream` decodes pushed tokens)
  store.py     a codec from a checkpoint or an exported folder; the fingerprint that pairs a model with it
  tuning.py    the decoder fine-tuned on a voice sample, once per voice (test-time adaptation)
  runtime.py   `CodecRuntime`: audio -> tokens, tokens + a `Timbre` -> audio (`AudioStream`), on onnxruntime
Training it lives in tldr_core/training (codec.py, listener.py, codec_export.py).
"""
