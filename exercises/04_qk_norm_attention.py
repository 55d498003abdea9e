"""Lesson 4 exercise: multi-head self-attention with QK-Norm (Show-o §3.2 "Architecture").

Copy this file (`cp exercises/04_qk_norm_attention.py mine.py`), replace the TODOs, then:

    SHOWO_EXERCISE=mine.py python -m pytest -q -m lesson4      # seconds
    SHOWO_EXERCISE=mine.py python -m pytest -q                 # the final check

The project's own solution is `model.QKNormAttention`; read it after you have tried.
"""

# What a solution needs (unused until you write it):
import torch
import torch.nn as nn

from attention import attend, attend_explicit
from model import apply_rotary


class QKNormAttention(nn.Module):
    """Self-attention whose per-head queries and keys go through a LayerNorm before RoPE.

    Contract (the released weights are loaded by these attribute names):
    - __init__(cfg), cfg a model.ShowoConfig: d = cfg.hidden_size, H = cfg.num_heads,
      hd = cfg.head_dim (= d / H). Keep cfg as `self.cfg`. Layers, with these names:
        `q`, `k`, `v`: nn.Linear(d, d) with bias; `out`: nn.Linear(d, d) with bias;
        `q_norm`, `k_norm`: nn.LayerNorm(hd, eps=cfg.layer_norm_eps), over ONE head's channels.
      And a plain attribute `explicit = False` (True: use attention.attend_explicit instead
      of attention.attend; the tests switch it to compare the two).
    - forward(x, allowed, cos, sin, past=None) -> (output, (k, v)):
        x (B, L, D); allowed (B, L, P + L) bool (attention.py's masks: True = may attend);
        cos, sin (B, L, rotary dim) for apply_rotary; past: None, or (k, v) of P earlier
        tokens, each (B, H, P, hd), already normed and rotated.
      Order: project q, k, v; split heads to (B, H, L, hd) (head h takes channels
      h*hd ... (h+1)*hd - 1); LayerNorm q and k per head; apply_rotary to q and k (not v);
      put `past`'s keys and values BEFORE the new ones along the length; attend
      (attend(q, k, v, allowed) -> (B, H, L, hd)); merge heads back to (B, L, D); `out`.
      Return the output (B, L, D) and the (k, v) over all P + L tokens, (B, H, P + L, hd),
      for the next call's `past`.
    """

    def __init__(self, cfg):
        super().__init__()
        raise NotImplementedError("TODO: build q, k, v, q_norm, k_norm, out and explicit (lesson 4)")

    def forward(self, x, allowed, cos, sin, past=None):
        raise NotImplementedError("TODO: attention with QK-Norm and RoPE (lesson 4)")
