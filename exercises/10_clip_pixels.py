"""Lesson 10 exercise: CLIP's picture preprocessing, the continuous path's first step (Show-o §4, CLIP-ViT).

Copy this file (`cp exercises/10_clip_pixels.py mine.py`), replace the TODO, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson10     # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `readers.clip_pixels`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import numpy as np
import torch
from PIL import Image

from pictures import read_rgb


def clip_pixels(path, cfg):
    """An image file -> the (1, 3, S, S) float32 tensor a CLIP vision tower reads.

    Contract (transformers' CLIPImageProcessor, which the released CLIP-ViT variant uses):
    - read the file with `read_rgb(path)` (a PIL RGB image; it raises the project's one-line
      error for a file that is not a picture);
    - resize so that the SHORTER side becomes cfg.resize_to, bicubic
      (Image.Resampling.BICUBIC); the longer side becomes
      int(cfg.resize_to * longer / shorter), rounded DOWN; a square stays square;
    - cut out the centre cfg.image_size x cfg.image_size square (S = cfg.image_size): its
      left edge at (new width - S) // 2 and its top at (new height - S) // 2, so an odd
      leftover pixel goes to the right / bottom;
    - uint8 0..255 -> float 0..1 (divide by 255), then per channel (x - mean) / std with
      cfg.image_mean and cfg.image_std (3 values each, R, G, B);
    - channels first, with a batch dimension: (1, 3, S, S), float32.
    """
    raise NotImplementedError("TODO: write clip_pixels (lesson 10)")
