"""The training losses of the speech LM, as modules (so DistributedDataParallel can wrap them): the backbone's,
a TLDR adapter's and SSD's draft model's, and the phone head that aligns the LM's tokens for a codec export.

Each builds, per utterance, the sequence of decoding.py: [speaker, phonemes, PROMPT, prompt units, SOS,
speech units], pads a batch to one length on the right (the causal mask keeps padding out of every real
position) and scores next-unit prediction on the speech part only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pad_sequence

from tldr_core.codec.model import Codec, phone_error_rate
from tldr_core.model import Backbone, Tldr
from tldr_core.settings import TEMPERATURE
from tldr_core.training.alignment import phone_positions
from tldr_core.training.lm_data import Batch

IGNORE = -100
OFF_TEXT = -20.0  # alignment prior: what the prior heads' speech queries pay for attending off the text


def duration_loss(model: Backbone, batch: Batch) -> torch.Tensor:
    """A model with alignment hints: squared error of its predicted log(1 + tokens) per text position."""
    errors = [(model.hints.durations(batch.speaker[i], ids) - torch.log1p(batch.durations[i].float())) ** 2
              for i, ids in enumerate(batch.text_ids)]
    return torch.cat(errors).mean()


def token_sequences(model: Backbone, batch: Batch, fed: list[torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
    """The token-level sequences of a batch embedded by `model`: (B, T, dim) inputs, (B, T) next-token targets
    (IGNORE outside the speech; the last speech position predicts STOP) and per utterance (phonemes, position of
    SOS, speech tokens). `fed`: per utterance, the tokens the inputs embed instead of the true ones (the targets
    stay the true tokens)."""
    rows, targets, spans = [], [], []
    for i, speech in enumerate(batch.speech):
        prefix = model.prefix(batch.speaker[i:i + 1], batch.text_ids[i][None])[0]
        said = speech if fed is None else fed[i]
        units = torch.cat([model.sos(1)[0], model.speech_embed(said)])  # unit j predicts token j (then STOP)
        if model.hints is not None:
            units = units + model.hints(batch.text_ids[i], batch.durations[i], len(units))
        rows.append(torch.cat([prefix, model.speech_embed(batch.prompt[i]), units]))
        ignore = torch.full((len(prefix) + batch.prompt.shape[1],), IGNORE, device=speech.device)
        targets.append(torch.cat([ignore, speech, speech.new_tensor([model.cfg.stop])]))
        spans.append((len(batch.text_ids[i]), len(ignore), len(speech)))
    return pad_sequence(rows, batch_first=True), pad_sequence(targets, batch_first=True, padding_value=IGNORE), spans


class BackboneObjective(nn.Module):
    """Token level: every speech position predicts the next token, the last one predicts STOP.

    While training with `prior` > 0 (the training loop lowers it to zero early in a run), the first `prior_heads`
    heads of every layer read the text from each speech position, around the phoneme that an even pace through
    the text would be at: an alignment prior in the manner of Neekhara et al. (2024), added to the attention
    logits. On a few hours of speech a decoder-only model otherwise learns to continue the prompt's voice long
    before it learns to read. Evaluation (eval mode) and inference never use it.

    With `self_feed` > 0 (training only), that share of the input tokens is replaced by the model's own samples
    (`own_samples`): inference feeds the model nothing but its own samples, teacher forcing never does, and at 50
    tokens/s that difference alone cost about 10 WER points (docs/EXPERIMENTS.md, "Fed its own samples")."""

    def __init__(self, backbone: Backbone, prior_heads: int = 1, prior_width: float = 1.5, self_feed: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.prior, self.prior_heads, self.prior_width = 0.0, prior_heads, prior_width
        self.self_feed = self_feed
        self.seed = 0  # of this step's draws, set by the training task: a resumed run draws what it would have
        self.figures: dict[str, float] = {}  # the parts of the last loss

    def forward(self, batch: Batch) -> torch.Tensor:
        bb = self.backbone
        fed = None
        if self.training and self.self_feed > 0:
            with torch.no_grad():  # the true history only chooses the samples: no graph to build for it
                true_x, _, true_spans = token_sequences(bb, batch)
                fed = self.own_samples(true_x, true_spans, batch)
        x, target, spans = token_sequences(bb, batch, fed)
        bias = self.alignment_bias(spans, x.shape[1], x.device) if self.training and self.prior > 0 else None
        logits = bb.logits(bb(x, attention_bias=bias))
        tokens = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
        if bb.hints is None:
            return tokens
        durations = duration_loss(bb, batch)
        self.figures = {"tokens": float(tokens.detach()), "durations": float(durations.detach())}
        return tokens + durations

    @torch.no_grad()
    def own_samples(self, x: torch.Tensor, spans: list[tuple[int, int, int]], batch: Batch) -> list[torch.Tensor]:
        """Per utterance, its speech tokens with a `self_feed` share of them replaced by what the model samples at
        each from the true history, at the app's temperature: parallel scheduled sampling (Duckworth et al.,
        2019), one extra pass without gradients instead of a token-by-token rollout."""
        logits = self.backbone.logits(self.backbone(x))[..., :self.backbone.cfg.stop].float()
        draws = torch.Generator(device=x.device).manual_seed(self.seed)
        fed = []
        for i, (_, sos, n_speech) in enumerate(spans):
            own = torch.multinomial(torch.softmax(logits[i, sos:sos + n_speech] / TEMPERATURE, -1), 1,
                                    generator=draws)[:, 0]
            swap = torch.rand(n_speech, generator=draws, device=x.device) < self.self_feed
            fed.append(torch.where(swap, own, batch.speech[i]))
        return fed

    def alignment_bias(self, spans: list[tuple[int, int, int]], length: int, device: torch.device) -> torch.Tensor:
        """(B, heads, T, T): the causal mask, plus on the prior heads, from the query predicting speech token j,
        -prior (p - c)^2 / 2 width^2 to text position p (c: where an even pace puts token j) and prior x OFF_TEXT
        to every other position."""
        causal = torch.full((length, length), float("-inf"), device=device).triu(1)
        bias = causal.expand(len(spans), self.backbone.cfg.heads, length, length).clone()
        for i, (n_text, sos, n_speech) in enumerate(spans):
            j = torch.arange(n_speech + 1, device=device, dtype=torch.float32)  # SOS predicts token 0, ...
            centre = 0.5 + (j + 0.5) * n_text / (n_speech + 1)                 # text sits at 1 .. n_text
            p = torch.arange(1, 1 + n_text, device=device, dtype=torch.float32)
            prior = -(p[None] - centre[:, None]) ** 2 / (2 * self.prior_width ** 2)
            rows = bias[i, :self.prior_heads, sos:sos + n_speech + 1]  # a view: the prior heads' speech queries
            rows[..., :1] += self.prior * OFF_TEXT
            rows[..., 1 + n_text:] += self.prior * OFF_TEXT
            rows[..., 1:1 + n_text] += self.prior * prior
        return bias


class TldrObjective(nn.Module):
    """Patch level, backbone frozen: the hidden state at SOS and at each patch predicts the next patch's
    k tokens through the extractor (teacher forcing inside the patch); the tokens are followed by STOP and
    padded to whole patches, and nothing after STOP is scored."""

    def __init__(self, backbone: Backbone, tldr: Tldr):
        super().__init__()
        self.backbone, self.tldr = backbone, tldr
        backbone.requires_grad_(False)

    def forward(self, batch: Batch) -> torch.Tensor:
        bb, tldr, k, stop = self.backbone, self.tldr, self.tldr.k, self.backbone.cfg.stop
        rows, patch_targets, positions, hints = [], [], [], []
        for i, speech in enumerate(batch.speech):
            n_patches = -(-(len(speech) + 1) // k)  # speech + STOP, in whole patches
            full = torch.full((n_patches * k,), IGNORE, dtype=speech.dtype, device=speech.device)
            full[:len(speech)] = speech
            full[len(speech)] = stop
            prefix = bb.prefix(batch.speaker[i:i + 1], batch.text_ids[i][None])[0]
            prompt = tldr.patches(bb, batch.prompt[i:i + 1])[0]
            units = torch.cat([bb.sos(1)[0], tldr.patches(bb, speech[None, :(n_patches - 1) * k])[0]])
            if bb.hints is not None:  # a patch unit: the mean of its tokens' hints; each token's to the extractor
                hints.append(bb.hints(batch.text_ids[i], batch.durations[i], n_patches * k).view(n_patches, k, -1))
                units = units + hints[-1].mean(1)
            rows.append(torch.cat([prefix, prompt, units]))
            first = len(prefix) + len(prompt)  # the SOS position
            positions.append((i, first, n_patches))
            patch_targets.append(full.view(n_patches, k))
        params = {**dict(bb.named_parameters()), **tldr.lora.merged(bb)}
        hidden = functional_call(bb, params, (pad_sequence(rows, batch_first=True),))
        states = torch.cat([hidden[i, first:first + n] for i, first, n in positions])  # (all patches, dim)
        target = torch.cat(patch_targets)                                              # (all patches, k)
        speakers = torch.cat([batch.speaker[i:i + 1].expand(n, -1) for i, _, n in positions])
        teacher = bb.speech_embed(target[:, :-1].clamp(min=0).masked_fill(target[:, :-1] == IGNORE, stop))
        x = torch.cat([tldr.extractor.start(states, speakers), teacher], dim=1)
        if hints:
            x = x + torch.cat(hints)
        logits = bb.logits(tldr.extractor(x))
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
        return loss


class DraftObjective(nn.Module):
    """SSD's draft model, backbone frozen: at every speech position, distillation (KL from the backbone's next-token
    distribution to the draft's) weighted `distill`, plus cross-entropy on the data's next token weighted `data`.

    Why distillation first: speculative sampling keeps a drafted token with probability min(1, p / q), so the
    expected acceptance per token is sum_x min(p(x), q(x)) = 1 - TV(p, q). What pays is a draft that copies the
    backbone, mistakes included, not one that models the data better; the data term only steadies the start."""

    def __init__(self, backbone: Backbone, draft: Backbone, distill: float = 1.0, data: float = 0.0):
        super().__init__()
        self.backbone, self.draft, self.distill, self.data = backbone, draft, distill, data
        backbone.requires_grad_(False)
        self.figures: dict[str, float] = {}  # the parts of the last loss, and the expected acceptance

    def forward(self, batch: Batch) -> torch.Tensor:
        x, target, _ = token_sequences(self.draft, batch)
        speech = target != IGNORE
        student = self.draft.logits(self.draft(x))[speech].float().log_softmax(-1)
        with torch.no_grad():
            teacher_x, _, _ = token_sequences(self.backbone, batch)
            teacher = self.backbone.logits(self.backbone(teacher_x))[speech].float().log_softmax(-1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        ce = F.nll_loss(student, target[speech])
        with torch.no_grad():
            overlap = torch.minimum(student.exp(), teacher.exp()).sum(-1).mean()
        self.figures = {"kl": float(kl.detach()), "ce": float(ce.detach()), "acceptance": float(overlap)}
        return self.distill * kl + self.data * ce


class AlignerObjective(nn.Module):
    """CTC of the codec's phone head over a batch's speech tokens (their quantised values) against the phones of
    its texts; everything else in the codec stays frozen, so its tokens, and a speech model trained on them, keep
    their meaning. `figures`: the greedy phone error rate (%) of the batch."""

    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec.requires_grad_(False)
        codec.ctc_head.requires_grad_(True)
        self.figures: dict[str, float] = {}

    def forward(self, batch: Batch) -> torch.Tensor:
        labels = [torch.from_numpy(phone_positions(ids.cpu().numpy())[1]) for ids in batch.text_ids]
        q = self.codec.fsq.from_index(pad_sequence(batch.speech, batch_first=True))
        log_probs = self.codec.phone_log_probs(q)
        lengths = torch.tensor([len(s) for s in batch.speech])
        loss = F.ctc_loss(log_probs.transpose(0, 1).float(), pad_sequence(labels, batch_first=True).to(q.device),
                          lengths, torch.tensor([len(x) for x in labels]), blank=0, zero_infinity=True)
        if not self.training:
            self.figures = {"per": phone_error_rate((lp[:n].detach().cpu(), x.numpy())
                                                    for lp, n, x in zip(log_probs, lengths, labels))}
        return loss
