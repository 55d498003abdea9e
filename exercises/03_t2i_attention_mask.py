"""Lesson 3 exercise: the omni-attention mask of a text-to-image sequence (Show-o §3.2, Fig. 5b).

Copy this file (`cp exercises/03_t2i_attention_mask.py mine.py`), replace the TODO, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson3      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `attention.t2i_attention_mask`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import torch


def t2i_attention_mask(input_ids, pad_id, soi_id, eoi_id):
    """Who may look at whom in [PAD]*k <|t2i|> BOS caption EOS <|soi|> img ... img <|eoi|>.

    Contract:
    - input_ids (B, L) long -> allowed (B, L, L) bool; allowed[b, i, j] is True when
      position i (the row, the one looking) may attend to position j (the column). Work
      row by row of the batch: each sequence may pad differently.
    - Real rows: causal (j <= i), AND every row inside the picture span may see every
      column inside it, in both directions. The span runs from <|soi|> to the first
      <|eoi|> after it, BOTH boundary tokens included; a row without <|soi|> is plain causal. (Text before the picture is seen by the picture rows
      because it is earlier; text rows never see the picture.)
    - Padding rule (the same for every mask of the project): no real row may see a [PAD]
      column. A [PAD] row sees exactly the [PAD] columns at or before it (causally): its
      output is thrown away, but a row that sees nothing would give NaN in softmax.
    - Every row of a sequence with one picture; the tests use one picture per sequence.
    """
    raise NotImplementedError("TODO: write t2i_attention_mask (lesson 3)")
