"""The speech language model in one file: a Qwen2-style backbone and the TLDR parts that make it patch-level.

Sequence (both modes):

    [speaker] [BOS phonemes EOS] [PROMPT] prompt units... [SOS] speech units... -> next unit

A *unit* is one codec token for the token-level backbone, or one patch of k tokens for TLDR. The speaker
slot is the 256-d SpeakerEncoder embedding projected to the model width; the prompt is a crop of the
reference clip's tokens (zero-shot continuation: the model continues in the prompt's voice and manner).

Token level: hidden state at a unit -> `head` -> next token (or STOP).
TLDR (arXiv 2606.09019): a `Compressor` turns the k token embeddings of a patch into one patch embedding;
the frozen backbone, adapted by `Lora`, runs over patches; an `Extractor` turns the hidden state at a
patch (plus the speaker) into the k tokens of the next patch, one at a time, through the backbone's frozen
output head. The backbone runs k times fewer steps and keeps k times fewer speech entries in its KV cache.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tldr_core import text

SPEAKER_DIM = 256  # SpeakerEncoder's output
PROMPT_MULTIPLE = 24  # prompt lengths are whole patches for every patch size 2, 4, 6 and 8
PROMPT_MILLISECONDS = 2880  # reference speech in a prompt: the longest in training, the one used in synthesis


def max_prompt_tokens(tokens_per_second: int) -> int:
    """The longest prompt in whole PROMPT_MULTIPLEs of tokens: 72 at 25 tokens/s, 144 at 50."""
    return PROMPT_MILLISECONDS * tokens_per_second // 1000 // PROMPT_MULTIPLE * PROMPT_MULTIPLE


@dataclass
class ModelConfig:
    """Backbone sizes, plus what the training data said about speaking rate (for length bounds)."""

    speech_vocab: int = 1000          # codec codes (training sets it from the codec); STOP is speech_vocab
    dim: int = 256                    # defaults: the CPU-trained default model; a GPU run passes bigger sizes
    layers: int = 12
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 768
    max_len: int = 1536               # positions: text + prompt + speech units
    rope_base: float = 10000.0
    tokens_per_phoneme: float = 2.0   # measured on the training data; expected length = this x phonemes
    alignment_hints: bool = False     # each speech unit is told the phoneme it says (AlignmentHints)

    @property
    def stop(self) -> int:
        return self.speech_vocab

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TldrConfig:
    """One patch size's adapter: LoRA on the backbone, compressor and extractor sizes."""

    patch_size: int = 4
    lora_rank: int = 16
    lora_alpha: float = 32.0
    compressor_layers: int = 1
    extractor_layers: int = 1         # measured: a second layer costs ~15 % of TLDR's speed-up at k=4

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------- layers

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of rotary positions, (length, head_dim / 2) each."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (B, H, T, D) by per-position angles (T, D / 2), halves layout as in Qwen2."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class KVCache:
    """Keys and values of every layer, preallocated: (B, kv_heads, max_len, head_dim) per layer.

    `length` positions are filled. The model writes a forward pass's new entries at [length, length + T)
    and the caller advances `length`; bytes are counted per position so a benchmark can split the speech
    part from the text part."""

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (batch, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.length = 0
        self.max_len = max_len
        self.bytes_per_position = 2 * layers * batch * kv_heads * head_dim * self.keys[0].element_size()

    def bytes(self, positions: int | None = None) -> int:
        return self.bytes_per_position * (self.length if positions is None else positions)


class Attention(nn.Module):
    """Grouped-query attention with rotary positions; reads and writes a KVCache layer when given one."""

    def __init__(self, dim: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.wq = nn.Linear(dim, dim, bias=True)  # Qwen2 keeps biases on q, k, v
        self.wk = nn.Linear(dim, kv_heads * self.head_dim, bias=True)
        self.wv = nn.Linear(dim, kv_heads * self.head_dim, bias=True)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, causal: bool,
                cache: tuple[torch.Tensor, torch.Tensor, int] | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """`bias`: (B, heads, T, T) added to the attention logits, causal mask included (training only)."""
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        mask = None
        if cache is not None:
            keys, values, start = cache
            keys[:, :, start:start + t] = k
            values[:, :, start:start + t] = v
            k, v = keys[:, :, :start + t], values[:, :, :start + t]
            if t > 1:  # new queries see the whole cache and the new keys up to themselves
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            causal = False
        if bias is not None:
            mask, causal = bias, False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and t > 1, enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    """Pre-norm transformer block: attention then SwiGLU feed-forward."""

    def __init__(self, dim: int, heads: int, kv_heads: int, ffn: int):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, heads, kv_heads)
        self.w_gate = nn.Linear(dim, ffn, bias=False)
        self.w_up = nn.Linear(dim, ffn, bias=False)
        self.w_down = nn.Linear(ffn, dim, bias=False)

    def forward(self, x, cos, sin, causal=True, cache=None, bias=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, causal, cache, bias)
        h = self.ffn_norm(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))


# ------------------------------------------------------------------------------------------- alignment

END = text.VOCAB_SIZE  # hint id past the last phoneme: the unit that says STOP
MAX_HINT_STEP = 16     # steps into and left of a phoneme are told up to this many tokens
_PHONE_IDS = frozenset(text.phoneme_ids(list(text.PHONES)))


class DurationPredictor(nn.Module):
    """Speaker + phonemes -> log(1 + tokens) of each text position (convolutions: a phoneme's length depends
    on its neighbours, a pause on the punctuation after it)."""

    def __init__(self, dim: int, layers: int = 3, kernel: int = 5):
        super().__init__()
        self.embed = nn.Embedding(text.VOCAB_SIZE, dim)
        self.speaker_proj = nn.Linear(SPEAKER_DIM, dim)
        self.norms = nn.ModuleList([RMSNorm(dim) for _ in range(layers)])
        self.convs = nn.ModuleList([nn.Conv1d(dim, dim, kernel, padding=kernel // 2) for _ in range(layers)])
        self.out = nn.Linear(dim, 1)

    def forward(self, speaker: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """(256,) speaker, (n,) text ids -> (n,) log(1 + tokens)."""
        x = self.embed(text_ids) + self.speaker_proj(speaker)
        for norm, conv in zip(self.norms, self.convs):
            x = x + F.gelu(conv(norm(x).T[None])[0].T)
        return self.out(x)[:, 0]


class AlignmentHints(nn.Module):
    """What each speech unit says, added to the unit that predicts it: the phoneme being said, the text symbols
    before and after it, how many tokens into the phoneme and how many are left.

    A decoder-only model left to find its place in the text learns to continue the prompt's voice long before it
    learns to read (docs/EXPERIMENTS.md); told where it is, reading becomes local. Training takes the durations
    from the codec's phone alignment (training/alignment.py), synthesis from the model's own DurationPredictor,
    so the length of an utterance is the model's decision, made before its first token."""

    def __init__(self, dim: int):
        super().__init__()
        self.now = nn.Embedding(text.VOCAB_SIZE + 1, dim)
        self.before = nn.Embedding(text.VOCAB_SIZE + 1, dim)
        self.after = nn.Embedding(text.VOCAB_SIZE + 1, dim)
        self.into = nn.Embedding(MAX_HINT_STEP, dim)
        self.left = nn.Embedding(MAX_HINT_STEP, dim)
        self.durations = DurationPredictor(dim)

    def forward(self, text_ids: torch.Tensor, durations: torch.Tensor, length: int) -> torch.Tensor:
        """(n,) text ids and their (n,) durations in tokens -> (length, dim): row j is the hint for predicting
        token j; rows from sum(durations) on say END (STOP now)."""
        n, device = len(text_ids), text_ids.device
        spoken = int(durations.sum())
        at = torch.repeat_interleave(torch.arange(n, device=device), durations)  # token -> its text position
        into = torch.arange(spoken, device=device) - (durations.cumsum(0) - durations)[at]
        left = durations[at] - into - 1
        past = max(0, length - spoken)
        at = torch.cat([at, at.new_full((past,), n)])[:length]
        into = torch.cat([into, into.new_zeros(past)])[:length].clamp(max=MAX_HINT_STEP - 1)
        left = torch.cat([left, left.new_zeros(past)])[:length].clamp(max=MAX_HINT_STEP - 1)
        ids = torch.cat([text_ids, text_ids.new_tensor([END, END])])  # ids[n]: END; ids[-1]: nothing before BOS
        return (self.now(ids[at]) + self.before(ids[at - 1]) + self.after(ids[at + 1]) + self.into(into)
                + self.left(left))

    def predict(self, speaker: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """(256,) speaker, (n,) text ids -> (n,) durations in tokens: at least one per phone, none for the marks
        and EOS; BOS holds the silence before the first phone."""
        tokens = torch.expm1(self.durations(speaker, text_ids).float()).round().clamp(min=0).long()
        phone = torch.tensor([int(t) in _PHONE_IDS for t in text_ids], device=tokens.device)
        spoken = torch.where(phone, tokens.clamp(min=1), torch.zeros_like(tokens))
        spoken[0] = tokens[0]
        return spoken


# ----------------------------------------------------------------------------------------- backbone

class Backbone(nn.Module):
    """The token-level speech LM. Embeds the parts of a sequence and runs the transformer over them."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.text_embed = nn.Embedding(text.VOCAB_SIZE, cfg.dim)
        self.speech_embed = nn.Embedding(cfg.speech_vocab + 1, cfg.dim)  # + STOP (seen by the extractor)
        self.speaker_proj = nn.Linear(SPEAKER_DIM, cfg.dim)
        self.markers = nn.Embedding(2, cfg.dim)  # PROMPT, SOS
        self.hints = AlignmentHints(cfg.dim) if cfg.alignment_hints else None
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.kv_heads, cfg.ffn) for _ in range(cfg.layers)])
        self.norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.speech_vocab + 1, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_len, cfg.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(_init)

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.cfg.layers, batch, self.cfg.kv_heads, max_len or self.cfg.max_len,
                       self.cfg.head_dim, p.device, p.dtype)

    def prefix(self, speaker: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """(B, 256) speaker + (B, n) phoneme ids -> (B, 1 + n + 1, dim): everything before the prompt."""
        b = text_ids.shape[0]
        prompt = self.markers.weight[0].expand(b, 1, -1)
        return torch.cat([self.speaker_proj(speaker)[:, None], self.text_embed(text_ids), prompt], dim=1)

    def sos(self, batch: int) -> torch.Tensor:
        return self.markers.weight[1].expand(batch, 1, -1)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                attention_bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, dim) embedded units -> (B, T, dim) final hidden states (normed).

        Without a cache: a causal pass over whole sequences (training), optionally with a (B, heads, T, T)
        attention bias that includes the causal mask (the alignment prior of training). With a cache: the T
        units continue it from position `cache.length` (T > 1 scores several given units in one pass); the
        caller advances `cache.length`."""
        start = cache.length if cache is not None else 0
        t = x.shape[1]
        if start + t > self.cfg.max_len:
            raise ValueError(f"sequence of {start + t} units exceeds the model's {self.cfg.max_len} positions")
        cos, sin = self.cos[start:start + t], self.sin[start:start + t]
        for i, block in enumerate(self.blocks):
            layer_cache = (cache.keys[i], cache.values[i], start) if cache is not None else None
            x = block(x, cos, sin, causal=True, cache=layer_cache, bias=attention_bias)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------- TLDR

LORA_TARGETS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "w_gate", "w_up", "w_down")


class Lora(nn.Module):
    """Low-rank updates W + (alpha / r) B A of every block's projections; B starts at zero (no change).

    The backbone itself is never modified: `merged` returns the adapted weights, used through
    torch.func.functional_call in training and baked into a copy of the backbone for inference."""

    def __init__(self, backbone: Backbone, rank: int, alpha: float):
        super().__init__()
        self.scale = alpha / rank
        self.names = [f"blocks.{i}.{target}.weight" for i in range(len(backbone.blocks)) for target in LORA_TARGETS]
        params = dict(backbone.named_parameters())
        self.a = nn.ParameterList()
        self.b = nn.ParameterList()
        for name in self.names:
            out_dim, in_dim = params[name].shape
            self.a.append(nn.Parameter(torch.randn(rank, in_dim) / math.sqrt(in_dim)))
            self.b.append(nn.Parameter(torch.zeros(out_dim, rank)))

    def merged(self, backbone: Backbone) -> dict[str, torch.Tensor]:
        params = dict(backbone.named_parameters())
        return {name: params[name] + self.scale * (b @ a) for name, a, b in zip(self.names, self.a, self.b)}


class Compressor(nn.Module):
    """k token embeddings -> one patch embedding: a learned query attends over the patch (bidirectional)."""

    def __init__(self, cfg: ModelConfig, tcfg: TldrConfig):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, tcfg.patch_size, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.kv_heads, cfg.ffn)
                                     for _ in range(tcfg.compressor_layers)])
        self.norm = RMSNorm(cfg.dim)
        # a zero rotation: positions inside the patch come from `position`, not from rotary angles
        angles = (tcfg.patch_size + 1, cfg.head_dim // 2)
        self.register_buffer("cos", torch.ones(angles), persistent=False)
        self.register_buffer("sin", torch.zeros(angles), persistent=False)

    def forward(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, k, dim) -> (N, dim)."""
        x = torch.cat([self.query.expand(len(token_embeddings), -1, -1), token_embeddings + self.position], dim=1)
        for block in self.blocks:
            x = block(x, self.cos, self.sin, causal=False)
        return self.norm(x[:, 0])


class Extractor(nn.Module):
    """Hidden state at a patch + speaker -> the k tokens of the next patch, autoregressively.

    Input row: [proj(hidden) + proj(speaker), e(t1), ..., e(t_{k-1})] -> causal blocks -> the backbone's
    frozen final norm and head -> t1..tk. The speaker is given again here because the patch's fine detail
    (which of several similar codes) is where a voice is easiest to lose."""

    def __init__(self, cfg: ModelConfig, tcfg: TldrConfig):
        super().__init__()
        self.hidden_proj = nn.Linear(cfg.dim, cfg.dim)
        self.speaker_proj = nn.Linear(SPEAKER_DIM, cfg.dim)
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.kv_heads, cfg.ffn)
                                     for _ in range(tcfg.extractor_layers)])
        self.norm = RMSNorm(cfg.dim)
        cos, sin = rope_tables(cfg.head_dim, tcfg.patch_size, cfg.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def start(self, hidden: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """(N, dim) hidden + (N, 256) speaker -> (N, 1, dim) first input position."""
        return (self.hidden_proj(hidden) + self.speaker_proj(speaker))[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, j, dim) inputs -> (N, j, dim) states, to be read by the backbone's norm and head."""
        t = x.shape[1]
        for block in self.blocks:
            x = block(x, self.cos[:t], self.sin[:t], causal=True)
        return self.norm(x)


class Tldr(nn.Module):
    """One patch size's trainable parts: LoRA, compressor, extractor. The backbone stays outside, frozen."""

    def __init__(self, backbone: Backbone, tcfg: TldrConfig):
        super().__init__()
        self.tcfg = tcfg
        self.lora = Lora(backbone, tcfg.lora_rank, tcfg.lora_alpha)
        self.compressor = Compressor(backbone.cfg, tcfg)
        self.extractor = Extractor(backbone.cfg, tcfg)
        for module in (self.compressor, self.extractor):
            for sub in module.modules():
                if isinstance(sub, (nn.Linear, nn.Embedding)):
                    _init(sub)

    @property
    def k(self) -> int:
        return self.tcfg.patch_size

    def patches(self, backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n * k) token ids -> (B, n, dim) patch embeddings (token embeddings from the frozen table)."""
        b, length = tokens.shape
        if length == 0:  # no prompt, or speech shorter than one patch
            return backbone.speech_embed.weight.new_zeros(b, 0, backbone.cfg.dim)
        embeddings = backbone.speech_embed(tokens).view(b * (length // self.k), self.k, -1)
        return self.compressor(embeddings).view(b, length // self.k, -1)

    def adapted(self, backbone: Backbone) -> Backbone:
        """A copy of the backbone with the LoRA updates baked in: inference at the backbone's own cost."""
        merged = copy.deepcopy(backbone)
        with torch.no_grad():
            params = dict(merged.named_parameters())
            for name, weight in self.lora.merged(backbone).items():
                params[name].copy_(weight)
        return merged.eval()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
