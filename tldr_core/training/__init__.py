"""Training the speech LM: corpus -> tokens (data.py), losses (objectives.py), the loop with DDP (loop.py); the
learning-rate schedule (schedule.py) is the codec's too."""
