"""The speech LM: the KV cache gives exactly the full-sequence result, LoRA starts as a no-op and never
touches the frozen backbone, the TLDR parts have the shapes the decoders rely on, and prompts last as long at every
token rate."""

import torch
from torch.func import functional_call

from tldr_core.model import PROMPT_MULTIPLE, Backbone, ModelConfig, Tldr, TldrConfig, max_prompt_tokens

CFG = ModelConfig(speech_vocab=50, dim=64, layers=2, heads=4, kv_heads=2, ffn=128, max_len=64)


def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone(CFG).eval()


def test_cached_steps_equal_one_full_pass_including_several_tokens_at_once():
    bb = backbone()
    x = torch.randn(1, 12, CFG.dim)
    full = bb(x)
    cache = bb.new_cache(max_len=16)
    parts = []
    for size in (5, 3, 1, 1, 2):  # a prefill, a 3-token scoring pass (speculative decoding), single steps
        parts.append(bb(x[:, cache.length:cache.length + size], cache))
        cache.length += size
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_bytes_count_keys_and_values_of_every_layer():
    bb = backbone()
    cache = bb.new_cache(max_len=10)
    cache.length = 7
    assert cache.bytes() == 7 * 2 * CFG.layers * CFG.kv_heads * CFG.head_dim * 4


def test_grouped_query_attention_keeps_fewer_key_value_heads():
    attn = backbone().blocks[0].attn
    assert attn.wk.out_features == CFG.kv_heads * CFG.head_dim < attn.wq.out_features


def test_a_new_lora_adapter_changes_nothing_until_trained():
    bb = backbone()
    tldr = Tldr(bb, TldrConfig(patch_size=4, lora_rank=4))
    x = torch.randn(2, 6, CFG.dim)
    adapted = functional_call(bb, {**dict(bb.named_parameters()), **tldr.lora.merged(bb)}, (x,))
    torch.testing.assert_close(adapted, bb(x))


def test_baked_adapter_equals_the_training_path_and_leaves_the_backbone_untouched():
    bb = backbone()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    tldr = Tldr(bb, TldrConfig(patch_size=2, lora_rank=4))
    with torch.no_grad():
        for b in tldr.lora.b:
            b.normal_(std=0.05)
    x = torch.randn(1, 5, CFG.dim)
    training_path = functional_call(bb, {**dict(bb.named_parameters()), **tldr.lora.merged(bb)}, (x,))
    torch.testing.assert_close(tldr.adapted(bb)(x), training_path, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(training_path, bb(x))
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())


def test_compressor_turns_each_patch_into_one_embedding_and_extractor_reads_through_the_head():
    bb = backbone()
    tldr = Tldr(bb, TldrConfig(patch_size=4))
    tokens = torch.randint(0, CFG.speech_vocab, (3, 8))
    assert tldr.patches(bb, tokens).shape == (3, 2, CFG.dim)
    start = tldr.extractor.start(torch.randn(3, CFG.dim), torch.randn(3, 256))
    states = tldr.extractor(torch.cat([start, bb.speech_embed(tokens[:, :3])], dim=1))
    assert bb.logits(states).shape == (3, 4, CFG.speech_vocab + 1)


def test_a_prompt_lasts_as_long_at_every_token_rate_in_whole_patches_of_every_size():
    assert max_prompt_tokens(25) == 72 and max_prompt_tokens(50) == 144  # 2.88 s
    assert all(max_prompt_tokens(rate) % PROMPT_MULTIPLE == 0 for rate in (25, 50))
