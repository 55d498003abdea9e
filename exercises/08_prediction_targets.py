"""Lesson 8 exercise: what each position of a training row must predict, for MTP and NTP rows.

Copy this file (`cp exercises/08_prediction_targets.py mine.py`), replace the TODO, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson8      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `train.prediction_targets`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import torch

IGNORE = -100   # no loss at this position (model.IGNORE)


def prediction_targets(part, kind, objective="mtp"):
    """The target of every position, so the loss needs no shift of its own.

    Contract:
    - part: a train.Part; part.labels (B, L) long holds, at each position, the token that
      position is about (IGNORE where there is none). kind: "t2i", "mmu" or "lm";
      objective: "mtp" (Show-o) or "ar" (pictures drawn token by token).
    - Returns a NEW (B, L) long tensor (part.labels is not changed):
        an MTP row (kind "t2i" with objective "mtp"): its own labels, no shift (a masked
            image token predicts itself, Eq. 2);
        every NTP row ("mmu", "lm", and "t2i" under "ar"): position i gets label i + 1
            (Eq. 1), and the last position gets IGNORE.
    """
    raise NotImplementedError("TODO: write prediction_targets (lesson 8)")
