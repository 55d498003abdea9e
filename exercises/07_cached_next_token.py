"""Lesson 7 exercise: next-token logits with a KV cache (each token runs through the network once).

Copy this file (`cp exercises/07_cached_next_token.py mine.py`), replace the TODOs, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson7      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `sampling.CachedNextToken`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import torch


class CachedNextToken:
    """A drop-in for the naive `lambda ids: model(ids, mask_rule(ids))[:, -1]`.

    Contract:
    - __init__(model, mask_rule, embed_prompt=None): model is a model.Showo; mask_rule(ids)
      gives the full (B, L, L) bool mask of ids (e.g. sampling.understanding_mask_of(cfg),
      or a causal mask). embed_prompt, when given, maps (B, L) ids to (B, L, D) input
      embeddings (the CLIP variant puts picture features into its prompt): only the FIRST
      call (length 0)
      uses it, passing embed_prompt(ids) to forward_with_cache instead of the ids; later
      calls pass the plain new ids. Set the attributes `past = None` (then one (k, v) per
      layer, each (B, H, length, hd)) and `length = 0` (how many tokens the cache holds);
      the tests read both.
    - __call__(ids), ids (B, L) long, the whole sequence so far: the first call holds the
      prompt, each later call the same ids plus one (or more) new tokens on the right.
      Returns the (B, V) logits of the token that comes after ids[:, -1].
    - Run only the tokens not yet cached: ids[:, length:], with
        their rows of the full mask over ALL columns so far: mask_rule(ids)[:, length:]
            (B, new, L);
        their positions: a (B, new) long tensor, length ... L-1 in every row (the same
            in every row: rows are left-padded), on the device of ids;
        model.forward_with_cache(new_ids, allowed, positions, past) -> (hidden
            (B, new, D), the updated past);
      then store the updated past, set length = L, and return
      model.logits(hidden[:, -1]).
    - Exact, not approximate: no earlier row may look at a later token under these masks,
      so cached keys and values never change; the logits equal the naive path's to 1e-4.
    """

    def __init__(self, model, mask_rule, embed_prompt=None):
        raise NotImplementedError("TODO: keep model, mask_rule, embed_prompt; past = None, length = 0 (lesson 7)")

    def __call__(self, ids):
        raise NotImplementedError("TODO: run the new tokens against the cache (lesson 7)")
