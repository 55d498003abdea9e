"""Measuring a run: what it cost, how well it draws and answers, and pictures of both.

train.py trains; this file measures, so that the recipe there reads top to bottom.

1. The compute: `ComputeMeter` counts the floating-point operations (FLOPs) of every
   training step with PyTorch's FlopCounterMode. Budgets in this project are FLOPs, not
   seconds: a FLOP count is the same on every machine, a busy CPU takes twice as long.
2. The held-out scores (the shapes world, data.py): a drawn picture counts only when
   `data.describe` reads back the colour, shape and place of every object of its prompt;
   an answer or caption counts only when it equals the true one exactly. The prompts and
   pictures come from `evaluation_prompts` / `evaluation_pictures`, seeded apart from
   training, so every tool (train.py, bench.py, `python evaluate.py scores`) scores the
   same draws.
3. The sample grid of a run (the figures themselves are drawn in pictures.py).
4. Looking inside the tokenizers (bpe.py, tokenizer.py): `python evaluate.py bpe "a red
   circle"` learns a BPE on shapes-world texts and shows its first merges; `python
   evaluate.py lfq --ckpt out/tiny.pt` draws pictures, their LFQ codes and their
   reconstructions; `python evaluate.py probe --ckpt out/tiny.pt` measures what a linear
   read-out finds in the codes against the continuous features they quantize (COURSE.md
   lesson 10); `python evaluate.py reach --ckpt out/tiny.pt` how far a code's value reaches
   beyond its own cell (docs/experiments.md, "Stories").
5. The stories a story checkpoint was scored on: `python evaluate.py stories --ckpt
   assets/story.pt` draws the first of them, none picked, each sentence marked as the
   scorer reads its frame.

    python evaluate.py scores --ckpt out/tiny.pt      # the held-out scores of a checkpoint

Read first: train.py. Read next: sampling.py (the decoding loops the scores run).
"""

import signal
import sys

if __name__ == "__main__":    # Ctrl-C while the imports below load (seconds): one line, not a traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit("\ninterrupted while starting: nothing was done"))

import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

import data
from bpe import TextTokenizer, token_to_bytes
from checkpoint import load_checkpoint, recommended_settings
from pictures import image_grid, lfq_picture, save_picture, story_strip
from readers import answer_from_features, picture_features, stored_reader
from sampling import answer_questions, generate_pictures
from stories import STORY_FRAMES_SCORED, make_stories, scored_stories, story_scores


# ----------------------------------------------------------------------------------------
# 1. Counting the compute
# ----------------------------------------------------------------------------------------
#
# PyTorch's FlopCounterMode watches every matmul, convolution and attention call as it
# runs and adds up 2 FLOPs per multiply-add, forward and backward alike. (nanoGPT
# estimates the same number from a formula, 6 * parameters per token plus attention, to
# report its MFU; counting needs no formula and covers the convolutions too.)


def cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


def cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out, query, key, value)


def cpu_attention_formulas():
    """{op: formula} for the attention kernel PyTorch runs on CPUs.

    The counter knows the fused attention kernels used on GPUs but not the CPU one; this
    gives the CPU kernel the same formula. It is handed to each FlopCounterMode
    (`custom_mapping`), so nothing in torch's own table changes.
    """
    ops = [(getattr(torch.ops.aten, name, None), formula) for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", cpu_attention_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", cpu_attention_backward_flops))]
    return {op: formula for op, formula in ops if op is not None}


COUNT_EVERY = 10   # FlopCounterMode counts one step in this many (see ComputeMeter)


class ComputeMeter:
    """FLOPs and wall seconds of each training stage.

    `with meter.step(stage, index):` around one training step (forward, backward, update)
    adds its wall time, and counts its FLOPs when index % COUNT_EVERY == 0. Counting every
    step would be exact but slows a CPU step by about 15% (the counter sees every single
    operation in Python); shapes change only a little from step to step (how many tokens
    are masked, how long the answers are), so a stage's FLOPs are the mean of its counted
    steps times its number of steps. The optimizer's update does no matmuls: it adds time,
    no FLOPs.
    """

    def __init__(self, stages=None):
        # stage -> {"steps", "counted_steps", "counted_flops", "seconds"}
        self.stages = {stage: dict(record) for stage, record in (stages or {}).items()}

    @contextmanager
    def step(self, stage, index):
        record = self.stages.setdefault(stage, {"steps": 0, "counted_steps": 0, "counted_flops": 0, "seconds": 0.0})
        start = time.perf_counter()
        if index % COUNT_EVERY == 0:
            with FlopCounterMode(display=False, custom_mapping=cpu_attention_formulas()) as counter:
                yield
            record["counted_flops"] += counter.get_total_flops()
            record["counted_steps"] += 1
        else:
            yield
        record["steps"] += 1
        record["seconds"] += time.perf_counter() - start

    def flops(self, stage):
        record = self.stages[stage]
        return record["counted_flops"] / max(1, record["counted_steps"]) * record["steps"]

    @property
    def total(self):
        return sum(self.flops(stage) for stage in self.stages)

    def report(self):
        """The run's total, then one line per stage: TFLOP, seconds and the GFLOP/s achieved."""
        lines = [f"training compute: {self.total / 1e12:.1f} TFLOP"]
        for stage, record in self.stages.items():
            per_step = self.flops(stage) / max(1, record["steps"]) / 1e9
            lines.append(f"  {stage}: {record['steps']} steps x {per_step:.1f} GFLOP = {self.flops(stage) / 1e12:.2f} "
                         f"TFLOP in {record['seconds']:.0f} s, "
                         f"{self.flops(stage) / max(record['seconds'], 1e-9) / 1e9:.0f} GFLOP/s")
        return "\n".join(lines)

    def to_dict(self):
        return {"stages": self.stages, "flops": {stage: self.flops(stage) for stage in self.stages},
                "total_flops": self.total}


# ----------------------------------------------------------------------------------------
# 2. Held-out scores
# ----------------------------------------------------------------------------------------

@dataclass
class Scoring:
    """What the scores are computed on, and how their pictures are drawn.

    seed: the run's seed (the scored draws are seeded apart from its training data);
    draws: how many times each of the 90 one-object captions is drawn; two_object_prompts
    and scenes: how many two-object prompts and new pictures; objective and settings: the
    decoder ("mtp" MaskGIT or "ar") and its sampling.generate_pictures settings;
    story_frames: 0, or the frames of each scored story (a story recipe is scored on
    stories only: `story_scores`). No defaults: the values come from a recipe (train.scoring) or a checkpoint
    (scoring_of_checkpoint), never from a second copy of them here.
    """
    seed: int
    draws: int
    two_object_prompts: int
    scenes: int
    objective: str
    settings: dict
    story_frames: int


SCORES = {
    "t2i_one": ("t2i one object (seen captions, new draws)", "t2i, one object"),
    "t2i_two": ("t2i two objects (seen pairings)", "t2i, two objects"),
    "t2i_novel": ("t2i two objects (held-out pairings)", "t2i, held-out pairs"),
    "vqa": ("VQA (new pictures)", "VQA"),
    "caption": ("caption exact match (new pictures)", "captions"),
    "caption_novel": ("caption exact match (held-out pairings)", "captions, held-out pairs"),
    "story_frames": ("story frames right", "story frames"),
    "story_whole": ("whole stories right", "whole stories"),
    "story_sentences": ("story sentences valid", "story sentences"),
    "story_move": ("frame 2 right, a move told", "told moves"),
    "story_recolour": ("frame 2 right, a recolour told", "told recolours"),
    "story_appear": ("frame 2 right, an appearance told", "told appearances"),
}


def evaluation_prompts(scoring):
    """The scored text-to-image prompts: {"t2i_one", "t2i_two", "t2i_novel": [caption, ...]}.

    The 90 one-object captions all occur in training (only the draws are new); so do
    nearly all two-object ones, except the 108 that pair a held-out pair of kinds
    (data.HELD_OUT_PAIRS), which test composition.
    """
    rng = random.Random(scoring.seed + 7919)
    doubles = [data.caption(scene) for scene in data.random_scenes(rng, scoring.two_object_prompts, 2)]
    return {"t2i_one": data.one_object_captions() * scoring.draws, "t2i_two": doubles,
            "t2i_novel": data.held_out_captions()}


def evaluation_pictures(scoring):
    """(new pictures, new pictures of held-out pairs): lists of data.Example no training step saw."""
    pictures = data.make_examples(scoring.scenes, seed=scoring.seed + 104729)
    novel = data.make_examples(max(1, scoring.scenes // 2), seed=scoring.seed + 15485863, held_out=True)
    return pictures, novel


@torch.no_grad()
def t2i_match_rate(model, vq, text_tokenizer, prompts, scoring, batch=64):
    """Fraction of generated pictures whose objects (read by data.describe) equal the prompt's."""
    gen = torch.Generator(next(model.parameters()).device).manual_seed(scoring.seed)
    hits = 0
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        codes = generate_pictures(model, [text_tokenizer.encode(p) for p in chunk], scoring.objective,
                                  scoring.settings, gen)
        pictures = data.decode_codes(vq, codes)
        hits += sum(data.matches(data.as_world_picture(picture), prompt) for picture, prompt in zip(pictures, chunk))
    return hits / len(prompts)


@torch.no_grad()
def answer_accuracy(model, vq, text_tokenizer, examples, want_captions, reader=None, batch=64):
    """Exact-match rate of greedy answers: captions ('describe the image.') or the other questions.

    reader: None (the model reads codes), or uint8 pictures -> (B, N, C) continuous features
    (readers.picture_reader)."""
    device = next(model.parameters()).device
    asked = [(e, q, a) for e in examples for q, a in e.qa if (q == "describe the image.") == want_captions]
    hits = 0
    for i in range(0, len(asked), batch):
        chunk = asked[i:i + batch]
        images = np.stack([e.image for e, _, _ in chunk])
        questions = [text_tokenizer.encode(q) for _, q, _ in chunk]
        if reader:
            answers = answer_from_features(model, reader(images).to(device), questions, model.cfg.max_text_len)
        else:
            answers = answer_questions(model, data.encode_pictures(vq, images, device).to(device), questions,
                                       model.cfg.max_text_len)
        hits += sum(text_tokenizer.decode(ids).strip() == a for ids, (_, _, a) in zip(answers, chunk))
    return hits / max(1, len(asked))


def evaluate(model, vq, text_tokenizer, scoring, reader=None, draw=True):
    """The held-out scores, {name in SCORES: fraction right}: the six of drawing and
    understanding (the three of understanding only, without draw), or a story recipe's
    three. reader: what understanding reads, as in answer_accuracy."""
    model.eval()
    if scoring.story_frames:
        return story_scores(model, vq, text_tokenizer, scoring)
    prompts = evaluation_prompts(scoring) if draw else {}
    pictures, novel_pictures = evaluation_pictures(scoring)
    scores = {name: t2i_match_rate(model, vq, text_tokenizer, prompts[name], scoring) for name in prompts}
    scores["vqa"] = answer_accuracy(model, vq, text_tokenizer, pictures, False, reader)
    scores["caption"] = answer_accuracy(model, vq, text_tokenizer, pictures, True, reader)
    scores["caption_novel"] = answer_accuracy(model, vq, text_tokenizer, novel_pictures, True, reader)
    return scores


def format_scores(scores):
    return "; ".join(f"{words} {scores[name]:.0%}" for name, (words, _) in SCORES.items() if name in scores)


@torch.no_grad()
def report_image_tokenizer(vq, examples, device):
    """Reconstruction quality and codebook usage, on pictures the tokenizer never saw."""
    images = np.stack([e.image for e in examples])
    codes = data.encode_pictures(vq, images, device)
    rebuilt = data.decode_codes(vq, codes)
    mse = np.mean(((rebuilt.astype(np.float64) - images) / 127.5) ** 2)
    readable = np.mean([data.matches(data.as_world_picture(image), e.caption) for image, e in zip(rebuilt, examples)])
    counts = torch.bincount(codes.flatten(), minlength=vq.cfg.codebook_size).float()
    p = counts[counts > 0] / counts.sum()
    perplexity = math.exp(-(p * p.log()).sum().item())
    return {"psnr": 10 * math.log10(4 / mse), "describe_ok": float(readable),   # peak-to-peak range 2
            "codes_used": int((counts > 0).sum()), "codebook": vq.cfg.codebook_size, "perplexity": perplexity}


# ----------------------------------------------------------------------------------------
# 3. The sample grid of a run (pictures.py draws it, and the curves)
# ----------------------------------------------------------------------------------------

SAMPLE_PROMPTS = ["a red circle in the center", "a blue square at the top left",
                  "a yellow triangle at the bottom right", "a green circle at the top right",
                  "a white square in the center", "a purple triangle at the bottom left",
                  "a red square at the top left and a blue circle at the bottom right",
                  "a green triangle at the top right and a yellow circle at the bottom left"]


def sample_grid(model, vq, text_tokenizer, scoring):
    """A PIL grid of pictures for SAMPLE_PROMPTS (four a row), drawn with the scoring settings."""
    generator = torch.Generator(next(model.parameters()).device).manual_seed(scoring.seed)
    codes = generate_pictures(model, [text_tokenizer.encode(p) for p in SAMPLE_PROMPTS], scoring.objective,
                              scoring.settings, generator)
    return image_grid(data.decode_codes(vq, codes), columns=4)


# ----------------------------------------------------------------------------------------
# 4. Looking inside the tokenizers: python evaluate.py bpe ... / lfq ... / probe ... / reach ...
# ----------------------------------------------------------------------------------------

def show_bpe(text, vocab_size=512):
    """Learn a BPE on shapes-world texts, then show its first merges and how `text` splits."""
    tokenizer = TextTokenizer.train(data.text_corpus(20000, seed=0), vocab_size)
    print(f"learned {len(tokenizer.merges)} merges on 20,000 shapes-world texts; the first ten:")
    for left, right in tokenizer.merges[:10]:
        print(f"  {token_to_bytes(left)!r:>10} + {token_to_bytes(right)!r:<10} -> {token_to_bytes(left + right)!r}")
    ids = tokenizer.encode(text)
    pieces = [tokenizer.decode([i]) for i in ids]
    print(f"\n{text!r}: {len(text.encode())} bytes -> {len(ids)} tokens")
    print("  " + " | ".join(pieces))
    print(f"  ids {ids}")


def world_image_tokenizer(ckpt):
    """The image tokenizer of a checkpoint, which must work at the shapes world's size."""
    _, vq, _, _ = load_checkpoint(ckpt)
    if vq.cfg.resolution != data.IMAGE_SIZE:
        raise ValueError(f"{ckpt}: its image tokenizer works at {vq.cfg.resolution} px, the shapes world is "
                         f"{data.IMAGE_SIZE} px: give a checkpoint from train.py")
    return vq


def show_lfq(ckpt, out, count=8, shift=0):
    """Draw how the image tokenizer of a checkpoint sees shapes-world pictures.

    shift: move every picture this many pixels to the right first (black comes in on the
    left), and print how many codes that changes.
    """
    vq = world_image_tokenizer(ckpt)
    images = np.stack([e.image for e in data.make_examples(count, seed=1234)])     # (B, H, W, 3)
    if shift:
        unshifted = data.encode_pictures(vq, images, "cpu")
        images = np.concatenate([np.zeros_like(images[:, :, :shift]), images[:, :, :-shift]], axis=2)
        changed = (data.encode_pictures(vq, images, "cpu") != unshifted).float().mean().item()
        print(f"shifted {shift} px to the right: {changed:.0%} of the {unshifted.numel()} codes changed")
    codes = data.encode_pictures(vq, images, "cpu")                          # (B, h*w)
    sheet = Image.fromarray(lfq_picture(images, codes, data.decode_codes(vq, codes)))
    save_picture(sheet.resize((sheet.width * 4, sheet.height * 4), Image.NEAREST), out)
    print(f"wrote {out}: {count} pictures, their {vq.cfg.grid_size}x{vq.cfg.grid_size} codes "
          f"({len(codes.unique())} different ones of {vq.cfg.codebook_size}) and the reconstructions")


def linear_probe(train_x, train_y, test_x, test_y, steps=300):
    """Accuracy on (test_x, test_y) of a logistic regression fit on (train_x, train_y) by
    full-batch Adam: how much of a label a LINEAR read-out finds in a representation."""
    torch.manual_seed(0)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    read = torch.nn.Linear(train_x.shape[1], int(train_y.max()) + 1)
    opt = torch.optim.Adam(read.parameters(), lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(read((train_x - mean) / std), train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (read((test_x - mean) / std).argmax(1) == test_y).float().mean().item()


def show_reach(ckpt, count=150):
    """How far does an LFQ code's value reach? Pairs of consecutive story frames (one object
    changed, everything else the same pixels): the share of codes that change, by the
    distance (in cells) from the nearest cell whose pixels changed. A code that depended
    on its own cell only would change at distance 0 and nowhere else; then a later frame
    could copy every other code of the one before it (docs/experiments.md, "Stories")."""
    vq = world_image_tokenizer(ckpt)
    frames = [(story.images[k], story.images[k + 1]) for story in make_stories(count, seed=11)
              for k in range(len(story.images) - 1)]
    before, after = (np.stack(side) for side in zip(*frames))                        # (P, 32, 32, 3) each
    grid = vq.cfg.resolution // vq.cfg.downsample
    codes = [data.encode_pictures(vq, side, "cpu").view(-1, grid, grid) for side in (before, after)]
    cell = data.IMAGE_SIZE // grid
    touched = (before != after).any(-1).reshape(-1, grid, cell, grid, cell).any((2, 4))   # (P, grid, grid)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    changed_by_distance = {}
    for pair, changed in enumerate(touched):
        ys, xs = np.nonzero(changed)
        if len(ys):
            distance = np.maximum(abs(rows[..., None] - ys), abs(cols[..., None] - xs)).min(-1)   # (grid, grid)
            for d, moved in zip(distance.flatten(), (codes[0][pair] != codes[1][pair]).flatten().tolist()):
                changed_by_distance.setdefault(int(d), []).append(moved)
    print(f"{len(frames)} pairs of story frames, one object changed in each; {grid}x{grid} codes of {cell}x{cell} px")
    for d, moved in sorted(changed_by_distance.items()):
        print(f"  {d} cells from the change: {np.mean(moved):6.1%} of {len(moved)} codes change")
    still = [m for d, moved in changed_by_distance.items() if d > 0 for m in moved]
    print(f"copying every code of an untouched cell gets {1 - np.mean(still):.1%} of them right")
    # The world's own cells: 16x16 pixels (data.CELL_SIZE), where objects live.
    per_cell = data.CELL_SIZE // cell                                                # codes per side of one
    blocks = lambda t: t.reshape(-1, grid // per_cell, per_cell, grid // per_cell, per_cell)   # noqa: E731
    untouched = ~blocks(touched).any((2, 4))                                         # (P, 2, 2)
    kept = blocks((codes[0] == codes[1]).numpy()).all((2, 4))[untouched]
    print(f"the {untouched.sum()} untouched {data.CELL_SIZE}x{data.CELL_SIZE} grid cells: {kept.mean():.1%} keep "
          f"every one of their codes")


def show_probe(ckpt, pictures=2000):
    """What can be read linearly from a picture's codes, and from the LFQ features they quantize?

    One-object pictures; representations: the LFQ encoder's continuous features before
    quantization (N cells x C channels), and their signs, which ARE the codes (the C bits
    of each cell's code id). Labels: the object's colour, shape, place and size in pixels.
    """
    vq = world_image_tokenizer(ckpt)
    examples = data.make_examples(pictures + pictures // 4, seed=4321, num_objects=1)
    features = picture_features(vq.encoder, np.stack([e.image for e in examples]), "cpu").flatten(1)
    labels = {"colour": [list(data.COLOURS).index(e.objects[0].colour) for e in examples],
              "shape": [data.SHAPES.index(e.objects[0].shape) for e in examples],
              "place": [list(data.PLACES).index(e.objects[0].place) for e in examples],
              "size": [e.objects[0].size - data.MIN_OBJECT_SIZE for e in examples]}
    print(f"linear probes on {pictures} one-object pictures, scored on {pictures // 4} others "
          f"({features.shape[1]} numbers a picture: {vq.cfg.grid_size ** 2} cells x {vq.cfg.z_channels} channels)")
    print(f"  {'label':<8} {'chance':>7} {'codes (signs)':>14} {'continuous':>11}")
    for name, values in labels.items():
        y = torch.tensor(values)
        scores = [linear_probe(x[:pictures], y[:pictures], x[pictures:], y[pictures:])
                  for x in (features.sign(), features)]
        chance = torch.bincount(y[pictures:]).max().item() / len(y[pictures:])
        print(f"  {name:<8} {chance:>7.0%} {scores[0]:>14.0%} {scores[1]:>11.0%}")


def scoring_of_checkpoint(extra):
    """The Scoring a train.py checkpoint was scored with (its seed, sizes and sampling)."""
    stored = extra.get("train_config")
    if not stored:
        raise ValueError("this checkpoint was not trained by train.py on the shapes world: nothing to score")
    return Scoring(stored["seed"], stored["eval_draws"], stored["eval_prompts"], stored["eval_scenes"],
                   extra.get("image_objective", "mtp"), recommended_settings(extra, "t2i"),
                   STORY_FRAMES_SCORED if extra.get("stories") else 0)


def show_stories(ckpt, out, count=4):
    """`python evaluate.py stories`: the FIRST `count` stories of a story checkpoint's scored
    set (the same draws story_scores scores, none picked), one strip each, every sentence
    marked as the scorer reads its frame."""
    model, vq, text_tokenizer, extra = load_checkpoint(ckpt)
    scoring = scoring_of_checkpoint(extra)
    if not scoring.story_frames:
        raise ValueError(f"{ckpt} was not trained on stories: give a checkpoint of train.py --preset story")
    strips = []
    for number, (frames, sentences, results) in enumerate(scored_stories(model, vq, text_tokenizer, scoring, count), 1):
        # one line a story: any run of whitespace in a sentence (a line break written by a
        # barely trained model, say) is shown as one space
        marked = [f"{' '.join(sentence.split())} ({'right' if right else 'invalid' if not valid else 'wrong'})"
                  for sentence, (valid, right) in zip(sentences, results)]
        print(f"story {number}: " + " / ".join(marked))
        strips.append(np.asarray(story_strip(frames, marked)))
    width = max(strip.shape[1] for strip in strips)
    sheet = np.concatenate([np.pad(strip, ((0, 0), (0, width - strip.shape[1]), (0, 0)), constant_values=255)
                            for strip in strips])
    save_picture(sheet, out)
    print(f"wrote {out}: the first {count} of the {len(data.one_object_captions())} scored stories")


def print_scores(ckpt):
    """`python evaluate.py scores`: the held-out scores of a train.py checkpoint, as it was scored."""
    model, vq, text_tokenizer, extra = load_checkpoint(ckpt)
    scoring = scoring_of_checkpoint(extra)
    reader = stored_reader(extra, vq, text_tokenizer, "cpu")
    drawn = extra.get("train_config", {}).get("batch_t2i", 1) > 0
    print(format_scores(evaluate(model, vq, text_tokenizer, scoring, reader, draw=drawn)))


def main(argv=None):
    """`python evaluate.py scores|bpe|lfq|probe ...`: parsed, checked and run by cli.py (errors as one line)."""
    from cli import evaluate_command
    evaluate_command(argv)


if __name__ == "__main__":
    main()
