"""Training the speech LM: corpus -> tokens (data.py), losses (objectives.py), the loop with DDP (loop.py)."""
