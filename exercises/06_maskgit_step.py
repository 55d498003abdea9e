"""Lesson 6 exercise: one step of MaskGIT parallel decoding (Show-o Appendix D, Eq. 13, Fig. 9).

Copy this file (`cp exercises/06_maskgit_step.py mine.py`), replace the TODO, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson6      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `sampling.maskgit_step`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import math

import torch

from sampling import gumbel_noise, mask_schedule, remasking_noise


def maskgit_step(tokens, logits, step, steps, cfg, temperature=1.0, generator=None):
    """Guess every unknown image token, keep the surest guesses, mask the others again.

    Contract:
    - tokens (B, N) long: the current image TOKENS (code + cfg.image_offset), or
      cfg.mask_token_id where still unknown. logits (B, N, K) over the K image CODES.
      step: 0 ... steps-1; temperature >= 0 scales the re-masking noise; generator: a
      torch.Generator for every random draw.
    - Returns (codes, next_tokens), both (B, N) long:
        codes: this step's full guess as CODES (0 ... K-1): at unknown positions a code
            SAMPLED from softmax(logits) (torch.multinomial; not the argmax), at known
            positions their own code (token - image_offset);
        next_tokens: codes + image_offset, except the positions re-masked below, which
            are cfg.mask_token_id.
    - Which positions are re-masked (this is MaskGIT's central idea):
        confidence of an unknown position = log p(its sampled code); of a known position
            = +infinity (given tokens are never masked again; the paper's appendix writes
            1.0 for a probability, the released code uses infinite confidence);
        add noise: remasking_noise(temperature, step, steps) * gumbel_noise(shape,
            generator, device) (0 at the last step);
        how many stay masked: n = floor(N * mask_schedule(r)), r = (step + 1) / steps.
            The paper's Eq. 13 writes a ceiling; the released code, and this project,
            round DOWN. Then clamp per row, in this order: n = max(1, min(n, unknown - 1)):
            at most unknown - 1, so at least one token is committed each step; at least 1
            (this wins when one token is unknown), so one stays masked until the loop ends
            (the last step's full guess is returned through `codes`);
        re-mask the n LEAST confident positions of each row (known positions, at
            +infinity, are never among them; ties may be broken in any order).
    - For the project's pictures to repeat with your version at the same seed, draw the
      codes first (one torch.multinomial over the (B*N, K) probabilities), then the noise.
    """
    raise NotImplementedError("TODO: write maskgit_step (lesson 6)")
