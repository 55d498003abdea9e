"""Lesson 3 exercise: the omni-attention mask of an understanding sequence (Show-o §3.2, Fig. 5a).

Copy this file (`cp exercises/03_mmu_attention_mask.py mine.py`), replace the TODO, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson3      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `attention.mmu_attention_mask`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import torch


def mmu_attention_mask(input_ids, pad_id, eoi_id):
    """Who may look at whom in <|mmu|> <|soi|> img ... img <|eoi|> BOS question answer EOS.

    Contract:
    - input_ids (B, L) long -> allowed (B, L, L) bool; allowed[b, i, j]: row i may attend
      to column j. Work row by row of the batch.
    - Real rows: causal (j <= i), AND every row may see every column from position 0 up
      to and including the FIRST <|eoi|> of its sequence: the task token and the picture
      form one bidirectional prefix (so <|mmu|> at position 0 sees the whole picture).
    - [PAD]s may come last (training) or first (sampling left-pads ragged questions).
      Padding rule: no real row may see a [PAD] column; a [PAD] row sees exactly the [PAD]
      columns at or before it (causally), so softmax never sees an empty row.
    """
    raise NotImplementedError("TODO: write mmu_attention_mask (lesson 3)")
