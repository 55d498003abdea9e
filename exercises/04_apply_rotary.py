"""Lesson 4 exercise: rotary position embedding, Phi-1.5's partial "rotate-half" layout.

Copy this file (`cp exercises/04_apply_rotary.py mine.py`), replace the TODO, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson4      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `model.apply_rotary`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import torch


def apply_rotary(x, cos, sin):
    """Rotate the first `dim` channels of every head by their position's angles; keep the rest.

    Contract:
    - x: (B, H, L, head_dim) queries or keys. cos, sin: (B, L, dim) from
      model.rotary_cos_sin, with dim <= head_dim (Phi rotates half of each head: dim = 32
      of 64). The angle of frequency i at position p is p * base^(-2i/dim), and cos/sin
      hold each angle TWICE: columns i and i + dim/2 carry the same angle.
    - Returns a tensor of x's shape and dtype (cast cos/sin to x.dtype).
    - Channels dim ... head_dim-1 pass through unchanged.
    - "Rotate half" (GPT-NeoX) pairing: channel i is rotated together with channel
      i + dim/2, for i < dim/2:
          out_i          = x_i * cos - x_{i+dim/2} * sin
          out_{i+dim/2}  = x_{i+dim/2} * cos + x_i * sin
      (not the interleaved pairing of channels 2i and 2i+1: the released weights were
      trained with rotate-half).
    """
    raise NotImplementedError("TODO: write apply_rotary (lesson 4)")
