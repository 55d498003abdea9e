"""Lesson 2 exercise: lookup-free quantization (MAGVIT-v2, arXiv 2310.05737, §3.1).

Copy this file (`cp exercises/02_lookup_free_quantizer.py mine.py`), replace the TODOs, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson2      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `tokenizer.LookupFreeQuantizer`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import torch
import torch.nn as nn


class LookupFreeQuantizer(nn.Module):
    """Each channel of the encoder's output becomes its sign; the C signs are the code id.

    Contract (the tests and the released weights rely on each point):
    - __init__(cfg): cfg is a tokenizer.ImageTokenizerConfig; use cfg.z_channels (C, the
      bits), cfg.beta, cfg.commitment_weight, cfg.entropy_weight, cfg.entropy_per_code.
      Keep cfg as `self.cfg`. Register two buffers, with exactly these names (the released
      checkpoints store them):
        `power_vals`: (C,) long, the bit values 2^(C-1), ..., 2, 1: channel 0 is the MOST
        significant bit;
        `embedding`: (2^C, C) float, row k the +-1 vector of code k (+1 where bit c of k is
        1, reading bits with power_vals).
    - forward(z), z (B, C, h, w) float -> a tuple, in this order:
        q_st (B, C, h, w): the quantized z, q = +1 where z > 0 else -1 (z == 0 gives -1),
            passed through the straight-through estimator: z + (q - z).detach(), so its
            value is q and its gradient reaches z as if q were z;
        codes (B, h*w) long: sum over c of [z_c > 0] * power_vals[c], positions in
            row-major order (row by row of the h x w grid);
        commitment loss (a scalar tensor): commitment_weight * (mean((sg(q) - z)^2)
            + beta * mean((q_st - sg(z))^2)), sg = detach, means over every element;
        entropy loss (a scalar tensor): entropy_weight * entropy_loss(z).
    - entropy_loss(z) -> scalar, in NATS PER BIT (natural log, divided by C), lower is
      better: (mean per-token entropy) - (batch entropy). Each channel is a two-way choice
      {+1, -1} with logits -(z - 1)^2 and -(z + 1)^2 (softmax over the two; use exact
      log-probabilities, log_softmax). Per-token entropy: the entropy of each channel's
      two-way distribution, averaged over all tokens (the B*h*w positions) and channels. Batch entropy:
        entropy_per_code False: average each channel's distribution over the tokens, take
            each channel's entropy, average over the C channels;
        entropy_per_code True: the probability of each of the 2^C codes is the product of
            its bits' probabilities; average that over the tokens, take the entropy of the
            resulting distribution over 2^C codes, divide by C.
      (clamp probabilities at 1e-12 before a log of an average, so unused codes give 0.)
    - codes_to_vectors(codes, grid): codes (B, grid*grid) long -> (B, C, grid, grid) float,
      the +-1 vectors of the codes (rows of `embedding`), laid out row-major.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        raise NotImplementedError("TODO: register the buffers power_vals and embedding (lesson 2)")

    def forward(self, z):
        raise NotImplementedError("TODO: return q_st, codes, commitment loss, entropy loss (lesson 2)")

    def entropy_loss(self, z):
        raise NotImplementedError("TODO: per-token entropy minus batch entropy, nats per bit (lesson 2)")

    def codes_to_vectors(self, codes, grid):
        raise NotImplementedError("TODO: code ids -> +-1 vectors (B, C, grid, grid) (lesson 2)")
