"""Lesson 5 exercise: the mask-token prediction loss (Show-o §3.2 "Training Objectives", Eq. 2).

Copy this file (`cp exercises/05_mtp_loss.py mine.py`), replace the TODO, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson5      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `model.mtp_loss`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import torch
import torch.nn.functional as F

IGNORE = -100   # the label of positions with no loss (model.IGNORE)


def mtp_loss(logits, labels):
    """Mean cross-entropy of predicting each masked image token from the whole sequence.

    Contract:
    - logits (B, L, V) float, labels (B, L) long: the ORIGINAL image token at each
      [MASK]ed position, IGNORE (-100) everywhere else (visible image tokens, text, pads).
    - NO shift: position i's logits predict label i (a masked token predicts itself).
    - Returns a scalar tensor: the mean over all counted positions of the whole batch, in
      nats; IGNORE positions are skipped, not counted (none counted: NaN, as F.cross_entropy).
    """
    raise NotImplementedError("TODO: write mtp_loss (lesson 5)")
