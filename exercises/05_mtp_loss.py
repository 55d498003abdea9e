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

    Contract (this is the function training calls: train.mixed_loss):
    - labels (B, L) long: the ORIGINAL image token at each [MASK]ed position, IGNORE
      (-100) everywhere else (visible image tokens, text, pads).
    - NO shift: position i's logits predict label i (a masked token predicts itself).
    - logits come in one of two shapes: (B, L, V) float, a prediction at every position;
      or (K, V), the predictions of only the K masked positions, in row-major order.
    - Returns a scalar tensor: the mean over all counted positions of the whole batch, in
      nats; IGNORE positions are skipped, not counted; with none at all the loss is 0.
    """
    raise NotImplementedError("TODO: write mtp_loss (lesson 5)")
