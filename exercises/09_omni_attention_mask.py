"""Lesson 9 exercise: the one omni-attention rule, for any interleaved sequence (Show-o §3.2, Fig. 5).

Copy this file (`cp exercises/09_omni_attention_mask.py mine.py`), replace the TODO, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson9      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `attention.omni_attention_mask`; read it after you have tried.
Your version is used everywhere the project builds a story's mask (training rows, and
both the cached and the naive story writers of sampling.py).
"""

# What a solution needs (unused until you write it):
import torch


def omni_attention_mask(blocks, is_pad):
    """Who may look at whom in a sequence of text spans and picture spans, in any order.

    Contract:
    - blocks (B, L) long: 0 at a causal (text) position; k >= 1 at a position of the k-th
      bidirectional block (a picture, <|soi|> to <|eoi|> included). The positions of one
      block are contiguous. is_pad (B, L) bool: True at [PAD] positions.
    - Returns allowed (B, L, L) bool; allowed[b, i, j] is True when position i (the row, the
      one looking) may attend to position j (the column).
    - Real rows: every row sees every EARLIER column and itself (j <= i); a row of block
      k >= 1 ALSO sees every column of the same block k, later ones included. Block-0
      rows (text) see nothing after them: two text positions are never "the same block".
    - Padding rule (the same for every mask of the project): no real row may see a [PAD]
      column. A [PAD] row sees exactly the [PAD] columns at or before it (causally): its
      output is thrown away, but a row that sees nothing would give NaN in softmax.
    - Work on every sequence of the batch at once: each may have its own blocks and pads.
    """
    raise NotImplementedError("TODO: write omni_attention_mask (lesson 9)")
