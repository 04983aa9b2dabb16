"""Measurements of the system, on top of the run-time code (never imported by it).

  judges.py           Whisper word errors, the evaluation speaker encoder's similarity, DNSMOS; paired differences
  similarity.py       the evaluation-only speaker encoder (never the one the product is conditioned on)
  codec_eval.py       `codec evaluate`: what survives the codec's round trip
  model_eval.py       `evaluate`: the speech model on held-out voices, split into the codec's share and the model's
  bench.py            `bench`: speed, backbone steps and KV cache of every decoding mode in one run
  soak.py             `soak`: many random Speak runs with Stops and odd input: memory growth, threads left, failures
  speaker_encoder.py  `speaker eval`: same- against different-speaker similarity of the product's encoder
"""
