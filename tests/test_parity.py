"""Parity with the published Show-o code: same weights in, same numbers out.

The fixture directory (SHOWO_REFERENCE_DIR, default ../shared/fixtures/official_tiny) holds
a random-weight checkpoint in the released layout (showo/, phi/, magvit/) and
reference.pt, the outputs the reference implementation produced for it (MANIFEST.json
lists them). Everything here is read from those files, so any directory of the same
format (other sizes, layer counts, vocabularies) must pass too.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from attention import lm_attention_mask, mmu_attention_mask, t2i_attention_mask
from checkpoint import load_checkpoint, load_released_image_tokenizer, load_released_showo, main
from sampling import mask_schedule
from tokenizer import TextTokenizer

DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "official_tiny"
TOLERANCE = 1e-4


def reference_dir():
    """The fixture folder; skip only when the variable is unset and the default is absent."""
    chosen = os.environ.get("SHOWO_REFERENCE_DIR")
    if chosen is None and not DEFAULT_DIR.is_dir():
        pytest.skip(f"no parity fixture: set SHOWO_REFERENCE_DIR (default {DEFAULT_DIR} is absent)")
    return Path(chosen or DEFAULT_DIR)


@pytest.fixture(scope="module")
def ref():
    directory = reference_dir()
    assert (directory / "reference.pt").exists(), f"{directory}/reference.pt missing"
    return torch.load(directory / "reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def showo():
    directory = reference_dir()
    return load_released_showo(directory / "showo", directory / "phi")


@pytest.fixture(scope="module")
def vq():
    return load_released_image_tokenizer(reference_dir() / "magvit")


def assert_close_on_real_tokens(logits, expected, input_ids, pad_id):
    """Max |difference| over positions whose input is not padding."""
    assert logits.shape == expected.shape
    real = input_ids != pad_id
    worst = (logits - expected).abs()[real].max().item()
    assert worst <= TOLERANCE, f"max abs difference {worst:.2e} > {TOLERANCE}"


def test_token_layout_matches_manifest(showo):
    manifest = json.loads((reference_dir() / "MANIFEST.json").read_text()).get("token_layout", {})
    cfg = showo.cfg
    ours = {"llm_vocab_size": cfg.llm_vocab_size, "pad_id": cfg.pad_id, "soi": cfg.soi_id,
            "eoi": cfg.eoi_id, "t2i": cfg.t2i_id, "mmu": cfg.mmu_id, "bos": cfg.bos_token_id,
            "eos": cfg.eos_token_id, "image_offset": cfg.image_offset,
            "mask_token_id": cfg.mask_token_id, "vocab_size": cfg.vocab_size}
    for name, value in manifest.items():
        if name in ours:
            assert ours[name] == value, f"{name}: ours {ours[name]} vs manifest {value}"


def test_t2i_mask_and_logits(ref, showo):
    cfg, ids = showo.cfg, ref["t2i.input_ids"]
    allowed = t2i_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id)
    real = ids != cfg.pad_id
    assert torch.equal(allowed[real], ref["t2i.allowed"][real])
    with torch.no_grad():
        assert_close_on_real_tokens(showo(ids, allowed), ref["t2i.logits"], ids, cfg.pad_id)


def test_classifier_free_guidance_logits(ref, showo):
    cfg, cond, uncond = showo.cfg, ref["t2i.input_ids"], ref["cfg.uncond_input_ids"]
    w = ref["cfg.guidance_scale"].item()
    with torch.no_grad():
        cond_logits = showo(cond, t2i_attention_mask(cond, cfg.pad_id, cfg.soi_id, cfg.eoi_id))
        uncond_logits = showo(uncond, t2i_attention_mask(uncond, cfg.pad_id, cfg.soi_id, cfg.eoi_id))
    guided = (1 + w) * cond_logits - w * uncond_logits
    # Compare where both sequences hold real tokens (the image span and the end of the text).
    both_real = (cond != cfg.pad_id) & (uncond != cfg.pad_id)
    worst = (guided - ref["cfg.logits"]).abs()[both_real].max().item()
    assert worst <= TOLERANCE, f"max abs difference {worst:.2e}"


@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit"])
def test_mmu_mask_logits_and_greedy_answer(ref, showo, explicit):
    cfg, ids = showo.cfg, ref["mmu.input_ids"]
    allowed = mmu_attention_mask(ids, cfg.pad_id, cfg.eoi_id)
    real = ids != cfg.pad_id
    assert torch.equal(allowed[real], ref["mmu.allowed"][real])
    showo.use_explicit_attention(explicit)
    try:
        with torch.no_grad():
            assert_close_on_real_tokens(showo(ids, allowed), ref["mmu.logits"], ids, cfg.pad_id)
        expected = ref["mmu.greedy_next8"].view(1, -1)
        # No early stop: the reference generated exactly this many tokens.
        answer = showo.generate_text(ids, expected.shape[1], stop_at_eos=False)
    finally:
        showo.use_explicit_attention(False)
    assert torch.equal(answer, expected), f"greedy {answer.tolist()} vs {expected.tolist()}"


def test_lm_logits(ref, showo):
    cfg, ids = showo.cfg, ref["lm.input_ids"]
    with torch.no_grad():
        logits = showo(ids, lm_attention_mask(ids, cfg.pad_id))
    assert_close_on_real_tokens(logits, ref["lm.logits"], ids, cfg.pad_id)


def test_image_tokenizer_encode_codes_decode(ref, vq):
    pixels = ref["vq.pixels"]
    with torch.no_grad():
        latents = vq.encoder(pixels)
    worst = (latents - ref["vq.encoder_out"]).abs().max().item()
    assert worst <= TOLERANCE, f"encoder output off by {worst:.2e}"
    assert torch.equal(vq.encode(pixels), ref["vq.codes"])
    worst = (vq.decode(ref["vq.codes"]) - ref["vq.decoded"]).abs().max().item()
    assert worst <= TOLERANCE, f"decoded pixels off by {worst:.2e}"


def test_mask_schedule(ref):
    assert torch.allclose(mask_schedule(ref["schedule.t"]), ref["schedule.cosine"], atol=1e-6)


def test_convert_writes_one_file_that_loads_with_the_same_logits(ref, tmp_path):
    """`python model.py convert` end to end: released folders -> showo.pt -> same logits."""
    directory = reference_dir()
    tokenizer_dir = tmp_path / "phi"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "config.json").write_text((directory / "phi" / "config.json").read_text())
    # A BPE small enough for the fixture's text vocabulary stands in for Phi's files.
    llm_vocab_size = json.loads((directory / "showo" / "config.json").read_text())["llm_vocab_size"]
    TextTokenizer.train(["a red circle at the top left"] * 3, min(llm_vocab_size, 260)).save(tokenizer_dir)
    out = tmp_path / "showo.pt"
    main(["convert", "--showo", str(directory / "showo"), "--magvit", str(directory / "magvit"),
          "--tokenizer", str(tokenizer_dir), "--out", str(out)])
    model, vq, _, _ = load_checkpoint(out)
    cfg, ids = model.cfg, ref["t2i.input_ids"]
    with torch.no_grad():
        logits = model(ids, t2i_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id))
    assert_close_on_real_tokens(logits, ref["t2i.logits"], ids, cfg.pad_id)
    assert torch.equal(vq.encode(ref["vq.pixels"]), ref["vq.codes"])
