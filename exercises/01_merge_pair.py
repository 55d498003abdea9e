"""Lesson 1 exercise: merge one pair everywhere (the inner step of byte-level BPE).

Copy this file (`cp exercises/01_merge_pair.py mine.py`), replace the TODO, then check it:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson1      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the whole suite, the final check

The project's own solution is `bpe.merge_pair`; read it after you have tried.
"""


def merge_pair(sequence: list, pair: tuple, merged) -> list:
    """Replace every occurrence of the adjacent `pair` in `sequence` by the single item `merged`.

    Contract (the tests check each point):
    - sequence: a list of items (ints while training, token strings while encoding);
      pair: a tuple (left, right) of two items; merged: the item that replaces them.
    - Returns a NEW list; `sequence` itself is not changed.
    - EVERY occurrence is merged, not only the first: [1, 2, 3, 1, 2] with (1, 2) -> 9
      gives [9, 3, 9]. (Merging only the first would make BPE training learn the same
      merge again and again.)
    - Scan left to right; a merged item is not looked at again, so occurrences never
      overlap: ["a", "a", "a"] with ("a", "a") -> "aa" gives ["aa", "a"], and [1, 1, 1, 1]
      with (1, 1) -> 7 gives [7, 7].
    - The pair is ordered: (1, 2) does not match 2 followed by 1.
    - No occurrence: the same items, in a new list.
    """
    raise NotImplementedError("TODO: write merge_pair (lesson 1)")
