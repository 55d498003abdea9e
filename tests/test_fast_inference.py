"""Fast inference: the cached paths give the naive paths' numbers.

CachedPromptT2I must return FullRecomputeT2I's guided logits, and CachedNextToken the
logits of the whole sequence recomputed (next_token_function(naive=True)), within 1e-4 in float32, so that the same seed gives
the same tokens both ways. Read first: sampling.py, then model.py (forward_with_cache).
"""

import numpy as np
import pytest
import torch
from explain import expect_close, expect_equal, explaining
from PIL import Image

import sampling
from attention import lm_attention_mask, mmu_sequences
from sampling import (CachedNextToken, CachedPromptT2I, FullRecomputeT2I, decode_tokens, generate_image_codes,
                      generate_image_codes_ar, left_pad, next_token_function, understanding_mask_of)

pytestmark = pytest.mark.lesson7   # COURSE.md: `python -m pytest -q -m lesson7` checks that lesson's exercise

TOLERANCE = 1e-4
CAPTIONS = ["a red circle in the center", "a blue square"]     # ragged, both shorter than the slots
QUESTIONS = ["what?", "what is it?", "how many shapes are there?"]   # ragged


@pytest.fixture(params=["sdpa", "explicit"])
def attention(request, micro):
    """Run a test with the fused kernel and with the written-out softmax (both take (B, Lq, Lk) masks)."""
    model = micro[0]
    model.use_explicit_attention(request.param == "explicit")
    yield request.param
    model.use_explicit_attention(False)


def image_tokens(cfg, batch, seed, known_fraction):
    """(B, N) image tokens: random known codes, the rest [MASK] (inpainting when known_fraction > 0)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(cfg.codebook_size, (batch, cfg.num_vq_tokens), generator=gen) + cfg.image_offset
    known = torch.rand(batch, cfg.num_vq_tokens, generator=gen) < known_fraction
    return torch.where(known, codes, cfg.mask_token_id)


def question_batch(model, text_tokenizer):
    """Left-padded understanding prompts for ragged QUESTIONS about random images."""
    cfg = model.cfg
    codes = torch.randint(cfg.codebook_size, (len(QUESTIONS), cfg.num_vq_tokens),
                          generator=torch.Generator().manual_seed(5))
    questions = [text_tokenizer.encode(q) for q in QUESTIONS]
    padded, lengths = mmu_sequences(codes + cfg.image_offset, questions, cfg)
    assert len(set(lengths)) == len(QUESTIONS), "the questions must have different lengths"
    return left_pad([row[:n] for row, n in zip(padded.tolist(), lengths)], cfg.pad_id)


# ---- the cache itself ------------------------------------------------------------------

def test_feeding_tokens_in_pieces_equals_one_pass(micro):
    model = micro[0]
    ids = torch.randint(model.cfg.llm_vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    allowed = lm_attention_mask(ids, model.cfg.pad_id)
    positions = torch.arange(12).expand(2, 12)
    with torch.no_grad():
        whole = model(ids, allowed)
        first, past = model.forward_with_cache(ids[:, :7], allowed[:, :7, :7], positions[:, :7])
        second, present = model.forward_with_cache(ids[:, 7:], allowed[:, 7:], positions[:, 7:], past)
    pieces = model.logits(torch.cat([first, second], dim=1))
    assert (pieces - whole).abs().max().item() <= TOLERANCE
    assert [k.shape[2] for k, v in present] == [12] * model.cfg.num_layers


# ---- text-to-image ---------------------------------------------------------------------

@pytest.mark.parametrize("guidance", [0.0, 1.75], ids=["no-guidance", "guidance"])
@pytest.mark.parametrize("known_fraction", [0.0, 0.4], ids=["t2i", "inpainting"])
def test_t2i_cached_logits_match_full_recompute(micro, attention, guidance, known_fraction):
    model, _, text_tokenizer, _ = micro
    cfg = model.cfg
    captions = [text_tokenizer.encode(c) for c in CAPTIONS]
    with torch.no_grad():
        naive = FullRecomputeT2I(model, captions, guidance)
        fast = CachedPromptT2I(model, captions, guidance)
        # Several calls: the same prompt cache must serve every step.
        for seed in range(3):
            tokens = image_tokens(cfg, len(captions), seed, known_fraction + 0.2 * seed)
            expected, got = naive(tokens), fast(tokens)
            assert got.shape == (len(captions), cfg.num_vq_tokens, cfg.codebook_size)
            worst = (got - expected).abs().max().item()
            assert worst <= TOLERANCE, f"call {seed}: max abs difference {worst:.2e}"


def test_t2i_prompt_cache_drops_common_padding_and_never_grows(micro):
    model, _, text_tokenizer, _ = micro
    cfg = model.cfg
    captions = [text_tokenizer.encode(c) for c in CAPTIONS]
    longest = max(len(c) for c in captions) + 3       # <|t2i|> BOS caption EOS
    assert longest < cfg.max_text_len + 1, "the test needs padding to drop"
    with torch.no_grad():
        fast = CachedPromptT2I(model, captions, guidance=1.75)
        fast(image_tokens(cfg, 2, 0, 0.0))
        fast(image_tokens(cfg, 2, 1, 0.5))
    for k, v in fast.prompt_kv:
        assert k.shape == v.shape == (4, cfg.num_heads, longest, cfg.head_dim)


@pytest.mark.parametrize("known_fraction", [0.0, 0.4], ids=["t2i", "inpainting"])
def test_t2i_same_seed_same_codes_both_ways(micro, known_fraction):
    model, _, text_tokenizer, _ = micro
    cfg = model.cfg
    captions = [text_tokenizer.encode(c) for c in CAPTIONS]
    known = image_tokens(cfg, 2, 7, known_fraction) - cfg.image_offset
    known[known == cfg.codebook_size] = -1             # [MASK] -> "fill this in"
    results = [generate_image_codes(model, captions, steps=6, guidance=1.75, known_codes=known,
                                    generator=torch.Generator().manual_seed(11), naive=naive)
               for naive in (True, False)]
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0][known >= 0], known[known >= 0])


# ---- understanding ---------------------------------------------------------------------

def test_mmu_cached_logits_and_greedy_tokens_match_naive(micro, attention):
    model, _, text_tokenizer, _ = micro
    ids = question_batch(model, text_tokenizer)
    steps = 6
    rule = understanding_mask_of(model.cfg)
    with explaining(CACHE_CONTRACT):
        naive, fast = (decode_tokens(next_token_function(model, rule, naive), ids, steps) for naive in (True, False))
    expect_equal(fast, naive, "the greedy answer tokens with the cache", CACHE_CONTRACT)
    # Logits along that answer, each step fed only the token the cache has not seen.
    answered = torch.cat([ids, naive], dim=1)
    cached = CachedNextToken(model, understanding_mask_of(model.cfg))
    with torch.no_grad(), explaining(CACHE_CONTRACT):
        for end in range(ids.shape[1], answered.shape[1] + 1):
            expected = model(answered[:, :end], rule(answered[:, :end]))[:, -1]
            expect_close(cached(answered[:, :end]), expected, f"the cached logits after {end} tokens",
                         ("the prompt's logits differ: " if end == ids.shape[1] else "the prompt's were right, a "
                          "new token's are not: ") + CACHE_CONTRACT, atol=TOLERANCE)


CACHE_CONTRACT = ("run only the new tokens ids[:, length:], with their rows of the full mask over ALL columns "
                  "so far (mask_rule(ids)[:, length:], (B, new, L)) and their own positions length ... L-1, "
                  "then store the past and set length = L")


def test_kv_cache_grows_by_one_position_per_generated_token(micro):
    model, _, text_tokenizer, _ = micro
    cfg = model.cfg
    ids = question_batch(model, text_tokenizer)
    prompt = ids.shape[1]
    cached = CachedNextToken(model, understanding_mask_of(model.cfg))
    expected_shape = (len(QUESTIONS), cfg.num_heads, prompt, cfg.head_dim)
    before = []
    with torch.no_grad(), explaining(CACHE_CONTRACT):
        for step in range(5):
            next_id = cached(ids).argmax(dim=-1)
            expect_equal(cached.length, prompt + step, f"cache.length after call {step + 1}",
                         "length counts the tokens the cache holds: set it to ids.shape[1] after each call")
            for k, v in cached.past:
                want = expected_shape[:2] + (prompt + step,) + expected_shape[3:]
                expect_equal((tuple(k.shape), tuple(v.shape)), (want, want), f"one layer's (k, v) after call "
                             f"{step + 1}", "each call adds only the new tokens' keys/values to the past")
            if step:
                # Tokens already cached keep their keys/values: only one column is new.
                expect_equal(all(torch.equal(k[:, :, :-1], old_k) for (k, _), old_k in zip(cached.past, before)),
                             True, "the keys of the tokens cached before", "keys already cached never change: "
                             "run only ids[:, length:] against the past")
            before = [k for k, _ in cached.past]
            ids = torch.cat([ids, next_id[:, None]], dim=1)


def test_answer_questions_fast_equals_naive(micro):
    model, _, text_tokenizer, _ = micro
    cfg = model.cfg
    codes = torch.randint(cfg.codebook_size, (3, cfg.num_vq_tokens), generator=torch.Generator().manual_seed(6))
    questions = [text_tokenizer.encode(q) for q in QUESTIONS]
    naive = sampling.answer_questions(model, codes, questions, max_new_tokens=6, naive=True)
    fast = sampling.answer_questions(model, codes, questions, max_new_tokens=6)
    assert fast == naive
    assert sum(len(a) for a in naive) > 0


# ---- the command line ------------------------------------------------------------------

def test_cli_naive_flag_gives_the_same_picture_and_answer(micro, tmp_path, capsys):
    path = micro[3]
    pictures = []
    for flag in ([], ["--naive"]):
        out = tmp_path / f"t2i{len(flag)}.png"
        sampling.main(["--ckpt", str(path), "--prompt", CAPTIONS[0], "--steps", "3", "--out", str(out), *flag])
        pictures.append(np.asarray(Image.open(out)))
    assert np.array_equal(pictures[0], pictures[1])
    Image.fromarray(pictures[0]).save(tmp_path / "in.png")
    answers = []
    for flag in ([], ["--naive"]):
        capsys.readouterr()
        sampling.main(["--ckpt", str(path), "--image", str(tmp_path / "in.png"), "--question", QUESTIONS[1],
                       "--max-new-tokens", "4", *flag])
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1]


@pytest.mark.parametrize("guidance", [0.0, 2.0], ids=["no-guidance", "guidance"])
def test_ar_cached_decoder_draws_the_naive_decoders_tokens(micro, guidance):
    model, _, text_tokenizer, _ = micro
    captions = [text_tokenizer.encode(c) for c in CAPTIONS]
    draws = [generate_image_codes_ar(model, captions, guidance, temperature=1.0, top_k=20,
                                     generator=torch.Generator().manual_seed(7), naive=naive)
             for naive in (False, True)]
    assert draws[0].shape == (2, model.cfg.num_vq_tokens)
    assert torch.equal(draws[0], draws[1])
