"""The LFQ image tokenizer (tokenizer.py, Part 2): code ids, its two losses, and training it.

The parity tests (test_parity.py) check encoding and decoding against the released code;
these check what only training uses, against numbers worked out by hand.
"""

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from explain import expect_close, expect_equal

import data
from distributed import Process
from evaluate import ComputeMeter
from tokenizer import ImageTokenizer, ImageTokenizerConfig, LookupFreeQuantizer
from train import PRESETS, train_image_tokenizer

pytestmark = pytest.mark.lesson2   # COURSE.md: `python -m pytest -q -m lesson2` checks that lesson's exercise

THREE_BITS = ImageTokenizerConfig(z_channels=3)


def as_map(values):
    """(N, C) values -> the (1, C, 1, N) latent map the quantizer takes."""
    return torch.tensor(values, dtype=torch.float32).T[None, :, None, :]


def test_code_ids_read_the_signs_as_binary_channel_0_first():
    quantizer = LookupFreeQuantizer(THREE_BITS)
    z = as_map([[0.3, -2.0, 0.1], [-0.1, 0.5, 0.7], [-1.0, -1.0, -1.0]])
    q, codes, _, _ = quantizer(z)
    expect_equal(codes.tolist(), [[0b101, 0b011, 0b000]], "codes of z = (+, -, +), (-, +, +), (-, -, -)",
                 "bit c is (z_c > 0) and channel 0 is the MOST significant bit: code = sum bit_c * 2^(C-1-c)")
    expect_equal(q[0, :, 0, 0].tolist(), [1.0, -1.0, 1.0], "q of z = (0.3, -2, 0.1)",
                 "each channel becomes its sign, +1 or -1")
    expect_equal(quantizer.codes_to_vectors(codes[:, :1], 1).flatten().tolist(), [1.0, -1.0, 1.0],
                 "the vector of code 5", "code 5 = 0b101 decodes to (+1, -1, +1), channel 0 first")


def test_decoding_codes_puts_each_cells_vector_in_its_cell():
    """A 2x2 grid of four codes back to a (1, C, 2, 2) map: cell (row, col) holds its own
    code's +-1 vector along the channels."""
    quantizer = LookupFreeQuantizer(THREE_BITS)
    codes = torch.tensor([[0b100, 0b010, 0b001, 0b111]])                    # row-major cells
    vectors = quantizer.codes_to_vectors(codes, 2)
    expect_equal(tuple(vectors.shape), (1, 3, 2, 2), "codes_to_vectors shape", "(B, C, h, w): channels first")
    for cell, code in enumerate(codes[0].tolist()):
        want = [1.0 if code >> (2 - c) & 1 else -1.0 for c in range(3)]
        expect_equal(vectors[0, :, cell // 2, cell % 2].tolist(), want, f"the vector at cell {divmod(cell, 2)}",
                     "each cell keeps its own code's channels: permute (B, h, w, C) to (B, C, h, w), "
                     "a reshape would mix the cells' channels")


def test_a_channel_at_exactly_zero_quantizes_to_minus_one():
    """The rule is bit = (z > 0), q = +1 if z > 0 else -1: a channel at exactly 0 is -1, bit
    0. (torch.sign(0) is 0, a third value a code id cannot hold.)"""
    q, codes, _, _ = LookupFreeQuantizer(THREE_BITS)(as_map([[0.0, 0.5, 0.0]]))
    got = q[0, :, 0, 0].tolist()
    assert got == [-1.0, 1.0, -1.0], (f"z = (0, 0.5, 0) quantized to {got}, expected (-1, 1, -1): a channel at "
                                      f"exactly 0 must become -1 (torch.sign gives 0 there; use z > 0)")
    assert codes.tolist() == [[0b010]], f"z = (0, 0.5, 0) gave code {codes.item()}, expected 0b010 = 2"


def test_commitment_value_and_its_pull_of_one_minus_beta():
    """z = 0.5 everywhere, so q = 1: (1 + beta) * 0.25, and a net pull of (1 - beta) towards q."""
    cfg = replace(THREE_BITS, commitment_weight=1.0, entropy_weight=0.0, beta=0.25)
    z = torch.full((1, 3, 2, 2), 0.5, requires_grad=True)
    _, _, commit, _ = LookupFreeQuantizer(cfg)(z)
    assert commit.item() == pytest.approx(0.25 + 0.25 * 0.25)
    commit.backward()
    # d/dz of mean((1 - z)^2) is -2(1 - z)/n = -1/n per element; the beta term adds +beta/n.
    n = z.numel()
    expect_close(z.grad * n, torch.full_like(z, -1.0 + 0.25), "the commitment gradient on z (times n)",
                 "-1 from ||sg(q) - z||^2 plus +beta from beta ||q_st - sg(z)||^2, which reaches z only "
                 "through the straight-through estimator q_st = z + (q - z).detach()")


def test_entropy_per_bit_and_per_code_worked_by_hand():
    """Two tokens whose 3 bits always agree: (+,+,+) and (-,-,-), each confidently.

    Per token: ~0 (confident). Per bit, every bit is +1 half the time: ln 2 per bit, so
    the loss is -ln 2. Per code, only 2 of the 8 codes are used: ln 2 over 3 bits, so the
    loss is -ln 2 / 3. An undecided token (z = 0) has ln 2 per bit either way: loss 0.
    """
    confident = as_map([[9.0, 9.0, 9.0], [-9.0, -9.0, -9.0]])
    per_bit = LookupFreeQuantizer(THREE_BITS).entropy_loss(confident)
    per_code = LookupFreeQuantizer(replace(THREE_BITS, entropy_per_code=True)).entropy_loss(confident)
    idea = ("loss = per-token entropy - batch entropy (lower is better), in nats (natural log), "
            "averaged per bit")
    expect_close(per_bit, -math.log(2), "per-bit entropy loss of two confident, opposite tokens (-ln 2 = -0.693)",
                 idea + f"; {-1 / math.log(2):.3f} would be bits, +0.693 the wrong sign", atol=1e-6)
    expect_close(per_code, -math.log(2) / 3, "per-code entropy loss, 2 of 8 codes used (-ln 2 / 3 = -0.231)",
                 idea + ": the batch entropy over the 2^C codes is divided by C (-0.693 would be undivided)",
                 atol=1e-6)
    undecided = as_map([[0.0, 0.0, 0.0]])
    for cfg in (THREE_BITS, replace(THREE_BITS, entropy_per_code=True)):
        expect_close(LookupFreeQuantizer(cfg).entropy_loss(undecided), 0.0, "entropy loss of one undecided token",
                     "a token at z = 0 is ln 2 per bit uncertain, and so is the batch it alone makes: 0",
                     atol=1e-6)
    # All 8 codes used once each, confidently: per code as low as per bit (-ln 2 per bit).
    all_codes = as_map([[9.0 if (c >> (2 - b)) & 1 else -9.0 for b in range(3)] for c in range(8)])
    per_code_all = LookupFreeQuantizer(replace(THREE_BITS, entropy_per_code=True)).entropy_loss(all_codes)
    expect_close(per_code_all, -math.log(2), "per-code entropy loss, all 8 codes used once", idea, atol=1e-6)


def test_training_the_tokenizer_lowers_reconstruction_error():
    tc = replace(PRESETS["micro"], vq_steps=30)
    images = np.stack([e.image for e in data.make_examples(64, seed=0)])
    pixels = data.image_to_tensor(images)
    meter = ComputeMeter()
    torch.manual_seed(0)
    untrained = train_image_tokenizer(replace(tc, vq_steps=1, vq_lr=1e-9), images, Process("cpu"), ComputeMeter())
    trained = train_image_tokenizer(tc, images, Process("cpu"), meter)
    with torch.no_grad():
        before = (untrained.decode(untrained.encode(pixels)) - pixels).pow(2).mean().item()
        after = (trained.decode(trained.encode(pixels)) - pixels).pow(2).mean().item()
    assert after < 0.5 * before, f"reconstruction MSE {before:.3f} -> {after:.3f}"
    assert meter.flops("image tokenizer") > 0 and meter.stages["image tokenizer"]["seconds"] > 0


def test_an_lfq_code_reaches_one_cell_around_its_own(capsys):
    """`python evaluate.py reach` on the shipped tokenizer: a changed object changes the codes
    of its own cells and of their neighbours, and hardly any further away."""
    import evaluate
    evaluate.main(["reach", "--ckpt", str(Path(__file__).resolve().parent.parent / "assets" / "tiny.pt")])
    printed = capsys.readouterr().out
    shares = {int(d): float(p) / 100 for d, p in re.findall(r"(\d+) cells from the change: +([\d.]+)%", printed)}
    expect_equal(sorted(shares)[:3], [0, 1, 2], "distances measured", "cells at 0, 1, 2, ... cells from the change")
    assert shares[0] > 0.8 and shares[1] > 0.3, f"codes that change at distance 0 and 1: {shares}"
    assert max(share for d, share in shares.items() if d >= 2) < 0.1, f"codes that change further away: {shares}"


def test_a_local_code_depends_on_its_own_window_only():
    """local_window (the story preset's tokenizer): each 8x8 window of a 16x16 picture is
    encoded on its own, so editing one window changes its 2x2 codes' latents and no other,
    and those latents are the window's own, encoded as a picture."""
    torch.manual_seed(0)
    cfg = ImageTokenizerConfig(resolution=16, z_channels=6, encoder_ch=8, encoder_ch_mult=(1, 2, 2),
                               encoder_res_blocks=(1, 1, 1), decoder_ch=8, decoder_ch_mult=(1, 2, 2),
                               decoder_res_blocks=(1, 1, 1), num_groups=2, mid_attention=False, local_window=8)
    vq = ImageTokenizer(cfg).eval()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    edited = pixels.clone()
    edited[:, :, 0:8, 8:16] = -1.0                                           # the top right window
    with torch.no_grad():
        before, after = vq.encode_latents(pixels), vq.encode_latents(edited)    # (B, z, 4, 4)
        alone = vq.encoder(pixels[:1, :, 8:16, 0:8])[0]                         # the bottom left window, (z, 2, 2)
    moved = (before - after).abs().amax(1) > 0                              # (B, 4, 4)
    expect_equal(moved[0].nonzero().tolist(), [[0, 2], [0, 3], [1, 2], [1, 3]],
                 "latents changed by editing the top right window",
                 "local_window: a code is computed from its own window's pixels only")
    expect_close(before[0, :, 2:4, 0:2], alone, "the bottom left window's latents against that window encoded alone",
                 "local_window encodes every window as a picture of its own, its codes in their places", atol=1e-5)
