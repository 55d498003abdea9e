"""Lesson 6 exercise: classifier-free guidance on logits (Show-o Appendix D, Eq. 12).

Copy this file (`cp exercises/06_guide.py mine.py`), replace the TODO, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson6      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `sampling.guide`; read it after you have tried.
"""


def guide(cond_logits, uncond_logits, w):
    """Push the caption's prediction away from the caption-less one.

    Contract:
    - cond_logits: logits given the caption; uncond_logits: logits given the empty caption;
      any shape, the same for both; w: a float >= 0 (the guidance scale).
    - Returns (1 + w) * cond_logits - w * uncond_logits, same shape. w = 0 gives
      cond_logits back unchanged. Works on logits, NOT on probabilities (no softmax here).
    """
    raise NotImplementedError("TODO: write guide (lesson 6)")
