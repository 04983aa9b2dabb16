"""Where each phoneme is in an utterance's speech tokens: durations for the LM's alignment hints.

A speech LM that must find its own place in the text learns, on a few hours of speech, to continue the prompt's
voice long before it learns to read (validation loss with the wrong text was within 0.01 nats of the right one
after 200 steps). Told which phoneme each token belongs to, reading becomes local. The codec's tokenizer was
trained with a phone CTC head on its quantised values, so the codec itself can say where the phones are: CTC
forced alignment (Viterbi over blank, phone, blank, ...) gives each phone's first token, and a phone lasts from
there to the next phone's first token (the blanks after a phone, pauses included, are its own). Tokens before the
first phone belong to BOS; stress marks, word gaps and punctuation take no tokens of their own (the hints show
them as the neighbours of the phones around them, and the duration predictor reads them to lengthen a phone
before a pause).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tldr_core import text
from tldr_core.codec.model import Codec, phone_targets

# text id -> the class the codec's CTC head gives that phone (0: blank), numbered by the codec itself
_CTC_CLASS = {text.phoneme_ids([p])[0]: int(phone_targets(p)[0]) for p in text.PHONES}


def phone_positions(text_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `text_ids` that are phones, and their CTC classes."""
    positions = np.array([i for i, t in enumerate(text_ids) if int(t) in _CTC_CLASS], dtype=np.int64)
    return positions, np.array([_CTC_CLASS[int(text_ids[i])] for i in positions], dtype=np.int64)


def forced_alignment(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """(T, classes) CTC log-probabilities and (M,) labels -> (M,) first frame of each label on the Viterbi path,
    or None when T frames cannot hold the labels."""
    t_len, m = len(log_probs), len(labels)
    states = np.zeros(2 * m + 1, dtype=np.int64)  # blank, l1, blank, l2, ..., lM, blank
    states[1::2] = labels
    s_len = len(states)
    # a label may follow the label two states back unless the two are equal (then a blank must sit between)
    skip = np.zeros(s_len, dtype=bool)
    skip[3::2] = labels[1:] != labels[:-1]
    if t_len < m + int((~skip[3::2]).sum()):
        return None
    score = np.full(s_len, -np.inf)
    score[:2] = log_probs[0, states[:2]]
    back = np.zeros((t_len, s_len), dtype=np.int8)  # 0: stay, 1: from the state before, 2: from two before
    for t in range(1, t_len):
        stay, step = score, np.concatenate([[-np.inf], score[:-1]])
        jump = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        options = np.stack([stay, step, jump])
        back[t] = options.argmax(0)
        score = options.max(0) + log_probs[t, states]
    state = s_len - 1 if score[-1] >= score[-2] else s_len - 2
    first = np.zeros(m, dtype=np.int64)
    for t in range(t_len - 1, -1, -1):
        if state % 2:
            first[state // 2] = t
        state -= int(back[t, state]) if t else 0
    return first


def durations(text_ids: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
    """Tokens per text position (summing to the token count) from the tokens' CTC log-probabilities. When the
    tokens are too few for the phones, they are shared out evenly over the phones."""
    n_tokens = len(log_probs)
    positions, labels = phone_positions(text_ids)
    out = np.zeros(len(text_ids), dtype=np.int64)
    if len(positions) == 0:
        out[0] = n_tokens
        return out
    first = forced_alignment(log_probs, labels)
    if first is None:
        first = (np.arange(len(positions)) * n_tokens) // len(positions)
    ends = np.append(first[1:], n_tokens)
    out[positions] = ends - first
    out[0] = first[0]  # BOS: the silence before the first phone
    return out


class Aligner:
    """A codec checkpoint's phone CTC head over token ids (training only: exports do not carry the head; for an
    exported codec, `tldr-voice train aligner` trains one anew on its frozen tokens)."""

    def __init__(self, codec: Codec):
        self.codec = codec.eval()

    @classmethod
    def load(cls, checkpoint: Path) -> "Aligner":
        from tldr_core.codec.store import load_codec

        return cls(load_codec(checkpoint))

    @torch.inference_mode()
    def durations(self, text_ids: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        q = self.codec.fsq.from_index(torch.from_numpy(tokens.astype(np.int64)))[None]
        log_probs = self.codec.phone_log_probs(q)[0].double().numpy()
        return durations(text_ids, log_probs)

