"""Unified prompting and omni-attention: how a Show-o sequence is laid out, and who may look at whom.

Show-o (arXiv 2408.12528v7, §3.2 "Unified Prompting" and "Omni-Attention Mechanism", Fig. 4
and 5) runs ONE transformer over sequences that mix text tokens and image tokens. Text is
modelled autoregressively, so a text token may only look backwards (causal attention).
Image tokens are modelled by masked ("discrete diffusion") prediction, so every image
token may look at every other image token of the same picture, in both directions. A
single boolean matrix per sequence, `allowed[b, row, col]` = "position `row` may attend to
position `col`", expresses both at once; that is the whole trick, and this file builds
those matrices from token ids. In order:

1. the layouts (docs/sequences.md):
   * t2i (text-to-image):  [PAD]*k <|t2i|> BOS caption EOS <|soi|> img ... img <|eoi|>
   * mmu (understanding):  <|mmu|> <|soi|> img ... img <|eoi|> BOS question answer EOS
   * lm (plain text):      BOS text EOS
2. the one rule of omni-attention, `omni_attention_mask`: text causal, each picture a
   bidirectional block; then the three masks of Fig. 5 as that rule on the three layouts.
   Everywhere, no real token may look at a [PAD] token; a pad row looks at the pads up to
   itself (its output is never used, but a row that sees nothing would produce NaNs);
3. the attention computation itself: `attend` (PyTorch's fused
   `scaled_dot_product_attention`) and `attend_explicit` (the same maths written out as
   the paper's softmax(QK^T/sqrt(d)) so a reader can see it; the tests check they agree).

Stories (stories.py) and the CLIP-ViT variant (readers.py) add layouts of their own on the
same rule. `python attention.py` prints small example masks (`--png DIR` draws them).

Read first: tokenizer.py. Read next: model.py (the transformer that uses these masks).
"""

import signal
import sys

if __name__ == "__main__":    # Ctrl-C while the imports below load (seconds): one line, not a traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit("\ninterrupted while starting: nothing was done"))

import math

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------
# 1. Laying out the sequences: unified prompting (Show-o §3.2 "Unified Prompting", Fig. 4;
# docs/sequences.md)
# ----------------------------------------------------------------------------------------
#
# Text ids and image ids live in one vocabulary (model.ShowoConfig). These functions lay
# them out as the sequences Show-o was trained on; `cfg` is a model.ShowoConfig.
# Image CODES (0 ... codebook-1) become image TOKENS by adding cfg.image_offset.


def text_slots(text_ids, cfg, task_id):
    """<task> BOS text EOS, left-padded with [PAD] to max_text_len + 1 slots.

    Too long: cut, and end with EOS so the caption still looks finished.
    """
    slots = cfg.max_text_len + 1
    ids = [task_id, cfg.bos_token_id, *text_ids, cfg.eos_token_id]
    if len(ids) > slots:
        ids = ids[:slots - 1] + [cfg.eos_token_id]
    return [cfg.pad_id] * (slots - len(ids)) + ids


def check_text_fits(ids, cfg, what, advice="shorten it"):
    """ValueError unless a text of `ids` fits this model's text slots whole (`text_slots` would
    cut it): <task> BOS text EOS in the max_text_len + 1 slots of a t2i row, or BOS text EOS
    in the max_text_len slots of a story's sentence; both leave max_text_len - 2."""
    room = cfg.max_text_len - 2
    if len(ids) > room:
        raise ValueError(f"{what} is {len(ids)} tokens; this model's text slots hold at most {room}: {advice}")


def t2i_sequences(captions_ids, image_tokens, cfg):
    """Text-to-image sequences, (B, max_text_len + 1 + N + 2):

        [PAD]*k <|t2i|> BOS caption EOS <|soi|> img_1 ... img_N <|eoi|>

    captions_ids: list of B id lists (an empty list gives the unconditional prompt used
    for classifier-free guidance). image_tokens: (B, N) ids already offset (or [MASK]).
    """
    text = torch.tensor([text_slots(ids, cfg, cfg.t2i_id) for ids in captions_ids],
                        device=image_tokens.device)
    b = image_tokens.shape[0]
    soi = torch.full((b, 1), cfg.soi_id, device=image_tokens.device)
    eoi = torch.full((b, 1), cfg.eoi_id, device=image_tokens.device)
    return torch.cat([text, soi, image_tokens, eoi], dim=1)


def t2i_image_positions(cfg):
    """Where the picture sits in a t2i row: its N image tokens, the N positions before the
    closing <|eoi|> (a slice of the sequence dimension). Training writes its labels there,
    sampling writes the tokens being drawn and reads their logits there."""
    return slice(-(cfg.num_vq_tokens + 1), -1)


def mmu_sequences(image_tokens, texts_ids, cfg, pad_to=None):
    """Understanding sequences, right-padded with [PAD] to the longest (or `pad_to`):

        <|mmu|> <|soi|> img_1 ... img_N <|eoi|> BOS text...

    texts_ids: list of B id lists (question + answer + EOS when training; just the
    question when asking). Returns (ids (B, L), number of real tokens per row).
    """
    rows = [[cfg.mmu_id, cfg.soi_id, *img, cfg.eoi_id, cfg.bos_token_id, *text]
            for img, text in zip(image_tokens.tolist(), texts_ids)]
    lengths = [len(r) for r in rows]
    width = pad_to or max(lengths)
    ids = torch.tensor([r + [cfg.pad_id] * (width - len(r)) for r in rows], device=image_tokens.device)
    return ids, lengths


def lm_sequences(texts_ids, cfg, length):
    """Language-modelling sequences BOS text EOS, cut to `length`, right-padded with [PAD]."""
    rows = [[cfg.bos_token_id, *ids, cfg.eos_token_id][:length] for ids in texts_ids]
    return torch.tensor([r + [cfg.pad_id] * (length - len(r)) for r in rows])


def shared_picture_sequences(image_tokens, qa_ids, targets, cfg, ignore):
    """Understanding rows that ask SEVERAL questions about one picture (training only).

        <|mmu|> <|soi|> img_1 ... img_N <|eoi|>  BOS q1 a1 EOS  BOS q2 a2 EOS  ...

    image_tokens: B (N,) tensors of image ids; qa_ids: per row, a list of (question ids,
    answer ids); targets: per row, per pair, the labels of "question answer" (`ignore`
    where no loss is wanted). Returns (ids, labels, positions, segments), each (B, L),
    right-padded. segments is 0 on the picture prefix and k on the k-th question-answer
    pair (-1 on padding), for shared_picture_attention_mask; each pair's positions restart
    right after the prefix, so it gets exactly the logits of a row of its own.
    """
    rows = []
    for image, pairs, pair_targets in zip(image_tokens, qa_ids, targets):
        prefix = [cfg.mmu_id, cfg.soi_id, *image.tolist(), cfg.eoi_id]
        ids, segments, labels = list(prefix), [0] * len(prefix), [ignore] * len(prefix)
        positions = list(range(len(prefix)))
        for segment, ((question, answer), target) in enumerate(zip(pairs, pair_targets), start=1):
            text = [cfg.bos_token_id, *question, *answer, cfg.eos_token_id]
            ids += text
            segments += [segment] * len(text)
            positions += range(len(prefix), len(prefix) + len(text))
            labels += [ignore, *target, cfg.eos_token_id]
        rows.append((ids, labels, positions, segments))
    width = max(len(row[0]) for row in rows)
    fills = (cfg.pad_id, ignore, 0, -1)
    return tuple(torch.tensor([row[k] + [fill] * (width - len(row[k])) for row in rows]) for k, fill in enumerate(fills))


# ----------------------------------------------------------------------------------------
# 2. Omni-attention: one rule for any interleaved sequence (§3.2 "Omni-Attention Mechanism", Fig. 5)
# ----------------------------------------------------------------------------------------
#
# Describe a sequence by its blocks: block 0 is causal text; blocks 1, 2, ... are the
# bidirectional spans (a picture, from <|soi|> to <|eoi|>; in understanding, the task
# token and the picture together). Then
#
#     every token sees every earlier token, and a token of block k >= 1 also sees every
#     token of block k, before or after it; padding is seen by nobody.
#
# The three masks of Fig. 5 are this rule on three layouts (below), and so is a story
# (text, picture, text, picture, ...; stories.py): any number of texts and pictures, in
# any order, gets its mask from the same two lines.

def causal_mask(length, device=None):
    """(L, L) bool: row i may attend column j when j <= i (lower triangle)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def hide_padding(allowed, is_pad):
    """Apply the padding rule to an (B, L, L) mask.

    Real rows never see pad columns. Pad rows see only the pads at or before them: their
    outputs are thrown away, but each row must see at least itself or softmax gives NaN.
    """
    length = is_pad.shape[1]
    causal = causal_mask(length, is_pad.device)                         # (L, L)
    real_rows = allowed & ~is_pad[:, None, :]                           # (B, L, L)
    pad_rows = causal[None] & is_pad[:, None, :]                        # (B, L, L)
    return torch.where(is_pad[:, :, None], pad_rows, real_rows)


def omni_attention_mask(blocks, is_pad):
    """The omni-attention rule, (B, L, L) bool.

    blocks (B, L) long: 0 for causal text, k >= 1 for the k-th bidirectional block (its
    tokens must be contiguous); is_pad (B, L) bool.
    """
    causal = causal_mask(blocks.shape[1], blocks.device)[None]           # (1, L, L)
    same_block = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] > 0)   # (B, L, L)
    return hide_padding(causal | same_block, is_pad)


def image_span(input_ids, soi_id, eoi_id):
    """(B, L) bool: True from each <|soi|> to its <|eoi|>, both boundary tokens included.

    Counting the <|soi|>/<|eoi|> seen so far tells whether we are inside a picture: we are
    inside when more images have opened than closed, or when standing on a boundary token.
    """
    opened = (input_ids == soi_id).cumsum(dim=1)                        # (B, L)
    closed = (input_ids == eoi_id).cumsum(dim=1)                        # (B, L)
    on_boundary = (input_ids == soi_id) | (input_ids == eoi_id)
    return (opened > closed) | on_boundary


def before_first(input_ids, token_id):
    """(B, L) bool: the positions up to and including the first `token_id` of each row."""
    is_token = input_ids == token_id
    return (is_token.cumsum(dim=1) - is_token.long()) == 0


def picture_blocks(input_ids, soi_id, eoi_id, prefix_until_first_eoi=False):
    """The blocks of sequences written with <|soi|> ... <|eoi|>, (B, L) long.

    Each picture span (its boundary tokens included) is a block, numbered in order. With
    prefix_until_first_eoi (understanding sequences), everything up to the first <|eoi|>,
    the task token included, is block 1: the bidirectional prefix of Fig. 5(a).
    """
    numbered = (input_ids == soi_id).cumsum(dim=1) * image_span(input_ids, soi_id, eoi_id)   # (B, L)
    if prefix_until_first_eoi:
        numbered = torch.where(before_first(input_ids, eoi_id), torch.ones_like(numbered), numbered)
    return numbered


def blocks_of_layout(layout):
    """A layout as a list of (kind, length) spans, kind "text" or "image" -> blocks (L,) long.

    Each "image" span is a bidirectional block of its own (number 1, 2, ... in order);
    "text" spans are block 0. E.g. [("text", 4), ("image", 6), ("text", 3), ("image", 6)].
    """
    blocks, count = [], 0
    for kind, length in layout:
        if kind not in ("text", "image"):
            raise ValueError(f"layout span kind {kind!r}: use 'text' or 'image'")
        count += kind == "image"
        blocks += [count if kind == "image" else 0] * length
    return torch.tensor(blocks)


# The three masks of Fig. 5, each the rule on its layout.

def t2i_attention_mask(input_ids, pad_id, soi_id, eoi_id):
    """Text-to-image, Fig. 5(b), (B, L, L) bool: the caption causal, the picture (<|soi|> to
    <|eoi|>) one bidirectional block that also sees the whole caption before it."""
    return omni_attention_mask(picture_blocks(input_ids, soi_id, eoi_id), input_ids == pad_id)


def mmu_attention_mask(input_ids, pad_id, eoi_id):
    """Understanding, Fig. 5(a), (B, L, L) bool: everything up to and including the first
    <|eoi|> (the task token and the picture) is one bidirectional block, the text after it
    causal. (This differs from the t2i rule at <|mmu|>, position 0; the released weights
    were trained with it.)"""
    return omni_attention_mask(before_first(input_ids, eoi_id).long(), input_ids == pad_id)


def lm_attention_mask(input_ids, pad_id):
    """Plain text, Fig. 5(c), (B, L, L) bool: no block at all, so causal."""
    return omni_attention_mask(torch.zeros_like(input_ids), input_ids == pad_id)


def shared_picture_attention_mask(segments, is_pad):
    """Understanding rows that ask SEVERAL questions about one picture, (B, L, L) bool.

    Training only. segments (B, L): 0 for the prefix <|mmu|> <|soi|> img <|eoi|>, then
    1, 2, ... for each "BOS question answer EOS" that follows. The prefix is bidirectional
    (as in `mmu_attention_mask`); a question-answer row sees the prefix and the earlier
    tokens of its OWN segment, never another answer. The prefix never looks at the
    answers, so its keys/values are the same whichever answer uses them: with each
    segment's position ids restarting right after the prefix, every answer gets exactly
    the logits it would get in a sequence of its own, while the picture is run once.
    With one segment this is `mmu_attention_mask`.
    """
    length = segments.shape[1]
    causal = causal_mask(length, segments.device)[None]                 # (1, L, L)
    in_prefix = segments == 0                                           # (B, L)
    same_segment = segments[:, :, None] == segments[:, None, :]         # (B, L, L)
    return hide_padding(in_prefix[:, None, :] | (same_segment & causal), is_pad)


# ----------------------------------------------------------------------------------------
# 3. Attention under a mask
# ----------------------------------------------------------------------------------------

def attend_explicit(q, k, v, allowed):
    """Masked attention written out: softmax(q k^T / sqrt(d)) v, scores in float32.

    q: (B, H, Lq, d), k and v: (B, H, Lk, d), allowed: (B, Lq, Lk) bool -> (B, H, Lq, d).
    This is the textbook version, kept for reading and as the check for `attend`.
    """
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    weights = scores.softmax(dim=-1).to(v.dtype)                          # (B, H, Lq, Lk)
    return weights @ v                                                    # (B, H, Lq, d)


def attend(q, k, v, allowed):
    """The same as `attend_explicit`, through PyTorch's fused kernel (faster, less memory).

    A boolean `attn_mask` in scaled_dot_product_attention means "True = may attend", which
    is exactly our convention.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])


def main(argv=None):
    """`python attention.py [--png DIR]`: parsed, checked and run by cli.py (errors as one line)."""
    from cli import attention_command
    attention_command(argv)


if __name__ == "__main__":
    main()
