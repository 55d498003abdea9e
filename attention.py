"""Unified prompting and omni-attention: how a Show-o sequence is laid out, and who may look at whom.

Show-o (arXiv 2408.12528v7, §3.2, "Omni-Attention Mechanism", Fig. 5) runs ONE transformer over
sequences that mix text tokens and image tokens. Text is modelled autoregressively, so a
text token may only look backwards (causal attention). Image tokens are modelled by masked
("discrete diffusion") prediction, so every image token may look at every other image
token of the same picture, in both directions. A single boolean matrix per sequence,
`allowed[b, row, col]` = "position `row` may attend to position `col`", expresses both at
once; that is the whole trick, and this file builds those matrices from token ids.

The file first lays out the sequences themselves (§3.2 "Unified Prompting": where the
task token, the text and the image tokens go), then builds each layout's mask: the
layout and its mask are read together. Three rules are used (docs/sequences.md, section 3):

* t2i (text-to-image):   [PAD]*k <|t2i|> BOS caption EOS <|soi|> img ... img <|eoi|>
    text rows are causal; rows inside <|soi|> ... <|eoi|> (both included) see all real text
    before them and the whole image span.
* mmu (understanding):   <|mmu|> <|soi|> img ... img <|eoi|> BOS question answer EOS
    causal, except that every row sees everything up to and including the first <|eoi|>,
    so the task token + image form one bidirectional prefix.
* lm (plain text):       BOS text EOS — causal.
* mmu with CLIP features (the released CLIP-ViT variant):
                         <|mmu|> system <|soi|> feat ... feat <|eoi|> question answer
    causal, except that every row, the system prompt's too, sees every feature.

Everywhere, no real token may look at a [PAD] token; a pad row looks at the pads up to
itself (its output is never used, but a row that sees nothing would produce NaNs).

The file also holds the attention computation itself: `attend` (PyTorch's fused
`scaled_dot_product_attention`) and `attend_explicit` (the same maths written out as the
paper's softmax(QK^T/sqrt(d)) so a reader can see it; the tests check they agree).

Run `python attention.py` to print small example masks (`--png DIR` draws them).
Read first: tokenizer.py. Read next: model.py (the transformer that uses these masks).
"""

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


# ----------------------------------------------------------------------------------------
# Laying out the sequences: unified prompting (Show-o §3.2 "Unified Prompting", Fig. 4;
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


def mmu_vit_sequences(system_ids, questions_ids, num_features, cfg):
    """Understanding sequences of the CLIP-ViT variant (§3.2 "Unified Prompting", with CLIP
    features in the picture's place), left-padded with [PAD] to the longest:

        <|mmu|> system <|soi|> [MASK]*P <|eoi|> question...

    (the released inference_mmu.py, `w_clip_vit` branch). The P [MASK] ids only hold the
    places of the P projected CLIP features: the model gets the features there as embeddings
    (sampling.answer_with_clip), never these ids. Unlike `mmu_sequences`, there is no BOS
    before the question, and a system prompt comes first (LLaVA's). Left padding, so that
    every row's next token lands in the same column (sampling.left_pad). Returns (B, L) ids.
    """
    rows = [[cfg.mmu_id, *system_ids, cfg.soi_id, *[cfg.mask_token_id] * num_features, cfg.eoi_id, *question]
            for question in questions_ids]
    width = max(len(row) for row in rows)
    return torch.tensor([[cfg.pad_id] * (width - len(row)) + row for row in rows])


def sentence_slots(text_ids, cfg):
    """One sentence of a story: BOS sentence EOS, RIGHT-padded with [PAD] to max_text_len slots.

    Too long: cut, and end with EOS. Fixed-width slots put every frame of a story at the
    same positions whatever its sentences' lengths, as the t2i text slots do for the one
    picture; right padding (unlike t2i's left) lets a writer append its sentence token by
    token and fill the rest with [PAD] once it ends.
    """
    ids = [cfg.bos_token_id, *text_ids, cfg.eos_token_id]
    if len(ids) > cfg.max_text_len:
        ids = ids[:cfg.max_text_len - 1] + [cfg.eos_token_id]
    return ids + [cfg.pad_id] * (cfg.max_text_len - len(ids))


def story_sequence(sentences_ids, frames_tokens, cfg):
    """A story (mixed-modality generation; docs/sequences.md), one id list:

        <|t2v|>  [BOS s_1 EOS PAD..]  <|soi|> f_1 <|eoi|>  [BOS s_2 EOS PAD..]  <|soi|> f_2 <|eoi|> ...

    sentences_ids: F id lists; frames_tokens: F (N,) lists of image ids (or [MASK]), one
    per sentence, or one fewer (the story stops after a sentence). <|t2v|>, a task token
    the released model never used, marks a story as <|t2i|> marks a picture's caption.
    """
    ids = [cfg.t2v_id]
    for k, sentence in enumerate(sentences_ids):
        ids += sentence_slots(sentence, cfg)
        if k < len(frames_tokens):
            ids += [cfg.soi_id, *frames_tokens[k], cfg.eoi_id]
    return ids


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
# Building the masks
# ----------------------------------------------------------------------------------------

def causal_mask(length, device=None):
    """(L, L) bool: row i may attend column j when j <= i (lower triangle)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def _hide_padding(allowed, is_pad):
    """Apply the padding rule to an (B, L, L) mask.

    Real rows never see pad columns. Pad rows see only the pads at or before them: their
    outputs are thrown away, but each row must see at least itself or softmax gives NaN.
    """
    length = is_pad.shape[1]
    causal = causal_mask(length, is_pad.device)                         # (L, L)
    real_rows = allowed & ~is_pad[:, None, :]                           # (B, L, L)
    pad_rows = causal[None] & is_pad[:, None, :]                        # (B, L, L)
    return torch.where(is_pad[:, :, None], pad_rows, real_rows)


def image_span(input_ids, soi_id, eoi_id):
    """(B, L) bool: True from each <|soi|> to its <|eoi|>, both boundary tokens included.

    Counting the <|soi|>/<|eoi|> seen so far tells whether we are inside a picture: we are
    inside when more images have opened than closed, or when standing on a boundary token.
    """
    opened = (input_ids == soi_id).cumsum(dim=1)                        # (B, L)
    closed = (input_ids == eoi_id).cumsum(dim=1)                        # (B, L)
    on_boundary = (input_ids == soi_id) | (input_ids == eoi_id)
    return (opened > closed) | on_boundary


def lm_attention_mask(input_ids, pad_id):
    """Causal mask for plain text (language modelling), (B, L, L) bool."""
    batch, length = input_ids.shape
    allowed = causal_mask(length, input_ids.device).expand(batch, length, length)
    return _hide_padding(allowed, input_ids == pad_id)


def t2i_attention_mask(input_ids, pad_id, soi_id, eoi_id):
    """Omni-attention for text-to-image sequences, (B, L, L) bool (Show-o §3.2, Fig. 5b).

    Start from a causal mask (text is autoregressive), then open up every image span so
    its tokens see each other in both directions. Because the image comes after the
    caption, the causal part already lets image rows see the caption.
    """
    batch, length = input_ids.shape
    causal = causal_mask(length, input_ids.device)[None]               # (1, L, L)
    in_image = image_span(input_ids, soi_id, eoi_id)                    # (B, L)
    both_in_image = in_image[:, :, None] & in_image[:, None, :]         # (B, L, L)
    # One picture per sequence in Show-o; with several, this would also let two pictures
    # see each other, which Show-o never trains on.
    return _hide_padding(causal | both_in_image, input_ids == pad_id)


def mmu_attention_mask(input_ids, pad_id, eoi_id):
    """Omni-attention for understanding sequences, (B, L, L) bool (Show-o §3.2, Fig. 5a).

    Causal, except that every row may see all positions up to and including the first
    <|eoi|>: the task token and the image are one bidirectional prefix. (This differs from
    the t2i rule at <|mmu|>, position 0, and the released weights were trained with it.)
    """
    batch, length = input_ids.shape
    causal = causal_mask(length, input_ids.device)[None]               # (1, L, L)
    # prefix[b, j] is True for columns j at or before the first <|eoi|> of sequence b.
    eoi_seen_before = (input_ids == eoi_id).cumsum(dim=1) - (input_ids == eoi_id).long()
    prefix = eoi_seen_before == 0                                       # (B, L)
    return _hide_padding(causal | prefix[:, None, :], input_ids == pad_id)


def mmu_vit_attention_mask(input_ids, pad_id, soi_id, eoi_id):
    """The understanding mask of the CLIP-ViT variant, (B, L, L) bool (`mmu_vit_sequences`):
    Show-o's omni-attention (§3.2 "Omni-Attention Mechanism") with features for the picture.

    Causal, except that every row may see the picture's features: the columns after the
    first <|soi|> and before the first <|eoi|>. So the <|mmu|> token and the system prompt,
    though they come first, see the whole picture, and the features see each other both
    ways; <|soi|> and <|eoi|> themselves stay causal. (The released
    create_attention_mask_for_mmu_vit, training/prompting_utils.py, opens columns
    1 + system + 1 ... + 576 by count; here the <|soi|>/<|eoi|> ids say where, for any P.)
    """
    length = input_ids.shape[1]
    causal = causal_mask(length, input_ids.device)[None]               # (1, L, L)
    features = clip_feature_slots(input_ids, soi_id, eoi_id)            # (B, L)
    return _hide_padding(causal | features[:, None, :], input_ids == pad_id)


def clip_feature_slots(input_ids, soi_id, eoi_id):
    """(B, L) bool: the places of the CLIP features, after the first <|soi|>, before the first <|eoi|>."""
    opened = (input_ids == soi_id).cumsum(dim=1) > 0                    # (B, L) at or after <|soi|>
    closed = (input_ids == eoi_id).cumsum(dim=1) > 0                    # (B, L) at or after <|eoi|>
    return opened & ~closed & (input_ids != soi_id)


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
    return _hide_padding(in_prefix[:, None, :] | (same_segment & causal), is_pad)


# ----------------------------------------------------------------------------------------
# One rule for any interleaved sequence (Show-o §3.2 "Omni-Attention Mechanism", Fig. 5)
# ----------------------------------------------------------------------------------------
#
# The masks above are three applications of ONE rule. Describe a sequence by its blocks:
# block 0 is causal text; blocks 1, 2, ... are the bidirectional spans (a picture, from
# <|soi|> to <|eoi|>; in understanding, the task token and the picture together). Then
#     every token sees every earlier token, and a token of block k >= 1 also sees every
#     token of block k, before or after it; padding is seen by nobody.
# Any number of texts and pictures, in any order (a story: text, picture, text, picture,
# ...), gets its mask from the same two lines. tests/test_attention.py checks that the
# t2i, understanding and text masks are exactly this rule on their layouts.

def omni_attention_mask(blocks, is_pad):
    """The general omni-attention rule, (B, L, L) bool.

    blocks (B, L) long: 0 for causal text, k >= 1 for the k-th bidirectional block (its
    tokens must be contiguous); is_pad (B, L) bool.
    """
    causal = causal_mask(blocks.shape[1], blocks.device)[None]           # (1, L, L)
    same_block = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] > 0)   # (B, L, L)
    return _hide_padding(causal | same_block, is_pad)


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


def story_attention_mask(input_ids, pad_id, soi_id, eoi_id):
    """The mask of a story (`story_sequence`), (B, L, L) bool: the general rule with each
    frame, <|soi|> to <|eoi|>, a bidirectional block of its own. A sentence sees every
    earlier frame whole; a frame sees the story before it and itself, never a later frame."""
    return omni_attention_mask(picture_blocks(input_ids, soi_id, eoi_id), input_ids == pad_id)


def picture_blocks(input_ids, soi_id, eoi_id, prefix_until_first_eoi=False):
    """The blocks of sequences written with <|soi|> ... <|eoi|>, (B, L) long.

    Each picture span (its boundary tokens included) is a block, numbered in order. With
    prefix_until_first_eoi (understanding sequences), everything up to the first <|eoi|>,
    the task token included, is block 1: the bidirectional prefix of Fig. 5(a).
    """
    numbered = (input_ids == soi_id).cumsum(dim=1) * image_span(input_ids, soi_id, eoi_id)   # (B, L)
    if prefix_until_first_eoi:
        before_first_eoi = ((input_ids == eoi_id).cumsum(dim=1) - (input_ids == eoi_id).long()) == 0
        numbered = torch.where(before_first_eoi, torch.ones_like(numbered), numbered)
    return numbered


# ----------------------------------------------------------------------------------------
# Using the masks
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


def show_mask(allowed, tokens=None):
    """Render one (L, L) mask as text: '#' may attend, '.' may not."""
    rows = []
    for i, row in enumerate(allowed.tolist()):
        label = f"{tokens[i]:>7} " if tokens is not None else ""
        rows.append(label + " ".join("#" if cell else "." for cell in row))
    return "\n".join(rows)


def mask_picture(allowed, tokens, cell=22):
    """Draw one (L, L) mask as a PIL image: dark = may attend, light = may not.

    Rows (who is looking) are labelled on the left, columns (who is looked at) on top.
    """
    length = allowed.shape[0]
    margin = 8 * max(len(t) for t in tokens) + 10
    image = Image.new("RGB", (margin + length * cell + 1, margin + length * cell + 1), "white")
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(allowed.tolist()):
        draw.text((4, margin + i * cell + 5), tokens[i], fill="black")
        for j, may_attend in enumerate(row):
            box = [margin + j * cell, margin + i * cell, margin + (j + 1) * cell, margin + (i + 1) * cell]
            draw.rectangle(box, fill=(40, 90, 200) if may_attend else (235, 235, 235), outline="white")
    for j, token in enumerate(tokens):                    # column labels, written upwards
        label = Image.new("RGB", (margin - 4, cell), "white")
        ImageDraw.Draw(label).text((2, 5), token.rjust(len(max(tokens, key=len))), fill="black")
        image.paste(label.rotate(90, expand=True), (margin + j * cell, 2))
    return image


EXAMPLE_NAMES = {0: "[PAD]", 1: "<soi>", 2: "<eoi>", 3: "<t2i>", 4: "<mmu>", 5: "BOS", 6: "word", 7: "img",
                 8: "<t2v>"}


def examples():
    """The masks on a toy vocabulary: (name, title, ids (1, L), mask (1, L, L))."""
    pad, soi, eoi, t2i, mmu, bos, word, img, t2v = range(9)
    t2i_ids = torch.tensor([[pad, pad, t2i, bos, word, word, bos, soi, img, img, img, eoi]])
    mmu_ids = torch.tensor([[mmu, soi, img, img, img, eoi, bos, word, word, word]])
    lm_ids = torch.tensor([[bos, word, word, word, bos, pad, pad]])
    frame, sentence = [soi, img, img, eoi], [bos, word, bos, pad]     # sentence slots of width 4
    story_ids = torch.tensor([[t2v, *sentence, *frame, *sentence, *frame, *sentence, *frame]])
    return [
        ("t2i", "t2i: causal caption, bidirectional image (pads hidden)",
         t2i_ids, t2i_attention_mask(t2i_ids, pad, soi, eoi)),
        ("mmu", "mmu: bidirectional <mmu>+image prefix, causal question/answer",
         mmu_ids, mmu_attention_mask(mmu_ids, pad, eoi)),
        ("lm", "lm: causal", lm_ids, lm_attention_mask(lm_ids, pad)),
        ("story", "story: three pictures, each after its sentence (the general rule)",
         story_ids, story_attention_mask(story_ids, pad, soi, eoi)),
    ]


def main(argv=None):
    """Print the masks as text, or with --png DIR draw them as pictures."""
    parser = argparse.ArgumentParser(description="Show the omni-attention masks.")
    parser.add_argument("--png", type=Path, metavar="DIR",
                        help="write t2i_mask.png, mmu_mask.png, lm_mask.png and story_mask.png here")
    args = parser.parse_args(argv)
    if args.png and args.png.exists() and not args.png.is_dir():
        sys.exit(f"error: --png {args.png} is a file: give a folder for the pictures")
    for name, title, ids, allowed in examples():
        tokens = [EXAMPLE_NAMES[t] for t in ids[0].tolist()]
        if args.png:
            args.png.mkdir(parents=True, exist_ok=True)
            mask_picture(allowed[0], tokens).save(args.png / f"{name}_mask.png")
        else:
            print(f"\n{title}\n")
            print(show_mask(allowed[0], tokens))
    if args.png:
        print(f"wrote t2i_mask.png, mmu_mask.png, lm_mask.png and story_mask.png to {args.png}")


if __name__ == "__main__":
    main()
