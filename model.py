"""The Show-o transformer: Phi-1.5 with QK-Norm over one text+image vocabulary, and its two losses.

Show-o (arXiv 2408.12528v7, §3.2 "Architecture") takes a pretrained language model (Phi-1.5), adds
8192 image-token ids and a handful of special tokens to its vocabulary (tokenizer.py),
switches on QK-Norm (a LayerNorm on each head's queries and keys, for stable training) and
trains the SAME network for two jobs:

* next-token prediction (NTP) on text: captioning, VQA and plain language modelling;
* mask-token prediction (MTP) on image tokens: some image tokens are replaced by [MASK]
  and the network predicts the originals (discrete diffusion, MaskGIT style).

The only thing that tells the two apart inside the network is the attention mask
(attention.py). This file holds, top to bottom:

1. `ShowoConfig`, the sizes and where each kind of id sits, with the released sizes as presets;
2. the network: rotary embedding, QK-Norm attention, MLP, the parallel Phi block, `Showo`,
   with an optional key/value cache for fast inference (`forward_with_cache`) and `logits`
   for a chosen part of the vocabulary;
3. the two losses, `ntp_loss` and `mtp_loss` (§3.2 "Training Objectives", Eq. 1 and 2),
   which train.py's combined loss (Eq. 3) calls, and `random_masks` (which image tokens
   MTP hides);
4. `parameter_table`: where the released model's parameters are (`python model.py`).

Loading the released weights into this network is checkpoint.py's job.

Read first: attention.py. Read next: train.py (the recipe that trains it).
"""

import signal
import sys

if __name__ == "__main__":    # Ctrl-C while the imports below load (seconds): one line, not a traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit("\ninterrupted while starting: nothing was done"))

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import attend, attend_explicit
from tokenizer import SPECIAL_TOKENS


# ----------------------------------------------------------------------------------------
# 1. Configuration
# ----------------------------------------------------------------------------------------

@dataclass
class ShowoConfig:
    """Sizes of the transformer and layout of the unified vocabulary.

    Vocabulary (ids in this order):
        [0, llm_vocab_size)                      text tokens (BPE)
        llm_vocab_size + 0 ... + 9               SPECIAL_TOKENS ([PAD], <|soi|>, ...)
        image_offset + c, c in [0, codebook)     image token for code c
        vocab_size - 1                           [MASK]
    """
    # vocabulary
    llm_vocab_size: int = 50295
    codebook_size: int = 8192
    vocab_size: int = 58498
    bos_token_id: int = 50256         # Phi's <|endoftext|> is both BOS and EOS
    eos_token_id: int = 50256
    # sequence layout
    num_vq_tokens: int = 256          # image tokens per picture (16x16 at 256 px)
    max_text_len: int = 128           # caption tokens; the text part has max_text_len+1 slots
    # transformer (Phi-1.5 full size)
    hidden_size: int = 2048
    num_layers: int = 24
    num_heads: int = 32
    intermediate_size: int = 8192
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    dropout: float = 0.0
    # The CLIP-ViT variant (showlab/show-o-w-clip-vit): the width of the CLIP features its
    # `mm_projector` maps into the transformer. 0: no projector (the MAGVIT-only models).
    clip_width: int = 0

    # The special ids follow from llm_vocab_size; [MASK] is the last id.
    @property
    def pad_id(self): return self.llm_vocab_size + SPECIAL_TOKENS.index("[PAD]")
    @property
    def soi_id(self): return self.llm_vocab_size + SPECIAL_TOKENS.index("<|soi|>")
    @property
    def eoi_id(self): return self.llm_vocab_size + SPECIAL_TOKENS.index("<|eoi|>")
    @property
    def t2i_id(self): return self.llm_vocab_size + SPECIAL_TOKENS.index("<|t2i|>")
    @property
    def mmu_id(self): return self.llm_vocab_size + SPECIAL_TOKENS.index("<|mmu|>")
    @property
    def t2v_id(self): return self.llm_vocab_size + SPECIAL_TOKENS.index("<|t2v|>")   # stories (stories.py)
    @property
    def mask_token_id(self): return self.vocab_size - 1
    @property
    def image_offset(self): return self.mask_token_id - self.codebook_size
    @property
    def head_dim(self): return self.hidden_size // self.num_heads
    @property
    def rotary_dim(self): return int(self.partial_rotary_factor * self.head_dim)

    @classmethod
    def preset(cls, name, **overrides):
        """A released size: 'showo-256' (256 px pictures) or 'showo-512' (512 px).

        (train.py's presets describe the small models trained from scratch.)
        """
        presets = {
            "showo-256": dict(num_vq_tokens=256),
            "showo-512": dict(num_vq_tokens=1024),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}: choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    @classmethod
    def from_dict(cls, d):
        """Build from a dict, ignoring keys that are not fields (bookkeeping in files)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------------------
# 2. The network
# ----------------------------------------------------------------------------------------

def rotary_cos_sin(positions, dim, base):
    """cos/sin tables for rotary position embedding (RoPE), each (B, L, dim).

    Frequencies inv_freq_i = 1 / base^(2i/dim); the angle of position p is p * inv_freq,
    repeated twice because the "rotate-half" layout pairs channel i with channel i+dim/2.
    """
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, device=positions.device).float() / dim)
    angles = positions.float()[..., None] * inv_freq                    # (B, L, dim/2)
    angles = torch.cat([angles, angles], dim=-1)                        # (B, L, dim)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate the first `dim` channels of every head; the rest pass through (Phi's partial RoPE).

    x: (B, H, L, head_dim), cos/sin: (B, L, dim). Rotate-half (GPT-NeoX) layout: the
    pair (x_i, x_{i+dim/2}) is rotated by the angle of frequency i.
    """
    dim = cos.shape[-1]
    rot, keep = x[..., :dim], x[..., dim:]
    first, second = rot.chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)       # (B, 1, L, dim)
    return torch.cat([rot * cos + rotated_half * sin, keep], dim=-1)


class QKNormAttention(nn.Module):
    """Multi-head self-attention with QK-Norm (Show-o §3.2 "Architecture").

    Show-o normalises each head's queries and keys with a LayerNorm before RoPE. The paper
    takes this from earlier work rather than measuring it itself: ViT-22B (Dehghani et al.
    2023) found that attention logits grow without it and training diverges, and Chameleon
    (2024) used it to keep mixed text-and-image training stable. With it the logits stay
    bounded, whatever the scale of the projections.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.q_norm = nn.LayerNorm(cfg.head_dim, eps=cfg.layer_norm_eps)
        self.k_norm = nn.LayerNorm(cfg.head_dim, eps=cfg.layer_norm_eps)
        self.out = nn.Linear(d, d)
        self.explicit = False   # True: use attend_explicit (for reading / checking)

    def split_heads(self, x):
        """(B, L, D) -> (B, H, L, head_dim)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.cfg.num_heads, self.cfg.head_dim).transpose(1, 2)

    def forward(self, x, allowed, cos, sin, past=None):
        """x (B, L, D) -> (output (B, L, D), (k, v) of past + these L tokens).

        past: optional (k, v), each (B, H, P, hd), for P earlier tokens; then `allowed` is
        (B, L, P + L): these rows of the full mask, over the earlier columns and their own.
        """
        q = self.q_norm(self.split_heads(self.q(x)))                      # (B, H, L, hd)
        k = self.k_norm(self.split_heads(self.k(x)))                      # (B, H, L, hd)
        v = self.split_heads(self.v(x))                                   # (B, H, L, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            # Earlier tokens' keys/values, already normed and rotated at their own positions:
            # reused as they are, because no earlier row may look at these new tokens.
            k = torch.cat([past[0], k], dim=2)                            # (B, H, P + L, hd)
            v = torch.cat([past[1], v], dim=2)                            # (B, H, P + L, hd)
        y = (attend_explicit if self.explicit else attend)(q, k, v, allowed)
        y = y.transpose(1, 2).reshape(x.shape)                            # (B, L, D)
        return self.out(y), (k, v)


class MLP(nn.Module):
    """Phi's feed-forward: fc1 -> GELU (tanh approximation, 'gelu_new') -> fc2."""

    def __init__(self, cfg):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """One Phi layer. Attention and MLP run in PARALLEL on the same normalised input:

        x = x + attn(ln(x)) + mlp(ln(x))

    (unlike GPT-2's sequential x + attn(ln1(x)), then + mlp(ln2(x))).
    """

    def __init__(self, cfg):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = QKNormAttention(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, allowed, cos, sin, past=None):
        """x (B, L, D) -> (x', (k, v)); `past` and the (k, v) are as in QKNormAttention."""
        h = self.norm(x)
        attended, keys_values = self.attn(h, allowed, cos, sin, past)
        return x + self.dropout(attended) + self.dropout(self.mlp(h)), keys_values


class Showo(nn.Module):
    """Token ids + attention mask -> logits over the unified vocabulary."""

    def __init__(self, cfg: ShowoConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm_f = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)   # not tied to embed
        if cfg.clip_width:
            # CLIP features -> token embeddings: Linear, exact (erf) GELU, Linear (the released
            # modeling_showo.py `mm_projector`; its keys keep their released names).
            self.mm_projector = nn.Sequential(nn.Linear(cfg.clip_width, cfg.hidden_size), nn.GELU(),
                                              nn.Linear(cfg.hidden_size, cfg.hidden_size))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        """GPT-style init (normal, std 0.02; zero biases) for training from scratch."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def use_explicit_attention(self, explicit=True):
        """Switch every layer between the fused SDPA kernel and the written-out softmax."""
        for block in self.blocks:
            block.attn.explicit = explicit

    def forward(self, inputs, allowed, position_ids=None, keep=None):
        """inputs (B, L) ids (or (B, L, D) embeddings, see forward_with_cache), allowed (B, L, L)
        bool -> logits (B, L, V) float32.

        Position ids default to 0 ... L-1 over the padded sequence (as in the reference).
        keep: optional (B, L) bool; then only those positions go through lm_head and the
        result is (K, V) for the K kept positions. Training uses it to skip the logits no
        loss looks at (with a vocabulary of 8k+ ids, the head is a large share of the work).
        """
        batch, length = inputs.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs.device).expand(batch, length)
        hidden, _ = self.forward_with_cache(inputs, allowed, position_ids)
        if keep is not None:
            hidden = hidden[keep]                                         # (K, D)
        return self.lm_head(hidden).float()                               # (B, L, V) or (K, V)

    def forward_with_cache(self, inputs, allowed, position_ids, past=None):
        """Run new tokens against the cached keys/values of earlier ones (fast inference).

        inputs: the L new tokens' ids (B, L), or their embeddings (B, L, D) when some are not
        tokens of the vocabulary (the CLIP variant's picture features); position_ids (B, L);
        past: None, or one
        (k, v) per layer, each (B, H, P, hd), for P earlier tokens; allowed (B, L, P + L):
        the new tokens' rows of the full attention mask. Returns (hidden (B, L, D) after the
        final LayerNorm, present): present is past plus the new tokens, one (k, v) per
        layer, each (B, H, P + L, hd). Feeding the tokens in pieces gives what one pass
        over all of them gives, as long as no earlier row may look at a later piece.
        """
        cos, sin = rotary_cos_sin(position_ids, self.cfg.rotary_dim, self.cfg.rope_theta)
        x = self.embed(inputs) if inputs.dim() == 2 else inputs           # (B, L, D)
        present = []
        for i, block in enumerate(self.blocks):
            x, keys_values = block(x, allowed, cos, sin, None if past is None else past[i])
            present.append(keys_values)
        return self.norm_f(x), present

    def logits(self, hidden, vocab=slice(None)):
        """lm_head on chosen hidden states and vocabulary ids only -> float32 logits.

        The full head is a (V, D) matrix; asking only for the K image codes at the N image
        positions skips the work for logits that would be thrown away.
        """
        return F.linear(hidden, self.lm_head.weight[vocab], self.lm_head.bias[vocab]).float()


# ----------------------------------------------------------------------------------------
# 3. The two objectives (Show-o §3.2 "Training Objectives")
# ----------------------------------------------------------------------------------------

IGNORE = -100   # label value that no loss counts (padding, prompts, image tokens left visible)


def ntp_loss(logits, labels):
    """Next-token prediction, Show-o Eq. 1 (arXiv 2408.12528v7, §3.2 "Training Objectives"):

        L_NTP = sum_i log p_theta(v_i | v_1, ..., v_{i-1}, u_1, ..., u_M)

    v_1..v_N are the text tokens, u_1..u_M the image tokens before them (all of them
    visible). The paper writes the log-likelihood to be maximised; the code minimises its
    negative, averaged over the counted tokens (cross-entropy). Position i predicts label
    i + 1 (`next_token_targets`); IGNORE is skipped.

    labels (B, L), IGNORE where no loss is wanted. logits: (B, L, V), the prediction of
    every position; or (K, V), the predictions of only the K positions that have a target,
    in row-major order (training computes no others: `loss_at_targets`).
    """
    return loss_at_targets(logits, next_token_targets(labels))


def mtp_loss(logits, labels):
    """Mask-token prediction, Show-o Eq. 2 (arXiv 2408.12528v7, §3.2 "Training Objectives"):

        L_MTP = sum_j log p_theta(u_j | u_1, ..., u_*, ..., u_M, v_1, ..., v_N)

    u_* is the [MASK] token that replaced some image tokens; j runs over the masked
    positions only, each predicting its own original token from the unmasked image tokens
    and the caption v_1..v_N. As for NTP, the code minimises the negative mean.

    No shift: labels (B, L) hold the original image token at masked positions, IGNORE
    elsewhere. logits: (B, L, V), or (K, V) at the K masked positions only, as in ntp_loss.
    """
    return loss_at_targets(logits, labels)


def next_token_targets(labels):
    """(B, L) labels -> (B, L) targets: position i must predict labels[i + 1] (NTP's shift);
    the last position predicts nothing."""
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]
    return targets


def loss_at_targets(logits, targets):
    """Cross-entropy averaged over the positions whose target is not IGNORE.

    logits (B, L, V) at every position, or (K, V) at the K positions with a target only.
    The second is how training calls it (Showo.forward's `keep`): with a vocabulary of
    thousands of ids, lm_head is a large share of the work, and a third of the positions
    have no target. Both give the same number (tests/test_model.py). No target at all
    (every sentence of a batch dropped) is a loss of 0, not the NaN of an empty mean.
    """
    kept = targets != IGNORE                                              # (B, L)
    if logits.dim() == 3:
        logits = logits[kept]                                             # (K, V)
    if not kept.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets[kept])


def random_masks(count, n, gen):
    """(count, n) bool: which of n image tokens MTP masks in each of `count` pictures.

    Mask ratio cos(t*pi/2), t ~ U(0, 1): the schedule sampling walks through
    (sampling.mask_schedule), so every step of decoding looks like something trained on. A
    random permutation per row; its first n_masked positions are masked (at least one).
    """
    t = torch.rand(count, generator=gen)
    n_masked = (n * torch.cos(t * math.pi / 2)).round().clamp(min=1)       # (count,)
    return torch.rand(count, n, generator=gen).argsort(1) < n_masked[:, None]


# ----------------------------------------------------------------------------------------
# 4. Looking at the network: python model.py
# ----------------------------------------------------------------------------------------

def parameter_table(cfg):
    """(part, parameters) rows of a Showo built on the meta device (no memory, instant)."""
    with torch.device("meta"):
        model = Showo(cfg)
    block = model.blocks[0]
    count = lambda module: sum(p.numel() for p in module.parameters())   # noqa: E731
    return [
        ("token embedding (text + special + image codes + [MASK])", count(model.embed)),
        ("per layer: q, k, v, out projections", count(block.attn) - count(block.attn.q_norm) - count(block.attn.k_norm)),
        ("per layer: QK-Norm (LayerNorm on each head's q and k)", count(block.attn.q_norm) + count(block.attn.k_norm)),
        ("per layer: MLP fc1, fc2", count(block.mlp)),
        ("per layer: input LayerNorm", count(block.norm)),
        (f"all {cfg.num_layers} layers", count(model.blocks)),
        ("final LayerNorm + lm_head (not tied to the embedding)", count(model.norm_f) + count(model.lm_head)),
        ("total", count(model)),
    ]


def parameter_report(cfg):
    """The lines `python model.py` prints: the sizes, then where the parameters are."""
    table = parameter_table(cfg)
    total, embedding = table[-1][1], table[0][1]
    return "\n".join([
        f"Show-o ({cfg.num_vq_tokens} image tokens a picture): hidden {cfg.hidden_size}, {cfg.num_layers} layers "
        f"x {cfg.num_heads} heads (head {cfg.head_dim}, rotary on its first {cfg.rotary_dim} channels), "
        f"MLP {cfg.intermediate_size}, vocabulary {cfg.vocab_size}",
        *(f"  {part:<58} {params:>14,}" for part, params in table),
        f"A token costs about 2 x {(total - embedding) / 1e9:.2f}B = {2 * (total - embedding) / 1e9:.1f} GFLOP "
        f"forward (every weight but the embedding once, plus attention), 3x that to train; "
        f"the weights take {2 * total / 1e9:.1f} GB in bf16."])


def main(argv=None):
    """`python model.py`: parsed, checked and run by cli.py (errors as one line)."""
    from cli import model_command
    model_command(argv)


if __name__ == "__main__":
    main()
