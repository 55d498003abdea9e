"""Parity with the published Show-o code: same weights in, same numbers out.

The fixture directory (SHOWO_REFERENCE_DIR, default: the copy in tests/fixtures/official_tiny) holds
a random-weight checkpoint in the released layout (showo/, phi/, magvit/) and
reference.pt, the outputs the reference implementation produced for it (MANIFEST.json
lists them). Everything here is read from those files, so any directory of the same
format (other sizes, layer counts, vocabularies) must pass too.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import commands
import sampling
from attention import (lm_attention_mask, mmu_attention_mask, mmu_sequences, omni_attention_mask, picture_blocks,
                       t2i_attention_mask)
from bpe import TextTokenizer
from checkpoint import (RELEASED_QUESTION_TEMPLATE, RELEASED_SAMPLING, load_checkpoint, load_released_image_tokenizer,
                        load_released_showo, main)
from commands import phrase_question
from model import ShowoConfig
from sampling import (answer_questions, decode_tokens, generate_image_codes, guide, mask_schedule, next_token_function,
                      understanding_mask_of)
from tensor_files import CheckpointError, read_weights, write_safetensors
from tokenizer import SPECIAL_TOKENS

DEFAULT_DIR = Path(__file__).resolve().parent / "fixtures" / "official_tiny"
TOLERANCE = 1e-4


def reference_dir():
    """The fixture folder: $SHOWO_REFERENCE_DIR, else the copy shipped with the tests."""
    directory = Path(os.environ.get("SHOWO_REFERENCE_DIR", DEFAULT_DIR))
    assert directory.is_dir(), f"no parity fixture at {directory}: set SHOWO_REFERENCE_DIR to one"
    return directory


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
    manifest = json.loads((reference_dir() / "MANIFEST.json").read_text())
    assert "token_layout" in manifest, "MANIFEST.json has no token_layout to check against"
    cfg = showo.cfg
    special = {name: cfg.llm_vocab_size + SPECIAL_TOKENS.index(f"<|{name}|>")
               for name in ("soi", "eoi", "sov", "eov", "t2i", "mmu", "t2v", "v2v", "lvg")}
    ours = {"llm_vocab_size": cfg.llm_vocab_size, "pad_id": cfg.pad_id, **special,
            "bos": cfg.bos_token_id, "eos": cfg.eos_token_id, "image_offset": cfg.image_offset,
            "mask_token_id": cfg.mask_token_id, "vocab_size": cfg.vocab_size}
    assert (cfg.soi_id, cfg.eoi_id, cfg.t2i_id, cfg.mmu_id) == (special["soi"], special["eoi"],
                                                                special["t2i"], special["mmu"])
    assert set(manifest["token_layout"]) == set(ours), "the manifest and this test list different ids"
    for name, value in manifest["token_layout"].items():
        assert ours[name] == value, f"{name}: ours {ours[name]} vs manifest {value}"


@pytest.mark.lesson3
@pytest.mark.lesson4
def test_t2i_mask_and_logits(ref, showo):
    cfg, ids = showo.cfg, ref["t2i.input_ids"]
    allowed = t2i_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id)
    real = ids != cfg.pad_id
    assert torch.equal(allowed[real], ref["t2i.allowed"][real])
    with torch.no_grad():
        assert_close_on_real_tokens(showo(ids, allowed), ref["t2i.logits"], ids, cfg.pad_id)


@pytest.mark.lesson6
def test_classifier_free_guidance_logits(ref, showo):
    cfg, cond, uncond = showo.cfg, ref["t2i.input_ids"], ref["cfg.uncond_input_ids"]
    w = ref["cfg.guidance_scale"].item()
    with torch.no_grad():
        cond_logits = showo(cond, t2i_attention_mask(cond, cfg.pad_id, cfg.soi_id, cfg.eoi_id))
        uncond_logits = showo(uncond, t2i_attention_mask(uncond, cfg.pad_id, cfg.soi_id, cfg.eoi_id))
    guided = guide(cond_logits, uncond_logits, w)
    # Compare where both sequences hold real tokens (the image span and the end of the text).
    both_real = (cond != cfg.pad_id) & (uncond != cfg.pad_id)
    worst = (guided - ref["cfg.logits"]).abs()[both_real].max().item()
    assert worst <= TOLERANCE, f"max abs difference {worst:.2e}"


@pytest.mark.lesson3
@pytest.mark.lesson4
@pytest.mark.lesson7
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
        answer = decode_tokens(next_token_function(showo, understanding_mask_of(cfg), naive=True), ids, expected.shape[1])
    finally:
        showo.use_explicit_attention(False)
    assert torch.equal(answer, expected), f"greedy {answer.tolist()} vs {expected.tolist()}"


@pytest.mark.lesson3
@pytest.mark.lesson4
def test_lm_logits(ref, showo):
    cfg, ids = showo.cfg, ref["lm.input_ids"]
    with torch.no_grad():
        logits = showo(ids, lm_attention_mask(ids, cfg.pad_id))
    assert_close_on_real_tokens(logits, ref["lm.logits"], ids, cfg.pad_id)


@pytest.mark.lesson2
def test_image_tokenizer_encode_codes_decode(ref, vq):
    pixels = ref["vq.pixels"]
    with torch.no_grad():
        latents = vq.encoder(pixels)
    worst = (latents - ref["vq.encoder_out"]).abs().max().item()
    assert worst <= TOLERANCE, f"encoder output off by {worst:.2e}"
    assert torch.equal(vq.encode(pixels), ref["vq.codes"])
    worst = (vq.decode(ref["vq.codes"]) - ref["vq.decoded"]).abs().max().item()
    assert worst <= TOLERANCE, f"decoded pixels off by {worst:.2e}"


@pytest.mark.lesson6
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


def test_sharded_safetensors_with_an_index_load_the_same_weights(ref, tmp_path):
    """A download split over shards (model-0000N-of-0000M.safetensors + index.json) reads the same."""
    directory = reference_dir()
    tensors = {name: stored.load() for name, stored in read_weights(directory / "showo").items()}
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        write_safetensors(tmp_path / shard, {name: tensors[name] for name in shard_names})
    index = {"weight_map": {name: shard for shard, shard_names in shards.items() for name in shard_names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((directory / "showo" / "config.json").read_text())
    sharded = load_released_showo(tmp_path, directory / "phi")
    cfg, ids = sharded.cfg, ref["t2i.input_ids"]
    with torch.no_grad():
        logits = sharded(ids, t2i_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id))
    assert_close_on_real_tokens(logits, ref["t2i.logits"], ids, cfg.pad_id)
    (tmp_path / shards.popitem()[0]).unlink()
    with pytest.raises(CheckpointError, match="named in the index is missing"):
        load_released_showo(tmp_path, directory / "phi")


# ---- the converted checkpoint, used as the authors use it -------------------------------

def converted(tmp_path, dtype="fp32", num_vq_tokens=None):
    """`python checkpoint.py convert` on the fixture (optionally asking for another image grid)."""
    directory = reference_dir()
    showo_dir = directory / "showo"
    if num_vq_tokens is not None:
        showo_dir = tmp_path / "showo"
        showo_dir.mkdir()
        config = json.loads((directory / "showo" / "config.json").read_text())
        (showo_dir / "config.json").write_text(json.dumps({**config, "num_vq_tokens": num_vq_tokens}))
        (showo_dir / "pytorch_model.bin").symlink_to(directory / "showo" / "pytorch_model.bin")
    tokenizer_dir = tmp_path / "phi"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "config.json").write_text((directory / "phi" / "config.json").read_text())
    llm_vocab_size = json.loads((directory / "showo" / "config.json").read_text())["llm_vocab_size"]
    TextTokenizer.train(["what shape is at the top left?"] * 3, min(llm_vocab_size, 260)).save(tokenizer_dir)
    out = tmp_path / f"showo-{dtype}.pt"
    main(["convert", "--showo", str(showo_dir), "--magvit", str(directory / "magvit"),
          "--tokenizer", str(tokenizer_dir), "--out", str(out), "--dtype", dtype])
    return out


def test_the_image_grid_follows_the_transformers_image_tokens(tmp_path):
    """Asked for 64 image tokens, the converted tokenizer reads pictures into an 8x8 grid."""
    model, vq, _, _ = load_checkpoint(converted(tmp_path, num_vq_tokens=64))
    assert model.cfg.num_vq_tokens == 64 and vq.cfg.grid_size == 8
    assert vq.cfg.resolution == 8 * vq.cfg.downsample
    picture = torch.zeros(1, 3, vq.cfg.resolution, vq.cfg.resolution)
    assert vq.encode(picture).shape == (1, 64)


def test_a_picture_on_the_wrong_grid_is_one_clear_error(ref, showo):
    """A code grid 4x the model's is refused with the model's own numbers (any fixture size)."""
    n = showo.cfg.num_vq_tokens                             # the fixture's grid, e.g. 4x4 = 16
    side = math.isqrt(n)
    codes = ref["vq.codes"].reshape(-1, n)[:1]
    wrong = torch.cat([codes] * 4, dim=1)                   # 4N codes for an N-token model
    with pytest.raises(ValueError, match=rf"tokenized to \({4 * n},\) codes, but this model reads {n} "
                                         rf"\({side}x{side}\)"):
        answer_questions(showo, wrong, [[1, 2]], max_new_tokens=2)
    with pytest.raises(ValueError, match=f"this model reads {n}"):
        generate_image_codes(showo, [[1, 2]], steps=2, known_codes=wrong)


def test_the_released_question_template_gives_the_published_ids():
    """inference_mmu.py asks "USER: \\n" + question + " ASSISTANT:" after <|eoi|> <|endoftext|>."""
    gpt2 = TextTokenizer.from_files(Path(__file__).resolve().parent / "fixtures" / "gpt2_bpe")
    cfg = ShowoConfig()                                     # the released vocabulary layout
    question = phrase_question(gpt2, cfg, RELEASED_QUESTION_TEMPLATE, "what is this?")
    # USER : ' ' '\n' what ' is' ' this' ? ' ASS' IST ANT :   (ids of GPT-2's vocab.json)
    assert question == [29904, 25, 220, 198, 10919, 318, 428, 30, 24994, 8808, 8643, 25]
    row, _ = mmu_sequences(torch.zeros(1, 256, dtype=torch.long) + cfg.image_offset, [question], cfg)
    assert row[0, :2].tolist() == [50301, 50296]            # <|mmu|> <|soi|>
    assert row[0, 258:260].tolist() == [50297, 50256]       # <|eoi|> <|endoftext|>
    assert row[0, 260:].tolist() == question


def test_stored_defaults_are_used_when_no_flag_is_given(tmp_path, monkeypatch):
    out = converted(tmp_path)
    extra = load_checkpoint(out)[3]
    assert extra["question_template"] == RELEASED_QUESTION_TEMPLATE
    assert extra["sampling"] == RELEASED_SAMPLING[256]      # the fixture draws 64 px pictures: the 256 px commands
    used = {}

    def spy(model, captions, objective, settings, *args, **kwargs):
        used.setdefault("calls", []).append((settings["steps"], settings["guidance"]))
        return torch.zeros(len(captions), model.cfg.num_vq_tokens, dtype=torch.long)
    monkeypatch.setattr(commands, "generate_pictures", spy)
    picture, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(picture)
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(mask)          # repaint everything
    common = ["--ckpt", str(out), "--device", "cpu", "--prompt", "a"]
    sampling.main([*common, "--out", str(tmp_path / "t2i.png")])
    sampling.main([*common, "--image", str(picture), "--mask", str(mask), "--out", str(tmp_path / "i.png")])
    sampling.main([*common, "--image", str(picture), "--extend", "left", "--out", str(tmp_path / "e.png")])
    sampling.main([*common, "--steps", "3", "--guidance", "0.5", "--out", str(tmp_path / "flags.png")])
    expected = [(RELEASED_SAMPLING[256][task]["steps"], RELEASED_SAMPLING[256][task]["guidance"])
                for task in ("t2i", "inpainting", "extrapolation")]
    assert used["calls"] == expected + [(3, 0.5)]


def test_bf16_on_cpu_matches_float32_and_answers_alike(ref, showo, tmp_path):
    """The path CUDA runs (weights and activations in bfloat16), tried on the CPU.

    bfloat16 keeps about 3 significant digits, so its logits stay within a few thousandths
    of float32's. Where float32's best token leads the next by more than twice that
    error, bfloat16 must pick the same token. (A random-weight fixture has some steps
    where the top two logits are closer than bfloat16 can tell apart; those prove nothing
    either way and are left out, but most steps are clear.)
    """
    model, _, _, _ = load_checkpoint(converted(tmp_path, "bf16"), dtype=torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16
    cfg, prompt, greedy = showo.cfg, ref["mmu.input_ids"], ref["mmu.greedy_next8"].view(1, -1)
    sequence = torch.cat([prompt, greedy], dim=1)           # teacher forcing: the float32 answer
    allowed = mmu_attention_mask(sequence, cfg.pad_id, cfg.eoi_id)
    steps = slice(prompt.shape[1] - 1, -1)                  # the positions that predict the answer
    with torch.no_grad():
        exact = showo(sequence, allowed)[0, steps]
        low = model(sequence, allowed)[0, steps]
    error = (low - exact).abs().max().item()
    assert error <= 0.02 * exact.abs().max().item(), f"bf16 logits off by {error:.4f}"
    assert torch.equal(exact.argmax(-1), greedy[0])         # our float32 answer is the reference's
    best_two = exact.topk(2, dim=-1).values
    clear = best_two[:, 0] - best_two[:, 1] > 2 * error
    assert clear.sum() >= 4, "too few steps with a clear winner to compare"
    assert torch.equal(low.argmax(-1)[clear], greedy[0][clear]), \
        f"bf16 picks {low.argmax(-1).tolist()} vs float32 {greedy[0].tolist()} (compared at {clear.tolist()})"


@pytest.mark.parametrize("task", ["t2i", "mmu", "lm"])
def test_the_general_omni_attention_rule_gives_the_reference_masks(ref, showo, task):
    """attention.omni_attention_mask, on each task's layout, equals the published code's mask
    on every real row (its pad rows follow its own convention; the fixture stores no text
    mask, so text is compared with lm_attention_mask, itself checked by its logits)."""
    cfg, ids = showo.cfg, ref[f"{task}.input_ids"]
    blocks = picture_blocks(ids, cfg.soi_id, cfg.eoi_id, prefix_until_first_eoi=task == "mmu")
    real = ids != cfg.pad_id
    expected = ref[f"{task}.allowed"] if task != "lm" else lm_attention_mask(ids, cfg.pad_id)
    assert torch.equal(omni_attention_mask(blocks, ~real)[real], expected[real])
