"""Generation with an explicit KV cache: token by token (baseline), patch by patch (TLDR), or speculatively (SSD).

Every generator prefills [speaker, phonemes, PROMPT, prompt units, SOS] in one forward pass, then extends the
cache one unit per backbone step (SSD: several verified tokens per backbone step), and yields speech tokens as
soon as they exist so the codec can turn them into sound while generation goes on. Length is bounded by the
text: STOP is masked until half the expected length, and output is cut at twice it, so a model can neither
swallow a sentence nor babble on. A model with alignment hints (model.AlignmentHints) first predicts how long
each phoneme lasts; every unit then carries the hint for the token it predicts, and STOP comes when all is said.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tldr_core.model import Backbone, KVCache, Tldr
from tldr_core.settings import TEMPERATURE


@dataclass
class Sampling:
    """top-k / top-p sampling with repetition-aware resampling (RAS, VALL-E 2): when the sampled token
    already fills more than `ras_threshold` of the last `ras_window` tokens, draw again from the whole
    distribution, which breaks the loops that plain nucleus sampling falls into on speech tokens."""

    temperature: float = TEMPERATURE  # the app's default (settings.py says why)
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


class StepFigures:
    """What the counts of one sentence (GenerationStats) or of one Speak (synthesis.SpeakStats) say per step."""

    tokens: int
    backbone_steps: int
    drafted: int
    accepted: int

    @property
    def acceptance_rate(self) -> float:
        """SSD: the share of drafted tokens the backbone kept."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def tokens_per_step(self) -> float:
        """Speech tokens per backbone forward pass (the prefill included): 1 for the baseline, up to k for TLDR."""
        return self.tokens / self.backbone_steps if self.backbone_steps else float("nan")


@dataclass
class GenerationStats(StepFigures):
    """What a benchmark reports about one generation."""

    backbone_steps: int = 0        # forward passes of the backbone (prefill counts as one)
    tokens: int = 0
    stopped: bool = False          # True: the model said STOP; False: cut at the length bound
    kv_bytes: int = 0              # the whole cache at the end
    kv_speech_bytes: int = 0       # the part holding speech: prompt units and generated units fed back
    history: list[int] = field(default_factory=list, repr=False)
    # speculative decoding only (SSD); kv_bytes and kv_speech_bytes above then include the draft's cache
    draft_steps: int = 0           # forward passes of the draft model (its prefill counts as one)
    drafted: int = 0               # tokens the draft proposed
    accepted: int = 0              # of those, the ones the backbone accepted
    draft_kv_bytes: int = 0        # the draft's own cache at the end


def sample(logits: torch.Tensor, history: list[int], cfg: Sampling, generator: torch.Generator | None,
           allow_stop: bool, stop: int) -> int:
    """One token id from (V + 1,) logits."""
    logits = _within_bounds(logits, allow_stop, stop)
    if cfg.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    top, index = _nucleus(probs, cfg)
    choice = int(index[torch.multinomial(top / top.sum(), 1, generator=generator)])
    if _repeats(choice, history, cfg):
        choice = int(torch.multinomial(probs, 1, generator=generator))
    return choice


def distribution(logits: torch.Tensor, history: list[int], cfg: Sampling, allow_stop: bool, stop: int) -> torch.Tensor:
    """The exact (V + 1,) distribution that `sample` draws one token from, with the same arguments.

    Speculative sampling is exact only against the distribution actually sampled, so this is `sample` written
    out: STOP masked outside the length bounds; greedy is a point mass; otherwise the top-k / top-p nucleus,
    except that the mass of every token RAS would redraw (already > ras_threshold of the window) goes to a
    fresh draw from the whole tempered distribution:
        P(x) = nucleus(x) [x not repeated] + nucleus(repeated tokens) * full(x)."""
    logits = _within_bounds(logits, allow_stop, stop)
    if cfg.temperature <= 0:
        return torch.zeros_like(logits).index_fill_(0, logits.argmax()[None], 1.0)
    full = torch.softmax(logits / cfg.temperature, dim=-1)
    top, index = _nucleus(full, cfg)
    nucleus = torch.zeros_like(full).index_put_((index,), top / top.sum())
    repeated = [t for t in set(history[-cfg.ras_window:]) if _repeats(t, history, cfg)]
    if not repeated:
        return nucleus
    redrawn = torch.tensor(repeated, device=full.device)
    mass = nucleus[redrawn].sum()
    return nucleus.index_fill(0, redrawn, 0.0) + mass * full


def _within_bounds(logits: torch.Tensor, allow_stop: bool, stop: int) -> torch.Tensor:
    """The logits as float, STOP masked while the length bounds do not allow it yet."""
    logits = logits.float().clone()
    if not allow_stop:
        logits[stop] = -float("inf")
    return logits


def _nucleus(probs: torch.Tensor, cfg: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k tokens' probabilities, zero outside the top-p nucleus (unnormalised), and their ids."""
    top, index = probs.topk(min(cfg.top_k, len(probs)))
    keep = top.cumsum(0) - top < cfg.top_p  # always keeps the most likely token
    return top * keep, index


def _repeats(token: int, history: list[int], cfg: Sampling) -> bool:
    """RAS: the token already fills more than `ras_threshold` of the last `ras_window` tokens."""
    return history[-cfg.ras_window:].count(token) / cfg.ras_window > cfg.ras_threshold


def _bounds(request: Request, tokens_per_phoneme: float) -> tuple[int, int]:
    expected = request.expected_tokens(tokens_per_phoneme)
    return int(0.5 * expected), max(2, int(2.0 * expected))


@dataclass
class Plan:
    """How long a sentence will be: length bounds, and for a model with alignment hints its durations."""

    bounds: tuple[int, int]             # STOP allowed from, output cut at (tokens)
    text_ids: torch.Tensor
    durations: torch.Tensor | None      # (phonemes,) tokens each, or None for a model without hints

    def hints(self, model: Backbone, length: int | None = None) -> torch.Tensor | None:
        """(length, dim) `model`'s hints, row j for predicting token j (default: up to the token after the last),
        or None without hints."""
        if self.durations is None:
            return None
        return model.hints(self.text_ids, self.durations, length or self.bounds[1] + 1)

    def patch_hints(self, model: Backbone, k: int, length: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """TLDR's hints for `length` tokens (a multiple of k): per token (the extractor's), and per patch the mean
        of its k tokens' (the backbone's); (None, None) without hints."""
        hints = self.hints(model, length)
        return hints, (hints.view(-1, k, hints.shape[-1]).mean(1) if hints is not None else None)


def _hinted(x: torch.Tensor, hints: torch.Tensor | None, first: int, rows: int = 1) -> torch.Tensor:
    """(1, T, dim) units with the hints for predicting tokens first .. first + rows - 1 added to the last rows."""
    if hints is None or rows == 0:
        return x
    x = x.clone()
    x[0, -rows:] += hints[first:first + rows]
    return x


def _plan(model: Backbone, request: Request, device: torch.device) -> Plan:
    """A model with alignment hints predicts its durations first, and may say STOP only when they are spoken;
    one without them gets length bounds from the speaking rate of its training data."""
    text_ids = request.text_ids.to(device)
    if model.hints is None:
        return Plan(_bounds(request, model.cfg.tokens_per_phoneme), text_ids, None)
    durations = model.hints.predict(request.speaker.to(device), text_ids)
    spoken = max(1, int(durations.sum()))
    durations[0] += spoken - int(durations.sum())  # nothing to say at all: one token of silence
    return Plan((spoken, spoken), text_ids, durations)


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


def _prefill(model: Backbone, request: Request, device: torch.device) -> tuple[torch.Tensor, int]:
    """[speaker, phonemes, PROMPT, prompt tokens, SOS] embedded by `model`, and where its speech part starts."""
    prefix = model.prefix(request.speaker[None].to(device), request.text_ids[None].to(device))
    prompt = model.speech_embed(request.prompt[None].to(device))
    return torch.cat([prefix, prompt, model.sos(1)], dim=1), prefix.shape[1]


def _patch_prefill(bb: Backbone, tldr: Tldr, request: Request, device: torch.device) -> tuple[torch.Tensor, int]:
    """TLDR's prefill: [speaker, phonemes, PROMPT, prompt patches, SOS], and where its speech part starts."""
    prefix = bb.prefix(request.speaker[None].to(device), request.text_ids[None].to(device))
    prompt = tldr.patches(bb, request.prompt[None].to(device))
    return torch.cat([prefix, prompt, bb.sos(1)], dim=1), prefix.shape[1]


class TokenGenerator:
    """The token-level baseline: one backbone step per speech token."""

    def __init__(self, backbone: Backbone, sampling: Sampling):
        self.backbone, self.sampling = backbone, sampling
        self.stats = GenerationStats()

    @torch.inference_mode()
    def generate(self, request: Request, generator: torch.Generator | None = None) -> Iterator[list[int]]:
        bb, cfg = self.backbone, self.backbone.cfg
        device = next(bb.parameters()).device
        plan = _plan(bb, request, device)
        bounds, hints = plan.bounds, plan.hints(bb)
        x, speech_start = _prefill(bb, request, device)
        x = _hinted(x, hints, 0)
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
            x = _hinted(bb.speech_embed(torch.tensor([[token]], device=device)), hints, stats.tokens)
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
        bb, tldr, k = self.backbone, self.tldr, self.tldr.k
        device = next(bb.parameters()).device
        plan = _plan(bb, request, device)
        bounds = plan.bounds
        hints, patch_hints = plan.patch_hints(bb, k, (bounds[1] // k + 2) * k)
        speaker = request.speaker[None].to(device)
        x, speech_start = _patch_prefill(bb, tldr, request, device)
        x = _hinted(x, patch_hints, 0)
        cache = bb.new_cache(max_len=x.shape[1] + bounds[1] // k + 1)
        self.stats = stats = GenerationStats()
        done = False
        while not done:
            hidden = bb(x, cache)
            cache.length += x.shape[1]
            stats.backbone_steps += 1
            patch: list[int] = []
            done = not _extract(bb, tldr, hidden[:, -1], speaker, patch, hints, stats, self.sampling, generator,
                                bounds)
            if patch:
                yield patch
            if not done:
                x = _hinted(tldr.patches(bb, torch.tensor([patch], device=device)), patch_hints, stats.tokens // k)
        stats.kv_bytes = cache.bytes()
        stats.kv_speech_bytes = cache.bytes(cache.length - speech_start - 1)  # not the SOS marker


def _extract(bb: Backbone, tldr: Tldr, hidden: torch.Tensor, speaker: torch.Tensor, patch: list[int],
             hints: torch.Tensor | None, stats: GenerationStats, sampling: Sampling,
             generator: torch.Generator | None, bounds: tuple[int, int]) -> bool:
    """TLDR's extractor fills in `patch` (the tokens it has so far, already counted in `stats`) up to k tokens from
    the backbone's (1, dim) hidden state before the patch. False once the utterance has ended (STOP or the length
    bound)."""
    device = hidden.device
    rows = [tldr.extractor.start(hidden, speaker)]
    if patch:
        rows.append(bb.speech_embed(torch.tensor([patch], device=device)))
    inputs = _hinted(torch.cat(rows, dim=1), hints, stats.tokens - len(patch), 1 + len(patch))
    while len(patch) < tldr.k:
        token = _next_token(bb.logits(tldr.extractor(inputs)[0, -1]), stats, sampling, generator, bounds,
                            bb.cfg.stop)
        if token is None:
            return False
        patch.append(token)
        if len(patch) < tldr.k:  # the tokens so far are the extractor's next inputs
            last = _hinted(bb.speech_embed(torch.tensor([[token]], device=device)), hints, stats.tokens)
            inputs = torch.cat([inputs, last], dim=1)
    return True


# ------------------------------------------------------------------------------------ speculative (SSD)

EXACT = "exact"  # speculative sampling: the output has exactly the backbone's own sampling distribution
SSD_RULE = "ssd"  # the SSD paper's rule for speech tokens: exact acceptance loosened by a tolerance


@dataclass(frozen=True)
class Speculation:
    """How SSD (arXiv 2505.15380) speculates: the draft proposes `gamma` tokens (TLDR + SSD: gamma patches), the
    backbone verifies them in one pass. `acceptance`: "exact", or "ssd", the paper's looser rule with tolerance
    `tolerance` (its beta)."""

    gamma: int = 4              # chosen by `tldr-voice bench`: with the shipped draft, 4 beat 2 and 6
    acceptance: str = EXACT
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        if self.acceptance not in (EXACT, SSD_RULE):
            raise ValueError(f"acceptance must be {EXACT} or {SSD_RULE}, not {self.acceptance!r}")
        if self.gamma < 1:
            raise ValueError(f"gamma must be at least 1, not {self.gamma}")


# TLDR + SSD's defaults, chosen by `tldr-voice bench` (k=4, shipped draft): whole patches are kept only when all k
# tokens are, so the exact rule (per-token acceptance ~0.68, a patch ~0.2) is slower than plain TLDR; the paper's
# rule at beta 0.5 with 2 patches per pass is the fastest whose quality stays within plain TLDR's (docs/EXPERIMENTS.md)
PATCH_SPECULATION = Speculation(gamma=2, acceptance=SSD_RULE, tolerance=0.5)


def accept_probability(p: float, q: float, speculation: Speculation) -> float:
    """How likely a drafted token is kept, given its probability under the backbone (p) and the draft (q > 0).

    "exact" (Leviathan et al. 2023; Chen et al. 2023): min(1, p / q). Keeping x with that probability and
    otherwise drawing from norm(max(0, p - q)) gives P(x) = min(p, q) + (1 - sum min(p, q)) (p - q)+ / sum (p - q)+
    = p(x): the backbone's distribution, whatever the draft.

    "ssd" (SSD, arXiv 2505.15380, its Algorithm 1): the draft token is kept when r < min(1, p / q) + beta, r
    uniform in [0, 1), i.e. with probability min(1, min(1, p / q) + beta). Speech tokens are ambiguous (many
    token sequences sound alike), so the paper trades exactness for acceptance: the output leans towards the
    draft, by at most beta per token. Rejections draw from norm(max(0, p - q)) as in the exact rule."""
    exact = min(1.0, p / q)
    return exact if speculation.acceptance == EXACT else min(1.0, exact + speculation.tolerance)


def _residual(p: torch.Tensor, q: torch.Tensor, generator: torch.Generator | None) -> int:
    """A token from norm(max(0, p - q)), the correction after a rejection. Rejection implies some x with
    p(x) > q(x); should rounding leave no mass (p == q to float precision), p itself is the right answer."""
    rest = (p - q).clamp(min=0)
    return int(torch.multinomial(rest if rest.sum() > 1e-9 else p, 1, generator=generator))


def _check_draft(draft: Backbone, backbone: Backbone) -> None:
    """A draft must speak the backbone's tokens and read alignment hints exactly when the backbone does."""
    if draft.cfg.speech_vocab != backbone.cfg.speech_vocab:
        raise ValueError(f"the draft speaks {draft.cfg.speech_vocab} codes, the backbone "
                         f"{backbone.cfg.speech_vocab}: a draft must share the backbone's tokens")
    if (draft.hints is None) != (backbone.hints is None):
        raise ValueError("a draft must read alignment hints exactly when its backbone does")


def _draft(draft: Backbone, x: torch.Tensor, cache: KVCache, count: int, dist: Callable[[torch.Tensor, list[int]], torch.Tensor],
           hints: torch.Tensor | None, stats: GenerationStats, generator: torch.Generator | None
           ) -> tuple[list[int], list[torch.Tensor]]:
    """Up to `count` tokens the draft proposes one by one after its next input `x` (nothing after STOP), and the
    distribution each was drawn from (`dist` of its logits and the tokens drafted before). The draft's cache then
    holds x and every drafted token but the last."""
    drafted: list[int] = []
    q: list[torch.Tensor] = []
    for _ in range(count):
        hidden = draft(x, cache)
        cache.length += x.shape[1]
        stats.draft_steps += 1
        q.append(dist(draft.logits(hidden[0, -1]), drafted))
        drafted.append(int(torch.multinomial(q[-1], 1, generator=generator)))
        if drafted[-1] == draft.cfg.stop:
            break
        x = _hinted(draft.speech_embed(torch.tensor([drafted[-1:]], device=x.device)), hints,
                    stats.tokens + len(drafted))
    return drafted, q


def _verify(drafted: list[int], q: list[torch.Tensor], target: Callable[[int, list[int]], torch.Tensor],
            speculation: Speculation, generator: torch.Generator | None) -> tuple[list[int], int | None]:
    """The prefix of the drafted tokens that is kept, token i checked against the target's distribution
    target(i, tokens kept before it), and the correction after the first rejection (None when all were kept)."""
    kept: list[int] = []
    for i, token in enumerate(drafted):
        p = target(i, kept)
        u = float(torch.rand(1, generator=generator, device=p.device))
        if u < accept_probability(float(p[token]), float(q[i][token]), speculation):
            kept.append(token)
            continue
        return kept, _residual(p, q[i], generator)
    return kept, None


class SpeculativeGenerator:
    """SSD: a small draft model (a `Backbone` of its own, with its own KV cache) proposes gamma tokens one by
    one; the backbone scores them all in one forward pass over its cache and keeps a prefix of them, then adds
    one token of its own (the correction after a rejection, or a bonus token when all were kept). So every
    backbone pass yields 1 to gamma + 1 tokens. Both caches are rolled back (KVCache.length) to the kept prefix.

    Both models' per-token distributions are `distribution`'s: the baseline's sampling (temperature, top-k,
    top-p, RAS over the tokens so far including those drafted before, STOP masked inside the length bounds).
    With acceptance "exact" the tokens therefore have exactly the distribution of TokenGenerator's."""

    def __init__(self, backbone: Backbone, draft: Backbone, sampling: Sampling,
                 speculation: Speculation | None = None):
        _check_draft(draft, backbone)
        self.backbone, self.draft, self.sampling = backbone, draft, sampling
        self.speculation = speculation or Speculation()
        self.stats = GenerationStats()

    @torch.inference_mode()
    def generate(self, request: Request, generator: torch.Generator | None = None) -> Iterator[list[int]]:
        """Yield the tokens each verification step settles (1 to gamma + 1 of them)."""
        bb, dr, cfg, sampling, gamma = self.backbone, self.draft, self.backbone.cfg, self.sampling, \
            self.speculation.gamma
        device = next(bb.parameters()).device
        plan = _plan(bb, request, device)  # the draft follows the backbone's durations
        min_tokens, max_tokens = plan.bounds
        bb_hints, dr_hints = plan.hints(bb, max_tokens + gamma + 2), plan.hints(dr, max_tokens + gamma + 2)
        bb_in, bb_speech = _prefill(bb, request, device)  # what each model reads next: prefill first
        dr_in, dr_speech = _prefill(dr, request, device)  # (each embeds the request with its own tables)
        bb_in, dr_in = _hinted(bb_in, bb_hints, 0), _hinted(dr_in, dr_hints, 0)
        bb_cache = bb.new_cache(max_len=bb_in.shape[1] + max_tokens + gamma + 2)
        dr_cache = dr.new_cache(max_len=dr_in.shape[1] + max_tokens + gamma + 2)
        self.stats = stats = GenerationStats()

        def dist(logits: torch.Tensor, drafted: list[int]) -> torch.Tensor:
            """The sampling distribution at the position after history + drafted."""
            return distribution(logits, stats.history + drafted, sampling,
                                stats.tokens + len(drafted) >= min_tokens, cfg.stop)

        done = False
        while not done:
            # 1. draft up to gamma tokens (never past the length bound, nothing after STOP)
            drafted, q = _draft(dr, dr_in, dr_cache, min(gamma, max_tokens - stats.tokens), dist, dr_hints, stats,
                                generator)
            dr_read = dr_cache.length  # the draft has read dr_in and drafted[:-1]
            # 2. one backbone pass over what it has not read yet and every drafted token
            drafts = bb.speech_embed(torch.tensor([drafted], device=device, dtype=torch.long))
            x = torch.cat([bb_in, _hinted(drafts, bb_hints, stats.tokens + 1, len(drafted))], dim=1)
            logits = bb.logits(bb(x, bb_cache)[0, bb_in.shape[1] - 1:])  # row i: the position of drafted[i]
            bb_cache.length += x.shape[1]
            stats.backbone_steps += 1
            stats.drafted += len(drafted)
            # 3. keep a prefix of the drafted tokens, then one token from the backbone
            kept, final = _verify(drafted, q, lambda i, kept: dist(logits[i], kept), self.speculation, generator)
            if final is None and (not kept or kept[-1] != cfg.stop):  # all kept: a bonus token
                final = int(torch.multinomial(dist(logits[len(kept)], kept), 1, generator=generator))
            stats.accepted += len(kept)
            settled = kept + ([final] if final is not None else [])
            # 4. hand out the settled tokens within the bounds; roll both caches back to the kept prefix
            group = []
            for token in settled:
                if token == cfg.stop or stats.tokens >= max_tokens:
                    stats.stopped, done = token == cfg.stop, True
                    break
                stats.history.append(token)
                stats.tokens += 1
                group.append(token)
            read = len(kept) - (bool(kept) and kept[-1] == cfg.stop)  # kept tokens both keep in their caches
            bb_cache.length -= len(drafted) - read
            dr_cache.length = dr_read - max(0, len(drafted) - 1 - read)
            if group:
                yield group
            if done:
                break
            unread = [final] if len(kept) < len(drafted) else [drafted[-1], final]
            bb_in = _hinted(bb.speech_embed(torch.tensor([[final]], device=device)), bb_hints, stats.tokens)
            dr_in = _hinted(dr.speech_embed(torch.tensor([unread], device=device)), dr_hints,
                            stats.tokens - len(unread) + 1, len(unread))
        stats.draft_kv_bytes = dr_cache.bytes()
        stats.kv_bytes = bb_cache.bytes() + stats.draft_kv_bytes
        stats.kv_speech_bytes = (bb_cache.bytes(bb_cache.length - bb_speech - 1)  # not the SOS markers
                                 + dr_cache.bytes(dr_cache.length - dr_speech - 1))


class SpeculativePatchGenerator:
    """TLDR + speculation (beyond both papers): the draft proposes `gamma` whole patches token by token; the
    LoRA-adapted backbone reads them all in one pass, and the extractor scores every drafted token at once (each
    patch from the hidden state before it, teacher-forced on the drafted tokens). A prefix of the drafted tokens
    is kept by SSD's rule; the patch the first rejection falls in gets its correction and is finished by the
    extractor, from the hidden state the pass already gave; all kept, the extractor adds a bonus patch. So every
    backbone pass settles 1 to gamma + 1 patches, and with the exact rule the tokens have exactly
    PatchGenerator's distribution. It pays off only when whole patches are kept, i.e. per-token acceptance to the
    power k: see docs/EXPERIMENTS.md."""

    def __init__(self, patches: PatchGenerator, draft: Backbone, speculation: Speculation | None = None):
        """`patches`: the TLDR generator of the patch size (its adapted backbone and sampling are used as they are);
        `speculation`: gamma in patches (default PATCH_SPECULATION)."""
        _check_draft(draft, patches.backbone)
        self.patches, self.draft = patches, draft
        self.speculation = speculation or PATCH_SPECULATION
        self.stats = GenerationStats()

    @property
    def backbone(self) -> Backbone:
        return self.patches.backbone

    @torch.inference_mode()
    def generate(self, request: Request, generator: torch.Generator | None = None) -> Iterator[list[int]]:
        """Yield the tokens each verification step settles (whole patches, but for the last)."""
        bb, tldr, dr, k, gamma = self.backbone, self.patches.tldr, self.draft, self.patches.tldr.k, \
            self.speculation.gamma
        sampling, stop, device = self.patches.sampling, bb.cfg.stop, next(bb.parameters()).device
        plan = _plan(bb, request, device)  # the draft follows the backbone's durations
        bounds = min_tokens, max_tokens = plan.bounds
        rows = (max_tokens // k + gamma + 2) * k
        (hints, patch_hints), dr_hints = plan.patch_hints(bb, k, rows), plan.hints(dr, rows)
        speaker = request.speaker[None].to(device)
        bb_in, bb_speech = _patch_prefill(bb, tldr, request, device)  # what each model reads next: prefill first
        bb_in = _hinted(bb_in, patch_hints, 0)
        dr_in, dr_speech = _prefill(dr, request, device)
        dr_in = _hinted(dr_in, dr_hints, 0)
        bb_cache = bb.new_cache(max_len=bb_in.shape[1] + max_tokens // k + gamma + 2)
        dr_cache = dr.new_cache(max_len=dr_in.shape[1] + max_tokens + gamma * k + 2)
        self.stats = stats = GenerationStats()

        def dist(logits: torch.Tensor, drafted: list[int]) -> torch.Tensor:
            return distribution(logits, stats.history + drafted, sampling,
                                stats.tokens + len(drafted) >= min_tokens, stop)

        done = False
        while not done:
            base = stats.tokens  # a whole number of patches
            # 1. draft up to gamma patches (never past the length bound, nothing after STOP)
            dr_mark = dr_cache.length + dr_in.shape[1]  # once the draft has read all settled tokens
            drafted, q = _draft(dr, dr_in, dr_cache, min(gamma * k, max_tokens - base), dist, dr_hints, stats,
                                generator)
            # 2. one backbone pass over what it has not read yet and every whole drafted patch
            fed = (len(drafted) - (drafted[-1:] == [stop])) // k
            units = _hinted(tldr.patches(bb, torch.tensor([drafted[:fed * k]], device=device, dtype=torch.long)),
                            patch_hints, base // k + 1, fed)
            x = torch.cat([bb_in, units], dim=1)
            hidden = bb(x, bb_cache)[0, bb_in.shape[1] - 1:]  # row j: the hidden state before drafted patch j
            bb_cache.length += x.shape[1]
            stats.backbone_steps += 1
            stats.drafted += len(drafted)
            # 3. the extractor scores every drafted token in one pass; keep a prefix, correct the first rejection
            kept, final = [], None
            if drafted:
                logits = self._score(hidden, speaker, drafted, hints, base)
                kept, final = _verify(drafted, q, lambda i, kept: dist(logits[i // k, i % k], kept), self.speculation,
                                      generator)
            stats.accepted += len(kept)
            # 4. hand out the settled tokens within the bounds; the extractor finishes the last patch
            for token in kept + ([final] if final is not None else []):
                if token == stop:
                    stats.stopped = done = True
                    break
                stats.history.append(token)
                stats.tokens += 1
            said = stats.tokens - base
            if not done and (said % k or final is None):  # hidden[said // k] read only kept tokens
                patch = stats.history[len(stats.history) - said % k:] if said % k else []
                done = not _extract(bb, tldr, hidden[said // k][None], speaker, patch, hints, stats, sampling,
                                    generator, bounds)
            # 5. roll both caches back to what was kept; each reads the rest of the settled tokens next
            settled = stats.history[base:]
            bb_cache.length -= fed - min(fed, len(kept) // k)
            read = min(len(kept), len(drafted) - 1)
            if drafted:
                dr_cache.length = dr_mark + read
            if settled:
                yield settled
            if done:
                break
            bb_in = _hinted(tldr.patches(bb, torch.tensor([settled[len(settled) - k:]], device=device)),
                            patch_hints, stats.tokens // k)
            dr_in = _hinted(dr.speech_embed(torch.tensor([settled[read:]], device=device)), dr_hints,
                            base + read + 1, len(settled) - read)
        stats.draft_kv_bytes = dr_cache.bytes()
        stats.kv_bytes = bb_cache.bytes() + stats.draft_kv_bytes
        stats.kv_speech_bytes = (bb_cache.bytes(bb_cache.length - bb_speech - 1)  # not the SOS markers
                                 + dr_cache.bytes(dr_cache.length - dr_speech - 1))

    def _score(self, hidden: torch.Tensor, speaker: torch.Tensor, drafted: list[int], hints: torch.Tensor | None,
               base: int) -> torch.Tensor:
        """(patches, k, V + 1) the extractor's logits for every drafted token, patch j from hidden row j, token m
        of it after the drafted tokens before it in the patch (the last patch padded; causal, so unaffected)."""
        bb, tldr, k = self.backbone, self.patches.tldr, self.patches.tldr.k
        n = -(-len(drafted) // k)
        padded = torch.tensor(drafted + [0] * (n * k - len(drafted)), device=hidden.device).view(n, k)
        inputs = torch.cat([tldr.extractor.start(hidden[:n], speaker.expand(n, -1)), bb.speech_embed(padded[:, :-1])],
                           dim=1)
        if hints is not None:
            inputs = inputs + hints[base:base + n * k].view(n, k, -1)
        return bb.logits(tldr.extractor(inputs))
