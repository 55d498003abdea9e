"""MaskGIT sampling, guidance, inpainting, understanding and the sampling CLI."""

import math
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from explain import expect_equal, explaining
from PIL import Image

import commands
import sampling
from attention import t2i_attention_mask, t2i_sequences
from checkpoint import load_checkpoint
from model import ShowoConfig
from pictures import stitch_extension
from sampling import (FullRecomputeT2I, decode_tokens, generate_image_codes, guide, mask_schedule, maskgit,
                      maskgit_step, shift_codes)
from tensor_files import CheckpointError


@pytest.mark.lesson6
def test_mask_schedule_endpoints():
    assert mask_schedule(0.0).item() == pytest.approx(1.0)
    assert mask_schedule(0.5).item() == pytest.approx(math.cos(math.pi / 4))
    assert mask_schedule(1.0).item() == pytest.approx(0.0, abs=1e-6)


# Masks left after each of 8 steps over 64 tokens, worked out by hand:
# floor(64 * cos(pi/2 * s/8)) for s = 1..8 is 62, 59, 53, 45, 35, 24, 12, 0, and the last
# step keeps one [MASK] (at least one stays masked until the loop ends; its guess is returned).
MASKS_LEFT_64_TOKENS_8_STEPS = [62, 59, 53, 45, 35, 24, 12, 1]


@pytest.mark.lesson6
def test_each_step_leaves_the_scheduled_number_of_masks(micro):
    cfg = micro[0].cfg
    assert cfg.num_vq_tokens == 64
    gen = torch.Generator().manual_seed(0)
    tokens = torch.full((3, 64), cfg.mask_token_id)
    left = []
    for step in range(8):
        logits = torch.randn(3, 64, cfg.codebook_size, generator=gen)
        with explaining(f"step {step + 1} of 8: floor(64 * cos(pi/2 * (step + 1) / 8)) stay masked, "
                        f"n_mask clamped to at least 1 and fewer than are unknown"):
            codes, tokens = maskgit_step(tokens, logits, step, 8, cfg, generator=gen)
        left.append((tokens == cfg.mask_token_id).sum(1).tolist())
        expect_equal(bool(((codes >= 0) & (codes < cfg.codebook_size)).all()), True, f"codes at step {step}",
                     "codes are image code ids 0 ... K-1 (the token id minus image_offset)")
    expect_equal([row[0] for row in left], MASKS_LEFT_64_TOKENS_8_STEPS, "masks left after each of 8 steps",
                 "floor(64 * cos(pi/2 * (step + 1) / 8)) stay masked, at least 1, fewer than were unknown")


@pytest.mark.lesson6
def test_known_tokens_are_never_masked_again_and_each_step_commits_one(micro):
    """With few unknowns the schedule would unmask nothing: every step still commits one token."""
    cfg = micro[0].cfg
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(cfg.codebook_size, (1, 64), generator=gen) + cfg.image_offset
    tokens[0, :3] = cfg.mask_token_id                       # 3 unknowns, 8 steps
    given = tokens[0, 3:].clone()
    for step in range(2):
        codes, tokens = maskgit_step(tokens, torch.randn(1, 64, cfg.codebook_size, generator=gen), step, 8, cfg,
                                     generator=gen)
        expect_equal(codes[0, 3:] + cfg.image_offset, given, f"the given tokens' codes after step {step + 1}",
                     "a known token is kept as it is, never sampled again")
        expect_equal((tokens == cfg.mask_token_id).sum().item(), 2 - step,
                     f"masks left after step {step + 1} of 8, with 3 unknown at the start",
                     "n_mask is clamped: fewer than are unknown now (every step commits at least one) "
                     "and at least 1")
        expect_equal((tokens[0, 3:] == cfg.mask_token_id).nonzero().flatten().tolist(), [],
                     f"given tokens masked again at step {step + 1}",
                     "known tokens have infinite confidence: they are never masked again")


@pytest.mark.lesson6
def test_each_step_commits_the_most_confident_guesses(micro):
    """MaskGIT's central idea: the tokens kept are the ones the model is surest of.

    Two positions get a near-certain code, the rest a flat distribution; with no re-masking
    noise, the first step (64 -> 62 masks) must commit exactly those two. A step that
    re-masks random positions, or the least confident ones, fails here.
    """
    cfg = micro[0].cfg
    tokens = torch.full((1, 64), cfg.mask_token_id)
    logits = torch.zeros(1, 64, cfg.codebook_size)
    sure = [5, 41]
    logits[0, sure, 3] = 30.0                                  # p(code 3) ~ 1 at the two sure positions
    steps = 8
    kept = 64 - int(64 * math.cos(math.pi / 2 / steps))      # the schedule commits 2 at step 0
    assert kept == len(sure)
    codes, tokens = maskgit_step(tokens, logits, 0, steps, cfg, temperature=0.0,
                                 generator=torch.Generator().manual_seed(0))
    committed = (tokens[0] != cfg.mask_token_id).nonzero().flatten().tolist()
    assert committed == sure, f"committed positions {committed}, expected the confident ones {sure}"
    assert codes[0, sure].tolist() == [3, 3]


def test_a_low_code_temperature_draws_the_likeliest_codes(micro):
    """maskgit draws codes from softmax(logits / code_temperature): at 1 (as released) a
    code of probability 0.5 loses about half the draws, near 0 it always wins."""
    cfg = micro[0].cfg
    tokens = torch.full((1, 64), cfg.mask_token_id)
    logits = torch.zeros(1, 64, cfg.codebook_size)
    logits[0, :, 3] = math.log(cfg.codebook_size - 1)         # p(code 3) = 0.5 everywhere
    drawn = {t: maskgit(lambda _: logits, tokens, 1, cfg, generator=torch.Generator().manual_seed(0),
                        code_temperature=t) for t in (1.0, 0.01)}
    share = {t: (codes == 3).float().mean().item() for t, codes in drawn.items()}
    assert 0.3 < share[1.0] < 0.7, f"at code temperature 1, code 3 (p = 0.5) drawn {share[1.0]:.0%} of the time"
    assert share[0.01] == 1.0, f"at code temperature 0.01, code 3 (the likeliest) drawn {share[0.01]:.0%} of the time"


@pytest.mark.lesson6
def test_the_remasking_noise_is_scaled_by_its_schedule_not_by_the_temperature_alone(micro, monkeypatch):
    """At step 2 of 4 the re-masking noise is remasking_noise(1, 1, 4) = (1 - 1/4)(1 - 2/4) =
    0.375 times the Gumbel sample, not the temperature itself. Four guesses, two to mask
    again; one Gumbel value is chosen so that the two scales mask different positions."""
    cfg = micro[0].cfg
    tokens = torch.full((1, 4), cfg.mask_token_id)
    logits = torch.full((1, 4, cfg.codebook_size), -30.0)
    logits[0, :, 0] = torch.tensor([3.0, 1.5, 0.5, -0.5])           # p(code 0): 0.95, 0.82, 0.62, 0.38
    logits[0, :, 1] = 0.0
    step = lambda: maskgit_step(tokens, logits, 1, 4, cfg, temperature=1.0,   # noqa: E731
                                generator=torch.Generator().manual_seed(3))
    noise_of = maskgit_step.__globals__          # where maskgit_step (yours too) finds gumbel_noise
    monkeypatch.setitem(noise_of, "gumbel_noise", lambda shape, *a: torch.zeros(shape))
    codes, _ = step()
    confidence = logits.log_softmax(-1)[0].gather(1, codes[0][:, None]).flatten()      # (4,)
    order = confidence.argsort().tolist()
    lowest, next_lowest = order[0], order[2]
    gap = (confidence[next_lowest] - confidence[lowest]).item()
    bump = torch.zeros(1, 4)
    bump[0, lowest] = 1.5 * gap            # x 0.375 stays below the next one; x 1 passes it
    monkeypatch.setitem(noise_of, "gumbel_noise", lambda shape, *a: bump.clone())
    _, tokens_after = step()
    masked = sorted((tokens_after[0] == cfg.mask_token_id).nonzero().flatten().tolist())
    expected = sorted([lowest, order[1]])
    assert masked == expected, (
        f"masked again {masked}, expected {expected}: the Gumbel noise must be scaled by "
        f"remasking_noise(temperature, step, steps) (0.375 here), which shrinks to 0 by the last step, "
        f"not by the temperature alone")


@pytest.mark.lesson6
def test_each_guess_is_sampled_not_the_argmax(micro):
    """MaskGIT SAMPLES each guess from softmax(logits): flat logits give many different
    codes, and another seed other codes. (The argmax would give code 0 everywhere.)"""
    cfg = micro[0].cfg
    tokens = torch.full((1, 64), cfg.mask_token_id)
    flat = torch.zeros(1, 64, cfg.codebook_size)
    first, _ = maskgit_step(tokens, flat, 0, 8, cfg, generator=torch.Generator().manual_seed(0))
    second, _ = maskgit_step(tokens, flat, 0, 8, cfg, generator=torch.Generator().manual_seed(1))
    assert first.unique().numel() > 16, "every guess is the same code: sample with torch.multinomial, not argmax"
    assert not torch.equal(first, second), "two seeds gave the same guesses: the codes must be sampled"


@pytest.mark.lesson6
def test_steps_must_be_at_least_one(micro):
    model, _, text_tokenizer, _ = micro
    with pytest.raises(ValueError, match="at least one step"):
        generate_image_codes(model, [text_tokenizer.encode("a red circle")], steps=0)


@pytest.mark.lesson6
def test_guidance_is_one_plus_w_cond_minus_w_uncond(micro):
    model, _, text_tokenizer, _ = micro
    cfg = model.cfg
    caption = text_tokenizer.encode("a red circle in the center")
    tokens = torch.randint(cfg.codebook_size, (1, cfg.num_vq_tokens)) + cfg.image_offset
    tokens[:, ::3] = cfg.mask_token_id

    def image_logits(prompt):
        ids = t2i_sequences([prompt], tokens, cfg)
        logits = model(ids, t2i_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id))
        return logits[:, -(cfg.num_vq_tokens + 1):-1, cfg.image_offset:cfg.image_offset + cfg.codebook_size]

    with torch.no_grad():
        guided = FullRecomputeT2I(model, [caption], guidance=2.5)(tokens)
        expected = 3.5 * image_logits(caption) - 2.5 * image_logits([])
    assert torch.allclose(guided, expected, atol=1e-5)
    assert torch.equal(guide(torch.tensor(2.0), torch.tensor(1.0), 2.5), torch.tensor(4.5))


@pytest.mark.lesson6
def test_inpainting_never_changes_a_given_token(micro):
    model, _, text_tokenizer, _ = micro
    cfg = model.cfg
    gen = torch.Generator().manual_seed(1)
    known = torch.randint(cfg.codebook_size, (2, cfg.num_vq_tokens), generator=gen)
    holes = torch.rand(2, cfg.num_vq_tokens, generator=gen) < 0.4
    given = known.masked_fill(holes, -1)
    prompts = [text_tokenizer.encode("a blue square at the top left")] * 2
    codes = generate_image_codes(model, prompts, steps=5, guidance=1.5, generator=gen, known_codes=given)
    assert torch.equal(codes[~holes], known[~holes])
    assert ((codes >= 0) & (codes < cfg.codebook_size)).all()


@pytest.mark.lesson6
def test_same_seed_same_image(micro):
    model, _, text_tokenizer, _ = micro
    prompt = [text_tokenizer.encode("a green triangle in the center")]
    first = generate_image_codes(model, prompt, steps=4, generator=torch.Generator().manual_seed(3))
    second = generate_image_codes(model, prompt, steps=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


@pytest.mark.lesson7
def test_batched_ragged_questions_match_one_at_a_time(micro):
    model, _, text_tokenizer, _ = micro
    cfg = model.cfg
    codes = torch.randint(cfg.codebook_size, (2, cfg.num_vq_tokens), generator=torch.Generator().manual_seed(4))
    questions = [text_tokenizer.encode("how many shapes are there?"), text_tokenizer.encode("describe the image.")]
    together = sampling.answer_questions(model, codes, questions, max_new_tokens=5)
    alone = [sampling.answer_questions(model, codes[i:i + 1], questions[i:i + 1], max_new_tokens=5)[0]
             for i in range(2)]
    assert together == alone
    assert all(t < cfg.llm_vocab_size for answer in together for t in answer)


def test_extension_moves_the_known_half_away_from_the_new_side():
    """Extending right: the picture's right half moves to the left half of the canvas."""
    codes = torch.arange(16).view(1, 16)                    # a 4x4 grid: row r holds 4r ... 4r+3
    right = shift_codes(codes, "right", 4).view(4, 4)
    assert right.tolist() == [[2, 3, -1, -1], [6, 7, -1, -1], [10, 11, -1, -1], [14, 15, -1, -1]]
    left = shift_codes(codes, "left", 4).view(4, 4)
    assert left.tolist() == [[-1, -1, 0, 1], [-1, -1, 4, 5], [-1, -1, 8, 9], [-1, -1, 12, 13]]
    down = shift_codes(codes, "down", 4).view(4, 4)
    assert down.tolist() == [[8, 9, 10, 11], [12, 13, 14, 15], [-1] * 4, [-1] * 4]
    up = shift_codes(codes, "up", 4).view(4, 4)
    assert up.tolist() == [[-1] * 4, [-1] * 4, [0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_extension_puts_the_original_and_the_new_half_in_place(direction):
    """The original stays whole; the new strip is the half of the canvas the model drew."""
    original = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    canvas = 200 + np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3) % 50   # the model's picture
    grown = stitch_extension(original, canvas, direction)
    if direction == "right":
        assert np.array_equal(grown[:, :8], original) and np.array_equal(grown[:, 8:], canvas[:, 4:])
    elif direction == "left":
        assert np.array_equal(grown[:, 4:], original) and np.array_equal(grown[:, :4], canvas[:, :4])
    elif direction == "down":
        assert np.array_equal(grown[:8], original) and np.array_equal(grown[8:], canvas[4:])
    else:
        assert np.array_equal(grown[4:], original) and np.array_equal(grown[:4], canvas[:4])


@pytest.mark.lesson7
def test_the_answer_loop_stops_each_row_at_eos():
    """Row 0 says EOS at its 2nd token, row 1 at its 4th: row 0 is padded with EOS, row 1 goes
    on, and the loop ends when every row is done, long before max_new_tokens."""
    cfg = ShowoConfig(llm_vocab_size=10, codebook_size=4, vocab_size=25, eos_token_id=9)
    plans = torch.tensor([[3, 9, 5, 5, 5, 5], [4, 4, 4, 9, 6, 6]])
    calls = []

    def next_logits(ids):
        step = ids.shape[1] - 2
        calls.append(step)
        return F.one_hot(plans[:, step], cfg.vocab_size).float()

    new = decode_tokens(next_logits, torch.zeros(2, 2, dtype=torch.long), max_new_tokens=50, eos_id=cfg.eos_token_id)
    assert new.tolist() == [[3, 9, 9, 9], [4, 4, 4, 9]]
    assert calls == [0, 1, 2, 3]


def test_checkpoint_round_trip_gives_identical_logits(micro):
    model, _, _, path = micro
    loaded, vq, text_tokenizer, _ = load_checkpoint(path)
    ids = torch.randint(model.cfg.llm_vocab_size, (2, 12))
    allowed = torch.ones(12, 12, dtype=torch.bool).tril().expand(2, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(ids, allowed), loaded(ids, allowed))
    assert text_tokenizer.encode("a red circle") == micro[2].encode("a red circle")


def test_a_compressed_or_cut_checkpoint_file(micro, tmp_path):
    """torch.save stores tensors uncompressed and we read them in place; a zip that another
    tool compressed still loads the same, and a cut-off file is one clear error."""
    model, _, _, path = micro
    compressed = tmp_path / "compressed.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(compressed, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            target.writestr(member.filename, source.read(member))
    loaded, _, _, _ = load_checkpoint(compressed)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:-4096])
    with pytest.raises(CheckpointError, match="incomplete|not a readable"):
        load_checkpoint(cut)


# ---- the command line ------------------------------------------------------------------

def run_cli(*args):
    """Run sampling.main and return (exit message or None)."""
    try:
        sampling.main([str(a) for a in args])
    except SystemExit as stop:
        return str(stop.code)
    return None


def test_cli_writes_one_image_and_a_grid(micro, tmp_path):
    path = micro[3]
    assert run_cli("--ckpt", path, "--prompt", "a red circle in the center", "--steps", 3,
                   "--out", tmp_path / "one.png", "--device", "cpu") is None
    assert Image.open(tmp_path / "one.png").size == (32, 32)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle in the center\n\na blue square at the top left\n")
    assert run_cli("--ckpt", path, "--prompts-file", prompts, "--steps", 2, "--out-dir", tmp_path / "many") is None
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["000.png", "001.png", "grid.png"]


def test_cli_inpaints_extends_and_answers(micro, tmp_path, capsys):
    path = micro[3]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[:16] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert run_cli("--ckpt", path, "--image", tmp_path / "in.png", "--mask", tmp_path / "mask.png",
                   "--prompt", "a red circle at the top left", "--steps", 2, "--out", tmp_path / "fill.png") is None
    assert Image.open(tmp_path / "fill.png").size == (32, 32)
    assert run_cli("--ckpt", path, "--image", tmp_path / "in.png", "--extend", "right",
                   "--prompt", "a red circle", "--steps", 2, "--out", tmp_path / "wide.png") is None
    assert Image.open(tmp_path / "wide.png").size == (48, 32)
    assert run_cli("--ckpt", path, "--image", tmp_path / "in.png", "--question", "how many shapes are there?",
                   "--max-new-tokens", 3) is None
    assert capsys.readouterr().out.strip() != ""


def test_cli_errors_are_one_clear_line(micro, tmp_path):
    path = micro[3]
    message = run_cli("--ckpt", tmp_path / "missing.pt", "--prompt", "a red circle")
    assert message.startswith("error:") and "not found" in message and "\n" not in message
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    assert "not a readable torch checkpoint" in run_cli("--ckpt", tmp_path / "foreign.pt", "--prompt", "x")
    assert "shorten it" in run_cli("--ckpt", path, "--prompt", "a red circle " * 40)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert "cannot read image" in run_cli("--ckpt", path, "--image", tmp_path / "bad.png", "--question", "what?")
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in run_cli("--ckpt", path, "--prompt", "a red circle", "--device", "cuda")


def test_bad_options_stop_before_any_work(micro, tmp_path, monkeypatch):
    """Each of these is refused with one line before the checkpoint is even read."""
    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the options were checked")
    monkeypatch.setattr(commands, "load_checkpoint", never)
    path = micro[3]
    cases = {
        "--steps 0: the MaskGIT steps must be a number in [1, 1000]": ["--prompt", "a", "--steps", "0"],
        "does not exist": ["--prompt", "a", "--out", tmp_path / "missing" / "a.png"],
        "ending in .png": ["--prompt", "a", "--out", tmp_path / "a.txt"],
        "--image needs --mask": ["--image", tmp_path / "x.png", "--prompt", "a"],
        "--question needs --image": ["--question", "what?"],
        "not found": ["--image", tmp_path / "none.png", "--question", "what?"],
        "give --mask or --extend, not both": ["--image", path, "--mask", path, "--extend", "left", "--prompt", "a"],
    }
    (tmp_path / "x.png").write_bytes(b"")
    for expected, args in cases.items():
        message = run_cli("--ckpt", path, *args)
        assert message and expected in message and "\n" not in message, (args, message)


@pytest.mark.lesson6
def test_remasking_noise_compounds_as_in_the_released_sampler():
    """4 steps: the running temperature is multiplied by 0.75, 0.5, 0.25, 0 in turn."""
    assert [sampling.remasking_noise(1.0, step, 4) for step in range(4)] == [0.75, 0.375, 0.09375, 0.0]
    assert sampling.remasking_noise(2.0, 0, 4) == 1.5
