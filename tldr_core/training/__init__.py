"""Training, on top of the run-time code (which never imports it): one Trainer and the recipes it runs.

  trainer.py        the Trainer: AdamW, schedule (schedule.py), clipping, AMP, DDP, validation, checkpoints
  codec_data.py     corpus -> the codec's feature cache and batches of whole clips
  codec.py          `train codec`: the codec (or only its decoder) and its losses
  listener.py       the phone listener whose loss keeps the decoder's phones apart (training only)
  codec_export.py   `codec export`: a codec checkpoint -> the ONNX folder the app runs
  lm_data.py        corpus -> the speech LM's tokens and batches
  objectives.py     the backbone's and the TLDR adapters' losses
  lm.py             `train backbone` and `train tldr`
  speed.py          `train speed`: seconds per training step, per precision and batching
  speaker_export.py `speaker export-onnx`: the pretrained speaker encoder -> resources/speaker_encoder.onnx
"""
