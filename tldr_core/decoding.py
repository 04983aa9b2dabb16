"""Generation with an explicit KV cache: token by token (baseline) or patch by patch (TLDR).

Both generators prefill [speaker, phonemes, PROMPT, prompt units, SOS] in one forward pass, then extend the
cache one unit per backbone step, and yield speech tokens as soon as they exist so the codec can turn
them into sound while generation goes on. Length is bounded by the text: STOP is masked until half the
expected length, and output is cut at twice it, so a model can neither swallow a sentence nor babble on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from tldr_core.model import Backbone, Tldr


@dataclass
class Sampling:
    """top-k / top-p sampling with repetition-aware resampling (RAS, VALL-E 2): when the sampled token
    already fills more than `ras_threshold` of the last `ras_window` tokens, draw again from the whole
    distribution, which breaks the loops that plain nucleus sampling falls into on speech tokens."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.9
    ras_window: int = 10
    ras_threshold: float = 0.2


@dataclass
class Request:
    """One sentence to say: (256,) speaker embedding, phoneme ids (with BOS/EOS), prompt token ids."""

    speaker: torch.Tensor
    text_ids: torch.Tensor
    prompt: torch.Tensor

    def expected_tokens(self, tokens_per_phoneme: float) -> float:
        return tokens_per_phoneme * max(1, len(self.text_ids) - 2)


@dataclass
class GenerationStats:
    """What a benchmark reports about one generation."""

    backbone_steps: int = 0        # forward passes of the backbone (prefill counts as one)
    tokens: int = 0
    stopped: bool = False          # True: the model said STOP; False: cut at the length bound
    kv_bytes: int = 0              # the whole cache at the end
    kv_speech_bytes: int = 0       # the part holding speech: prompt units and generated units fed back
    history: list[int] = field(default_factory=list, repr=False)


def sample(logits: torch.Tensor, history: list[int], cfg: Sampling, generator: torch.Generator | None,
           allow_stop: bool, stop: int) -> int:
    """One token id from (V + 1,) logits."""
    logits = logits.float().clone()
    if not allow_stop:
        logits[stop] = -float("inf")
    if cfg.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    choice = _nucleus(probs, cfg, generator)
    window = history[-cfg.ras_window:]
    if window and window.count(choice) / cfg.ras_window > cfg.ras_threshold:
        choice = int(torch.multinomial(probs, 1, generator=generator))
    return choice


def _nucleus(probs: torch.Tensor, cfg: Sampling, generator: torch.Generator | None) -> int:
    top, index = probs.topk(min(cfg.top_k, len(probs)))
    keep = top.cumsum(0) - top < cfg.top_p  # always keeps the most likely token
    top = top * keep
    return int(index[torch.multinomial(top / top.sum(), 1, generator=generator)])


def _bounds(request: Request, tokens_per_phoneme: float) -> tuple[int, int]:
    expected = request.expected_tokens(tokens_per_phoneme)
    return int(0.5 * expected), max(2, int(2.0 * expected))


def _next_token(logits: torch.Tensor, stats: GenerationStats, sampling: Sampling, generator: torch.Generator | None,
                bounds: tuple[int, int], stop: int) -> int | None:
    """Sample within the length bounds and count the token; None once the utterance has ended."""
    min_tokens, max_tokens = bounds
    token = sample(logits, stats.history, sampling, generator, stats.tokens >= min_tokens, stop)
    if token == stop or stats.tokens >= max_tokens:
        stats.stopped = token == stop
        return None
    stats.history.append(token)
    stats.tokens += 1
    return token


class TokenGenerator:
    """The token-level baseline: one backbone step per speech token."""

    def __init__(self, backbone: Backbone, sampling: Sampling):
        self.backbone, self.sampling = backbone, sampling
        self.stats = GenerationStats()

    @torch.inference_mode()
    def generate(self, request: Request, generator: torch.Generator | None = None) -> Iterator[list[int]]:
        bb, cfg = self.backbone, self.backbone.cfg
        device = next(bb.parameters()).device
        bounds = _bounds(request, cfg.tokens_per_phoneme)
        prefix = bb.prefix(request.speaker[None].to(device), request.text_ids[None].to(device))
        x = torch.cat([prefix, bb.speech_embed(request.prompt[None].to(device)), bb.sos(1)], dim=1)
        speech_start = prefix.shape[1]
        cache = bb.new_cache(max_len=x.shape[1] + bounds[1])
        self.stats = stats = GenerationStats()
        while True:
            hidden = bb(x, cache)
            cache.length += x.shape[1]
            stats.backbone_steps += 1
            token = _next_token(bb.logits(hidden[0, -1]), stats, self.sampling, generator, bounds, cfg.stop)
            if token is None:
                break
            yield [token]
            x = bb.speech_embed(torch.tensor([[token]], device=device))
        stats.kv_bytes = cache.bytes()
        stats.kv_speech_bytes = cache.bytes(cache.length - speech_start - 1)  # not the SOS marker


class PatchGenerator:
    """TLDR: one backbone step per patch of k tokens; the extractor fills in the tokens of each patch."""

    def __init__(self, backbone: Backbone, tldr: Tldr, sampling: Sampling):
        """`backbone`: the frozen backbone; its LoRA-adapted copy is made here once."""
        self.backbone, self.tldr, self.sampling = tldr.adapted(backbone), tldr.eval(), sampling
        self.stats = GenerationStats()

    @torch.inference_mode()
    def generate(self, request: Request, generator: torch.Generator | None = None) -> Iterator[list[int]]:
        bb, cfg, tldr, k = self.backbone, self.backbone.cfg, self.tldr, self.tldr.k
        device = next(bb.parameters()).device
        bounds = _bounds(request, cfg.tokens_per_phoneme)
        speaker = request.speaker[None].to(device)
        prefix = bb.prefix(speaker, request.text_ids[None].to(device))
        x = torch.cat([prefix, tldr.patches(bb, request.prompt[None].to(device)), bb.sos(1)], dim=1)
        speech_start = prefix.shape[1]
        cache = bb.new_cache(max_len=x.shape[1] + bounds[1] // k + 1)
        self.stats = stats = GenerationStats()
        done = False
        while not done:
            hidden = bb(x, cache)
            cache.length += x.shape[1]
            stats.backbone_steps += 1
            patch: list[int] = []
            inputs = tldr.extractor.start(hidden[:, -1], speaker)
            while len(patch) < k:
                if patch:  # the tokens so far are the extractor's next inputs
                    inputs = torch.cat([inputs, bb.speech_embed(torch.tensor([patch[-1:]], device=device))], dim=1)
                token = _next_token(bb.logits(tldr.extractor(inputs)[0, -1]), stats, self.sampling, generator,
                                    bounds, cfg.stop)
                if token is None:
                    done = True
                    break
                patch.append(token)
            if patch:
                yield patch
            if not done:
                x = tldr.patches(bb, torch.tensor([patch], device=device))
        stats.kv_bytes = cache.bytes()
        stats.kv_speech_bytes = cache.bytes(cache.length - speech_start - 1)  # not the SOS marker
