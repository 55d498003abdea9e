"""Lesson 5 exercise: the next-token prediction loss (Show-o §3.2 "Training Objectives", Eq. 1).

Copy this file (`cp exercises/05_ntp_loss.py mine.py`), replace the TODO, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson5      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `model.ntp_loss`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import torch
import torch.nn.functional as F

IGNORE = -100   # the label of positions with no loss (model.IGNORE)


def ntp_loss(logits, labels):
    """Mean cross-entropy of predicting each next token.

    Contract (this is the function training calls: train.mixed_loss):
    - labels (B, L) long, IGNORE (-100) where no loss is wanted.
    - Position i's logits predict label i + 1 (the shift): the last position predicts
      nothing, and label 0 is never a target.
    - logits come in one of two shapes: (B, L, V) float, a prediction at every position;
      or (K, V), the predictions of only the K positions that HAVE a target after the
      shift, in row-major order (training skips lm_head elsewhere: it is much of the work).
    - Returns a scalar tensor: the MEAN over all counted targets of the whole batch (not a
      mean of per-row means; rows with more targets weigh more), in nats (natural log).
      IGNORE targets are skipped, not counted; with none at all the loss is 0 (not NaN:
      a batch whose sentences were all dropped must not break training).
    """
    raise NotImplementedError("TODO: write ntp_loss (lesson 5)")
