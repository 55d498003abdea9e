"""The transformer's parts (model.py) on examples small enough to work out by hand.

test_parity.py checks the whole network against the released code; these say WHICH part
is wrong when something is, and are the checks for the exercises of COURSE.md lessons 4-5.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from explain import expect_close, expect_equal

from model import IGNORE, MLP, QKNormAttention, ShowoConfig, apply_rotary, mtp_loss, ntp_loss, rotary_cos_sin


def rotate(x, position, dim=4, base=10000.0):
    """apply_rotary on one head vector x (head_dim,) at one position."""
    cos, sin = rotary_cos_sin(torch.tensor([[position]]), dim, base)
    return apply_rotary(x.view(1, 1, 1, -1), cos, sin).flatten()


@pytest.mark.lesson4
def test_rotary_turns_channel_pairs_i_and_i_plus_half_by_position_times_frequency():
    """head_dim 8, rotary on the first 4 channels: frequencies 1 and 1/100 (base 10000).

    Rotate-half layout: channel 0 pairs with channel 2 (frequency 1), channel 1 with
    channel 3 (frequency 1/100); channels 4-7 pass through untouched.
    """
    e = torch.eye(8)
    assert torch.allclose(rotate(e[0], 1), torch.tensor([math.cos(1), 0, math.sin(1), 0, 0, 0, 0, 0]), atol=1e-6)
    assert torch.allclose(rotate(e[2], 1), torch.tensor([-math.sin(1), 0, math.cos(1), 0, 0, 0, 0, 0]), atol=1e-6)
    assert torch.allclose(rotate(e[1], 100), torch.tensor([0, math.cos(1), 0, math.sin(1), 0, 0, 0, 0]), atol=1e-5)
    assert torch.equal(rotate(e[5], 37), e[5])
    assert torch.equal(rotate(e[0], 0), e[0])


@pytest.mark.lesson4
def test_rotary_scores_depend_only_on_the_distance():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 8, generator=gen)
    near = rotate(q, 7) @ rotate(k, 4)
    far = rotate(q, 107) @ rotate(k, 104)
    assert near.item() == pytest.approx(far.item(), abs=1e-4)
    assert near.item() != pytest.approx((rotate(q, 7) @ rotate(k, 5)).item(), abs=1e-4)


@pytest.mark.lesson4
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    """LayerNorm on each head's q and k: scaling the q/k projections changes nothing.

    (Without QK-Norm, 10x larger q and k make the softmax 100x sharper.)
    """
    torch.manual_seed(0)
    cfg = ShowoConfig(hidden_size=16, num_heads=2, num_layers=1, intermediate_size=64)
    layer = QKNormAttention(cfg)
    for norm in (layer.q_norm, layer.k_norm):                # not the identity LayerNorm of a fresh layer
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = torch.randn(1, 5, 16)
    allowed = torch.ones(1, 5, 5, dtype=torch.bool).tril()
    cos, sin = rotary_cos_sin(torch.arange(5)[None], cfg.rotary_dim, cfg.rope_theta)
    with torch.no_grad():
        before, _ = layer(x, allowed, cos, sin)
        for projection in (layer.q, layer.k):
            projection.weight *= 10
            projection.bias *= 10
        after, _ = layer(x, allowed, cos, sin)
    assert torch.allclose(before, after, atol=1e-4)


@pytest.mark.lesson5
def test_ntp_loss_shifts_by_one_and_skips_ignore():
    """Position 0 predicts label 1 (class 0), position 1 predicts label 2 (class 1).

    Position 0's logits (0, 0) give p = 1/2; position 1's (0, ln 3) give p(1) = 3/4.
    """
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3)], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE, 0, 1]])
    expected = (math.log(2) + math.log(4 / 3)) / 2
    expect_close(ntp_loss(logits, labels), expected, "ntp_loss of one row, labels (IGNORE, 0, 1)",
                 "position i predicts label i + 1 (the shift), the last position predicts nothing, IGNORE is "
                 "skipped: (ln 2 + ln 4/3) / 2 = 0.490", atol=1e-6)


@pytest.mark.lesson5
def test_mtp_loss_has_no_shift_and_counts_masked_places_only():
    """Only position 1 is masked (label 1): its logits (0, ln 3) give p = 3/4."""
    logits = torch.tensor([[[9.0, -9.0], [0.0, math.log(3)], [-9.0, 9.0]]])
    labels = torch.tensor([[IGNORE, 1, IGNORE]])
    expect_close(mtp_loss(logits, labels), math.log(4 / 3), "mtp_loss of one row, only position 1 masked",
                 "a masked position predicts its OWN label (no shift), and only masked positions count: "
                 "ln 4/3 = 0.288 (a shift like NTP's would give 18)", atol=1e-6)


@pytest.mark.lesson5
@pytest.mark.parametrize("loss, shift", [(ntp_loss, 1), (mtp_loss, 0)], ids=["ntp", "mtp"])
def test_losses_on_targets_only_equal_plain_cross_entropy(loss, shift):
    """Training hands the losses the logits of the target positions only, (K, V): the same
    number as the full (B, L, V) logits, and as a plain cross-entropy written out here."""
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(11, (3, 7))
    labels[torch.rand(3, 7) < 0.4] = IGNORE
    labels[1] = IGNORE                                         # a row with nothing to learn
    predicted, wanted = logits[:, :logits.shape[1] - shift], labels[:, shift:]
    plain = F.cross_entropy(predicted.reshape(-1, 11), wanted.reshape(-1), ignore_index=IGNORE)
    targets = torch.full_like(labels, IGNORE)
    targets[:, :labels.shape[1] - shift] = wanted
    kept = logits[targets != IGNORE]                            # (K, V), row-major
    idea = ("the mean over EVERY counted target of the batch (not a mean of per-row means), IGNORE not "
            "counted, " + ("position i predicting label i + 1" if shift else "each position its own label"))
    expect_close(loss(logits, labels), plain, "the loss of 3 rows with (B, L, V) logits", idea, atol=1e-5)
    expect_close(loss(kept, labels), plain, "the same loss given (K, V) logits, the target positions only",
                 "training passes the logits of the K positions that have a target, in row-major order; " + idea,
                 atol=1e-5)


@pytest.mark.lesson5
@pytest.mark.parametrize("loss", [ntp_loss, mtp_loss], ids=["ntp", "mtp"])
def test_a_batch_with_no_target_is_a_loss_of_zero_not_nan(loss):
    logits = torch.randn(2, 4, 5, requires_grad=True)
    value = loss(logits, torch.full((2, 4), IGNORE))
    expect_equal(value.item(), 0.0, "the loss of a batch with no target",
                 "with nothing to predict the loss is 0, not the NaN of an empty mean (a batch whose sentences "
                 "were all dropped must not stop training)")
    value.backward()                                           # and training can still step
    assert logits.grad is not None and not logits.grad.any()


@pytest.mark.lesson4
def test_the_mlp_uses_phis_tanh_gelu():
    """Phi-1.5's activation is 'gelu_new', the tanh approximation; exact GELU differs by up
    to ~1e-3, too little for random-weight logits to show, so check the MLP itself."""
    mlp = MLP(ShowoConfig(hidden_size=4, intermediate_size=4))
    with torch.no_grad():
        for layer in (mlp.fc1, mlp.fc2):
            layer.weight.copy_(torch.eye(4))
            layer.bias.zero_()
    x = torch.tensor([-3.0, -1.0, 0.5, 2.0])
    tanh_gelu = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    assert torch.allclose(mlp(x), tanh_gelu, atol=1e-7), "the MLP's GELU is not the tanh approximation"
