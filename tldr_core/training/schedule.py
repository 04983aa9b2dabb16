"""The learning-rate schedule every training loop here uses: linear warm-up, then cosine decay to a floor.

One function, so that the codec, its phone listener and the speech LM cannot drift apart in how they schedule;
each loop passes its own peak and warm-up (from its recipe) and floor (the codec and its listener end at 5 % of
the peak, the speech LM at 10 %).
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, peak: float, steps: int, warmup: int, floor: float) -> float:
    """Learning rate at `step` (0-based): rising linearly to `peak` over `warmup` steps, then falling along a
    half cosine to `floor` x `peak` at `steps`, and staying there if a run goes on past it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
