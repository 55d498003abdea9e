"""The Show-o transformer: Phi-1.5 with QK-Norm over one text+image vocabulary.

Show-o (arXiv 2408.12528v7, §3.2 "Architecture") takes a pretrained language model (Phi-1.5), adds
8192 image-token ids and a handful of special tokens to its vocabulary, switches on
QK-Norm (a LayerNorm on each head's queries and keys, for stable training) and trains the
SAME network for two jobs:

* next-token prediction (NTP) on text: captioning, VQA and plain language modelling;
* mask-token prediction (MTP) on image tokens: some image tokens are replaced by [MASK]
  and the network predicts the originals (discrete diffusion, MaskGIT style).

The only thing that tells the two apart inside the network is the attention mask
(attention.py). This file holds, top to bottom:

1. `ShowoConfig`, the sizes and the token layout (docs/sequences.md), with the released
   sizes as presets;
2. the network: rotary embedding, QK-Norm attention, MLP, parallel Phi block, `Showo`,
   with an optional key/value cache for fast inference (`forward_with_cache`);
3. the two losses, `ntp_loss` and `mtp_loss` (§3.2 "Training Objectives", Eq. 1 and 2);
4. the CLIP vision tower of the released CLIP-ViT variant (`ClipConfig`, `ClipVisionTower`),
   whose continuous picture features replace MAGVIT-v2 codes for understanding;
5. `python model.py`: where the released model's parameters are.

Loading the released weights into this network is checkpoint.py's job.

Read first: attention.py. Read next: data.py (what the tiny models learn from).
"""

import argparse
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import attend, attend_explicit, clip_feature_slots, mmu_attention_mask, mmu_vit_attention_mask


# ----------------------------------------------------------------------------------------
# 1. Configuration
# ----------------------------------------------------------------------------------------

# The ten tokens Show-o appends after the text vocabulary, in the order it adds them.
SPECIAL_TOKENS = ("[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>",
                  "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")


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
    def t2v_id(self): return self.llm_vocab_size + SPECIAL_TOKENS.index("<|t2v|>")   # stories (attention.py)
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

    def embed_with_features(self, ids, features):
        """(B, L) ids -> (B, L, D) embeddings, with (B, P, D) projected picture features in the
        P places between the first <|soi|> and the first <|eoi|> of each row (which hold
        placeholder ids): the CLIP-ViT variant, and the continuous-feature arms of the
        representation ablation (train.py `mmu_features`)."""
        embeddings = self.embed(ids)                                          # (B, L, D)
        slots = clip_feature_slots(ids, self.cfg.soi_id, self.cfg.eoi_id)     # (B, L), P True per row
        embeddings[slots] = features.reshape(-1, features.shape[-1]).to(embeddings.dtype)
        return embeddings

    def understanding_mask(self, ids):
        """The omni-attention mask of understanding sequences (attention.mmu_attention_mask)."""
        return mmu_attention_mask(ids, self.cfg.pad_id, self.cfg.eoi_id)

    def clip_understanding_mask(self, ids):
        """The CLIP-ViT variant's mask (attention.mmu_vit_attention_mask)."""
        return mmu_vit_attention_mask(ids, self.cfg.pad_id, self.cfg.soi_id, self.cfg.eoi_id)

    def next_token_logits(self, ids):
        """(B, L) understanding sequences -> (B, V) logits of token L, recomputing everything."""
        return self(ids, self.understanding_mask(ids))[:, -1]

    @torch.no_grad()
    def generate_text(self, input_ids, max_new_tokens, temperature=0.0, top_k=None,
                      generator=None, stop_at_eos=True, text_only=False):
        """Continue understanding sequences token by token (Show-o §3.2 "Inference Stage").

        The simple way: recompute the whole sequence under the MMU mask for every new
        token (sampling.py's CachedNextToken is the fast way). Arguments and result are
        those of `decode_text`.
        """
        return decode_text(self.next_token_logits, input_ids, max_new_tokens, self.cfg,
                           temperature, top_k, generator, stop_at_eos, text_only)


def decode_text(next_logits, input_ids, max_new_tokens, cfg, temperature=0.0, top_k=None,
                generator=None, stop_at_eos=True, text_only=False):
    """The answer loop, whichever way the logits are computed.

    next_logits: (B, L) ids so far -> (B, V) logits of the next token. Greedy (argmax) when
    temperature is 0. Returns (B, T) new ids, T <= max_new_tokens; with stop_at_eos, a
    finished row is filled with EOS and generation ends once every row has produced EOS.
    text_only forbids image and special ids (the reference picks from the whole
    vocabulary; a small model may stray outside text).
    """
    ids = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = next_logits(ids)                                         # (B, V)
        if text_only:
            logits[:, cfg.llm_vocab_size:] = float("-inf")
        next_id = pick_token(logits, temperature, top_k, generator)       # (B,)
        if stop_at_eos:
            next_id = next_id.masked_fill(done, cfg.eos_token_id)
            done |= next_id == cfg.eos_token_id
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        if done.all():
            break
    return ids[:, input_ids.shape[1]:]


def pick_token(logits, temperature=0.0, top_k=None, generator=None):
    """Choose one id per row of (B, V) logits: argmax, or sample from the (top-k) softmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


# ----------------------------------------------------------------------------------------
# 3. The two objectives (Show-o §3.2 "Training Objectives")
# ----------------------------------------------------------------------------------------

IGNORE = -100   # label value that cross-entropy skips (padding, prompt, unmasked tokens)


def ntp_loss(logits, labels):
    """Next-token prediction, Show-o Eq. 1 (arXiv 2408.12528v7, §3.2 "Training Objectives"):

        L_NTP = sum_i log p_theta(v_i | v_1, ..., v_{i-1}, u_1, ..., u_M)

    v_1..v_N are the text tokens, u_1..u_M the image tokens before them (all of them
    visible). The paper writes the log-likelihood to be maximised; the code minimises its
    negative, averaged over the counted tokens (cross-entropy). Position i predicts label
    i+1; IGNORE is skipped.

    logits (B, L, V), labels (B, L) with IGNORE where no loss is wanted.
    """
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                           ignore_index=IGNORE)


def mtp_loss(logits, labels):
    """Mask-token prediction, Show-o Eq. 2 (arXiv 2408.12528v7, §3.2 "Training Objectives"):

        L_MTP = sum_j log p_theta(u_j | u_1, ..., u_*, ..., u_M, v_1, ..., v_N)

    u_* is the [MASK] token that replaced some image tokens; j runs over the masked
    positions only, each predicting its own original token from the unmasked image tokens
    and the caption v_1..v_N. As for NTP, the code minimises the negative mean.

    No shift: the labels hold the original image token at masked positions, IGNORE elsewhere.
    """
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


# ----------------------------------------------------------------------------------------
# 4. The CLIP vision tower of the CLIP-ViT variant (showlab/show-o-w-clip-vit)
# ----------------------------------------------------------------------------------------
#
# Show-o also released a variant that reads pictures for understanding through a frozen
# CLIP ViT (Radford et al. 2021) instead of MAGVIT-v2 codes: continuous features, which keep
# more of a picture than 8192 codes can (arXiv 2408.12528v7, §4 "Experiments", the ablation
# on vision encoders and representations: CLIP-ViT's features understand best).
# The tower is openai/clip-vit-large-patch14-336; the released code (models/clip_encoder.py)
# runs it through transformers' CLIPVisionModel and keeps the hidden state after its
# second-to-last layer, class token dropped: 24x24 = 576 features of 1,024 per picture.
# modeling_showo.py's `mm_projector` (above, in Showo) maps them to the transformer's width;
# attention.py lays them out in the sequence; sampling.py preprocesses the picture.

@dataclass
class ClipConfig:
    """Sizes of the CLIP vision tower, and CLIP's picture preprocessing.

    Defaults: openai/clip-vit-large-patch14-336, the tower of the released variant.
    num_layers counts the layers that RUN: the features are taken after the second-to-last
    layer of the download, so its last layer (and its post-LayerNorm) are never used and
    not kept (the download's 24 layers -> 23 here).
    """
    # The picture (preprocessor_config.json and the tower's input): the shorter side resized
    # to resize_to, the centre image_size x image_size cut out, then (x / 255 - mean) / std
    # per channel; the tower cuts it into patch_size x patch_size patches.
    image_size: int = 336
    patch_size: int = 14
    resize_to: int = 336
    image_mean: tuple = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple = (0.26862954, 0.26130258, 0.27577711)

    @property
    def num_features(self):
        """P, the features per picture: one per patch."""
        return (self.image_size // self.patch_size) ** 2

    # The transformer over the patches.
    hidden_size: int = 1024
    num_layers: int = 23
    num_heads: int = 16
    intermediate_size: int = 4096
    layer_norm_eps: float = 1e-5


class ClipLayer(nn.Module):
    """One pre-norm ViT layer: x + attn(ln1(x)), then + mlp(ln2(x)) (sequential, unlike Phi's).

    Every patch sees every patch (no mask). The MLP uses CLIP's quick_gelu,
    h * sigmoid(1.702 h), the sigmoid approximation of GELU the OpenAI weights were trained with.
    """

    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, d)

    def forward(self, x):
        """x (B, T, C) -> (B, T, C)."""
        batch, length, width = x.shape
        h = self.norm1(x)
        q, k, v = (proj(h).view(batch, length, self.num_heads, -1).transpose(1, 2)   # (B, H, T, C/H)
                   for proj in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)                           # (B, H, T, C/H)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        h = self.fc1(self.norm2(x))                                                  # (B, T, I)
        return x + self.fc2(h * torch.sigmoid(1.702 * h))


class ClipVisionTower(nn.Module):
    """Preprocessed pixels (B, 3, S, S) -> CLIP features (B, P, C), P = (S / patch)^2.

    Patches are cut and embedded by one strided convolution without bias; a learned class
    token goes first; learned absolute positions are added; then a LayerNorm BEFORE the
    layers (CLIP's "pre_layrnorm"), and the layers. The class token is dropped at the end:
    Show-o reads the P patch features only (the released models/clip_encoder.py,
    `CLIPVisionTower.feature_select`: hidden_states[-2], then [:, 1:]).
    """

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_size
        self.patch_embedding = nn.Conv2d(3, c, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(c))
        self.position_embedding = nn.Embedding(cfg.num_features + 1, c)
        self.pre_norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(ClipLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, pixels):
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixels.to(weight.dtype)).flatten(2).transpose(1, 2)   # (B, P, C)
        first = self.class_embedding.expand(patches.shape[0], 1, -1)                         # (B, 1, C)
        x = torch.cat([first, patches], dim=1) + self.position_embedding.weight             # (B, P + 1, C)
        x = self.pre_norm(x)
        for layer in self.layers:
            x = layer(x)
        return x[:, 1:]                                                                      # (B, P, C)


# ----------------------------------------------------------------------------------------
# 4b. A contrastive image encoder for the tiny world (the representation ablation)
# ----------------------------------------------------------------------------------------
#
# The paper's ablation on vision encoders and representations (arXiv 2408.12528v7, §4
# "Experiments") compares understanding from MAGVIT-v2's discrete codes, MAGVIT-v2's
# continuous features and CLIP-ViT's continuous features. CLIP (Radford et al. 2021) is
# trained on image-TEXT matching, never on reconstructing pixels. This is a CLIP of the
# shapes world: a small convolutional image tower and a bag-of-words text tower, trained
# so that a picture's embedding is closest to its own caption's among the batch (the
# symmetric InfoNCE loss). Its 8x8 grid of features before pooling plays the part of
# CLIP's patch features (train.py `--set mmu_features=contrastive`).

class ContrastiveEncoder(nn.Module):
    """Pictures (B, 3, 32, 32) in [-1, 1] -> an 8x8 grid of `width` features; captions ->
    one embedding each, trained together with `contrastive_loss`."""

    def __init__(self, vocab_size, width=64, embedding=64):
        super().__init__()
        self.features = nn.Sequential(                                      # 32 -> 16 -> 8 pixels a side
            nn.Conv2d(3, width // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1))
        self.image_head = nn.Linear(width, embedding)
        self.words = nn.EmbeddingBag(vocab_size, embedding, mode="mean")   # a caption = the mean of its tokens
        self.text_head = nn.Linear(embedding, embedding)
        self.log_scale = nn.Parameter(torch.tensor(2.66))                   # CLIP's start: log(1 / 0.07)

    def grid(self, pixels):
        """(B, 3, 32, 32) -> (B, 64, width): the features understanding reads (row-major cells)."""
        return self.features(pixels).flatten(2).transpose(1, 2)

    def embed_pictures(self, pixels):
        return F.normalize(self.image_head(self.grid(pixels).mean(1)), dim=-1)      # (B, E)

    def embed_captions(self, ids, offsets):
        """Captions packed as one id list (`ids`) with each caption's start in `offsets`."""
        return F.normalize(self.text_head(self.words(ids, offsets)), dim=-1)        # (B, E)

    def contrastive_loss(self, pixels, ids, offsets):
        """CLIP's symmetric InfoNCE: each picture must pick its own caption among the batch's,
        and each caption its own picture."""
        logits = self.log_scale.exp() * self.embed_pictures(pixels) @ self.embed_captions(ids, offsets).T   # (B, B)
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


# ----------------------------------------------------------------------------------------
# 5. Looking at the network: python model.py
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


def main(argv=None):
    """Print where the released model's 1.45 billion parameters are."""
    parser = argparse.ArgumentParser(description="Where the parameters of a released Show-o are.")
    parser.add_argument("--preset", choices=["showo-256", "showo-512"], default="showo-256",
                        help="the 256 px or the 512 px release")
    cfg = ShowoConfig.preset(parser.parse_args(argv).preset)
    print(f"Show-o ({cfg.num_vq_tokens} image tokens a picture): hidden {cfg.hidden_size}, {cfg.num_layers} layers x {cfg.num_heads} heads "
          f"(head {cfg.head_dim}, rotary on its first {cfg.rotary_dim} channels), MLP {cfg.intermediate_size}, "
          f"vocabulary {cfg.vocab_size}")
    table = parameter_table(cfg)
    for part, params in table:
        print(f"  {part:<58} {params:>14,}")
    total, embedding = table[-1][1], table[0][1]
    print(f"A token costs about 2 x {(total - embedding) / 1e9:.2f}B = {2 * (total - embedding) / 1e9:.1f} GFLOP "
          f"forward (every weight but the embedding once, plus attention), 3x that to train; "
          f"the weights take {2 * total / 1e9:.1f} GB in bf16.")


if __name__ == "__main__":
    main()
