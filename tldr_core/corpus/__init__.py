"""A reproducible multi-speaker training corpus from offline speech engines we can rerun.

  voices.py     the source voices (engine, person behind it, licence) and how to make each speak
  sentences.py  our own English sentences from templates and word lists
  plan.py       splits by source human, pseudo-speakers (WORLD warps, Kokoro blends), sentences per speaker
  render.py     one utterance -> one normalised 16 kHz WAV
  build.py      `tldr-voice corpus build`: runs the plan in parallel, resumably, and writes the manifests
"""
