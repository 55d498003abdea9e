"""Train a small Show-o from nothing: tokenizers, then one transformer for two jobs.

`python train.py --tiny` runs the whole recipe on one machine (a laptop CPU is enough):

1. learn a byte-level BPE text tokenizer on the captions and questions (tokenizer.py);
2. learn a small MAGVIT-v2 style LFQ image tokenizer on the pictures (tokenizer.py);
3. train the transformer on MIXED batches (Show-o arXiv 2408.12528v7, §3.2 "Training
   Objectives", and Appendix C "Training Pipeline"): every step holds text-to-image rows
   (mask-token prediction, MTP, with 10% of captions dropped so classifier-free guidance
   works), understanding rows (next-token prediction, NTP, on the questions and answers
   by default; `mmu_answer_only` keeps it to the answers; a picture carries six questions)
   and plain text (NTP). The loss is a weighted sum of the three (`mixed_loss`);
4. write one checkpoint (checkpoint.save_checkpoint: the same single-file format as
   `python checkpoint.py convert`), a grid of samples, held-out scores and the training
   curves (all measured by evaluate.py).

Training FLOPs are counted (evaluate.ComputeMeter), so a recipe's cost is a number that
is the same on every machine. The data is the built-in shapes world (data.py) unless
--data-dir points at a folder of your own captioned images. `torchrun
--nproc_per_node=N train.py ...` trains with DistributedDataParallel.

How the recipe's values were chosen, with the measurements: docs/experiments.md.

Read first: data.py. Read next: evaluate.py.
"""

import argparse
import math
import os
import random
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
from attention import (lm_attention_mask, lm_sequences, sentence_slots, shared_picture_attention_mask,
                       shared_picture_sequences, story_attention_mask, story_sequence, t2i_attention_mask, t2i_sequences)
from checkpoint import (TASKS, UsageError, check_writable_folder, load_checkpoint, materialize, one_writer,
                        pick_device, save_checkpoint)
from evaluate import (STORY_FRAMES_SCORED, ComputeMeter, Scoring, curves_picture, evaluate, format_scores,
                      report_image_tokenizer, sample_grid)
from model import IGNORE, SPECIAL_TOKENS, ContrastiveEncoder, Showo, ShowoConfig
from tokenizer import ImageTokenizer, ImageTokenizerConfig, TextTokenizer


# ----------------------------------------------------------------------------------------
# The recipe, as one dataclass
# ----------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Every knob of a run, one line each on why it has its value. Presets below;
    `--set name=value` overrides any field. The measurements behind the choices (tables
    of runs at equal FLOPs, over seeds) are in docs/experiments.md."""
    seed: int = 0
    # data and held-out scores (evaluate.py)
    train_scenes: int = 20000        # shapes-world pictures, each with a caption and questions
    eval_draws: int = 2              # each of the 90 one-object captions drawn this many times
    eval_prompts: int = 200          # two-object prompts drawn
    eval_scenes: int = 200           # new pictures for VQA and captions
    # text tokenizer
    bpe_vocab_size: int = 512        # the shapes world's few words need ~100 merges; the rest go unused
    # image tokenizer: 32x32 pictures -> 8x8 codes of vq_z_channels bits
    vq_z_channels: int = 10          # 1,024 codes: enough for this world, and an 8x smaller image head than 13
    vq_ch: int = 16                  # encoder / decoder width at full resolution
    vq_ch_mult: tuple = (1, 2, 4)    # widths per level; two halvings: 32 px -> 8x8
    vq_groups: int = 8               # GroupNorm groups (vq_ch must be a multiple)
    vq_steps: int = 1400             # many small batches read objects back better per FLOP than few large
    vq_batch: int = 16
    vq_lr: float = 3e-3
    vq_entropy_per_code: bool = True   # entropy bonus over whole codes, not bits: ~10x more codes used
    vq_mid_attention: bool = False     # an 8x8 grid is small enough for convolutions alone
    # transformer (Phi-1.5 layout, scaled down)
    hidden_size: int = 192
    num_layers: int = 4              # at this budget, steps count for more than width and depth
    num_heads: int = 4
    max_text_len: int = 20           # text slots of a t2i row; the longest caption is 15 tokens + 3
    steps: int = 1600
    batch_t2i: int = 20              # rows per step: small batches, many steps learn more per FLOP here
    batch_mmu: int = 4
    batch_lm: int = 1                # plain text matters least for this world
    image_objective: str = "mtp"     # "mtp": Show-o (masked tokens, MaskGIT); "ar": the raster-order baseline
    mmu_questions: int = 6           # question-answer pairs sharing one picture (the picture runs once)
    mmu_answer_only: bool = False    # False: NTP on questions too (draws better); True: on answers only
    # what understanding reads (docs/experiments.md, "Discrete or continuous"): "codes" (Show-o's
    # MAGVIT-v2 tokens), "lfq_continuous" (the LFQ encoder's features before quantization) or
    # "contrastive" (a small CLIP of the shapes world, model.ContrastiveEncoder); the
    # continuous ones go through an mm_projector, as the released CLIP-ViT variant's do
    mmu_features: str = "codes"
    contrastive_steps: int = 600     # the contrastive encoder's training steps (batch 128)
    batch_story: int = 0             # story rows per step (mixed-modality; the story preset)
    train_stories: int = 0           # shapes-world stories of 2-4 frames (data.make_stories)
    lr: float = 2e-3                 # a 2M model trained from nothing needs a larger step than 1e-4
    min_lr: float = 1e-4             # where the cosine decay ends
    warmup: int = 50
    weight_decay: float = 0.01       # the released configs' AdamW value
    caption_dropout: float = 0.1     # the released configs' value: teaches p(image) for guidance
    loss_t2i: float = 1.0            # the three weights of mixed_loss (the released configs' values)
    loss_lm: float = 0.1
    loss_mmu: float = 1.0
    # sampling for the samples and scores, stored in the checkpoint as sampling.py's defaults;
    # chosen on draws apart from the scored ones, averaged over three seeds
    sample_steps: int = 16
    guidance: float = 1.0
    sample_temperature: float = 1.0
    sample_top_k: int = 0            # ar only: sample among the k most likely codes (0: all)
    save_every: int = 100            # a checkpoint every this many transformer steps (and on Ctrl-C)
    eval_every: int = 0              # scores every this many steps for the learning curve (0: at the end)

    # The allowed range of every number: (lowest, highest), both included. Floats must
    # also be finite. The upper ends are where a run stops making sense on any machine
    # (a 2^17-code image head, a learning rate that diverges at once), not tuning advice.
    RANGES = {
        "seed": (0, 2 ** 63 - 1), "train_scenes": (1, 10 ** 7), "eval_draws": (1, 100),
        "eval_prompts": (0, 10 ** 5), "eval_scenes": (0, 10 ** 5), "bpe_vocab_size": (257, 2 ** 16),
        "vq_z_channels": (1, 16), "vq_ch": (1, 1024), "vq_groups": (1, 1024), "vq_steps": (1, 10 ** 7),
        "vq_batch": (1, 10 ** 5), "vq_lr": (1e-9, 1.0), "hidden_size": (4, 16384), "num_layers": (1, 256),
        "num_heads": (1, 256), "max_text_len": (4, 1024), "steps": (1, 10 ** 8), "batch_t2i": (0, 10 ** 5),
        "batch_mmu": (0, 10 ** 5), "batch_lm": (0, 10 ** 5), "batch_story": (0, 10 ** 5),
        "train_stories": (0, 10 ** 7), "contrastive_steps": (1, 10 ** 7), "mmu_questions": (1, 100),
        "lr": (1e-9, 1.0),
        "min_lr": (0.0, 1.0), "warmup": (0, 10 ** 8), "weight_decay": (0.0, 1.0),
        "caption_dropout": (0.0, 0.99), "loss_t2i": (0.0, 1000.0), "loss_lm": (0.0, 1000.0),
        "loss_mmu": (0.0, 1000.0), "sample_steps": (1, 1000), "guidance": (0.0, 100.0),
        "sample_temperature": (0.0, 100.0), "sample_top_k": (0, 2 ** 16), "save_every": (1, 10 ** 8),
        "eval_every": (0, 10 ** 8),
    }

    def check(self):
        """Raise ValueError (one line) for a value no run can use: out of range, not finite,
        or inconsistent with another field."""
        for name, (low, high) in self.RANGES.items():
            value = getattr(self, name)
            allowed = f"[{low:g}, {high:g}]" if isinstance(low, float) else f"[{low:,}, {high:,}]"
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} = {value}: must be a finite number in {allowed}")
            if not low <= value <= high:
                raise ValueError(f"{name} = {value}: must be in {allowed}")
        if self.image_objective not in ("mtp", "ar"):
            raise ValueError(f"image_objective = {self.image_objective!r}: choose mtp (Show-o) or ar")
        if self.mmu_features not in MMU_FEATURES:
            raise ValueError(f"mmu_features = {self.mmu_features!r}: choose one of {', '.join(MMU_FEATURES)}")
        if not (self.batch_t2i or self.batch_mmu or self.batch_lm or self.batch_story):
            raise ValueError("batch_t2i, batch_mmu, batch_lm and batch_story are all 0: no rows to train on")
        if not self.loss_t2i + self.loss_lm + self.loss_mmu > 0:
            raise ValueError("loss_t2i, loss_lm and loss_mmu are all 0: nothing would be trained")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr = {self.min_lr} is above lr = {self.lr}: the schedule decays from lr to min_lr")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ValueError(f"hidden_size {self.hidden_size} / num_heads {self.num_heads}: the head size "
                             f"must be a whole multiple of 4 (rotary embedding)")
        if self.batch_story and self.image_objective != "mtp":
            raise ValueError("story rows draw their frames by mask-token prediction: drop image_objective=ar")
        if bool(self.batch_story) != bool(self.train_stories):
            raise ValueError(f"batch_story = {self.batch_story}, train_stories = {self.train_stories}: "
                             f"story rows need stories to draw from, and stories need rows: set both or neither")
        if self.vq_ch % self.vq_groups:
            raise ValueError(f"vq_ch {self.vq_ch} must be a multiple of vq_groups {self.vq_groups}")
        if not 1 <= len(self.vq_ch_mult) <= 6 or min(self.vq_ch_mult) < 1 or max(self.vq_ch_mult) > 64:
            raise ValueError(f"vq_ch_mult {','.join(map(str, self.vq_ch_mult))}: give 1 to 6 width "
                             f"multipliers, each from 1 to 64 (e.g. 1,2,4)")
        if data.IMAGE_SIZE % 2 ** (len(self.vq_ch_mult) - 1):
            raise ValueError(f"vq_ch_mult {self.vq_ch_mult}: {len(self.vq_ch_mult) - 1} halvings do not "
                             f"divide {data.IMAGE_SIZE} px")


MMU_FEATURES = ("codes", "lfq_continuous", "contrastive")

PRESETS = {
    # ~10 minutes on a 2-core CPU
    "tiny": TrainConfig(),
    # Minutes on one GPU, an hour or more on a 2-core CPU; 294.5 TFLOP (limit 300): the tiny
    # tokenizer for twice the steps (16 x 2,800 read back 100% / 100% at 13 bits), a wider,
    # deeper transformer (71 GFLOP a step) at the learning rate that understanding
    # preferred (1e-3), scored every 1,000 steps for the learning curve. It was measured
    # with the tiny recipe of the time (loss on answers only, 12 steps at w = 1.5), so it
    # keeps those.
    "small": TrainConfig(vq_steps=2800, hidden_size=256, num_layers=6, steps=3850, lr=1e-3, eval_every=1000,
                         mmu_answer_only=True, sample_steps=12, guidance=1.5),
    # Mixed-modality generation (docs/experiments.md, "Stories"): the tiny transformer on
    # story rows (a sentence, a frame, a sentence, ...) and t2i rows, nothing else. Run it
    # on the tiny run's tokenizers, `--tokenizers-from assets/tiny.pt` (their 9.85 TFLOP
    # count): about 33 GFLOP a step, under 60 TFLOP in all.
    "story": TrainConfig(batch_t2i=12, batch_mmu=0, batch_lm=0, batch_story=6, train_stories=10000, steps=1500),
    # seconds: for tests and for trying the code path
    "micro": TrainConfig(train_scenes=400, eval_draws=1, eval_prompts=4, eval_scenes=4, bpe_vocab_size=512,
                         vq_z_channels=6, vq_ch=8, vq_steps=20, vq_batch=16, hidden_size=64,
                         num_layers=2, num_heads=2, steps=30, batch_t2i=8, batch_mmu=8, batch_lm=4,
                         warmup=5, sample_steps=4, save_every=10),
}


def parse_field(name, text, current):
    """A --set value, read as the type the field already has ("1,2,4" for a tuple)."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, tuple):
            return tuple(int(part) for part in text.split(","))
        return type(current)(text)
    except ValueError:
        raise ValueError(f"--set {name}={text}: expected {type(current).__name__} like {current!r}") from None


def override(tc, assignments):
    """TrainConfig with `--set name=value` assignments applied (any field of the dataclass)."""
    names = [f.name for f in fields(tc)]
    changes = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        if not equals or name not in names:
            raise ValueError(f"--set {assignment}: expected NAME=VALUE, NAME one of {', '.join(names)}")
        changes[name] = parse_field(name, text, getattr(tc, name))
    return replace(tc, **changes)


def config_to_dict(tc):
    """A TrainConfig as plain values (tuples as lists), for the checkpoint."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(tc).items()}


def config_from_dict(stored):
    """Undo config_to_dict (fields added since the checkpoint keep their defaults)."""
    known = {f.name: f.default for f in fields(TrainConfig)}
    return TrainConfig(**{k: tuple(v) if isinstance(known[k], tuple) else v
                          for k, v in stored.items() if k in known})


# ----------------------------------------------------------------------------------------
# Devices and processes
# ----------------------------------------------------------------------------------------

class Distributed:
    """Rank/world size under torchrun (RANK, WORLD_SIZE in the environment), else 1 process.

    Every process builds the same tokenizers and model (same seed), draws its own batches
    (its rank is part of every batch's seed) and DDP averages the gradients, so the
    weights stay identical. gloo runs on CPUs, nccl between GPUs.
    """

    def __init__(self, device):
        self.enabled = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.device = device
        if self.enabled:
            if device == "cuda":
                local = int(os.environ.get("LOCAL_RANK", 0))
                torch.cuda.set_device(local)
                self.device = f"cuda:{local}"
            dist.init_process_group("nccl" if device == "cuda" else "gloo")

    @property
    def main(self):
        return self.rank == 0

    def wrap(self, module):
        """DistributedDataParallel averages gradients across processes after backward()."""
        if not self.enabled:
            return module
        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def close(self):
        if self.enabled:
            dist.destroy_process_group()


def say(run, *args):
    """print, on the main process only."""
    if run.main:
        print(*args, flush=True)


def step_rng(seed, rank, stage, step):
    """(random.Random, torch.Generator) for one step's batch, from (seed, rank, stage, step) alone.

    Drawing each batch from its own seed makes the data order a function of the step
    number: a run resumed at step s draws exactly the batches a straight run draws there.
    """
    rng = random.Random(f"{seed}/{rank}/{stage}/{step}")
    return rng, torch.Generator().manual_seed(rng.getrandbits(63))


# ----------------------------------------------------------------------------------------
# 1-2. The tokenizers
# ----------------------------------------------------------------------------------------

def learning_rate(step, total, peak, low, warmup):
    """Linear warm-up to `peak`, then cosine decay to `low`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return low + 0.5 * (peak - low) * (1 + math.cos(math.pi * progress))


def image_tokenizer_config(tc, resolution):
    """A small MAGVIT-v2 layout: one ResBlock per level, the same widths both ways."""
    mult = tuple(tc.vq_ch_mult)
    return ImageTokenizerConfig(resolution=resolution, z_channels=tc.vq_z_channels,
                                encoder_ch=tc.vq_ch, encoder_ch_mult=mult, encoder_res_blocks=(1,) * len(mult),
                                decoder_ch=tc.vq_ch, decoder_ch_mult=mult, decoder_res_blocks=(1,) * len(mult),
                                num_groups=tc.vq_groups, entropy_per_code=tc.vq_entropy_per_code,
                                mid_attention=tc.vq_mid_attention)


def model_config(tc, text_tokenizer, vq, feature_width=0):
    """The transformer's config: its vocabulary laid out for these two tokenizers (and an
    mm_projector from feature_width when understanding reads continuous features)."""
    return ShowoConfig(llm_vocab_size=len(text_tokenizer), codebook_size=vq.cfg.codebook_size,
                       vocab_size=len(text_tokenizer) + len(SPECIAL_TOKENS) + vq.cfg.codebook_size + 1,
                       bos_token_id=text_tokenizer.eos_id, eos_token_id=text_tokenizer.eos_id,
                       num_vq_tokens=vq.cfg.grid_size ** 2, max_text_len=tc.max_text_len,
                       hidden_size=tc.hidden_size, num_layers=tc.num_layers, num_heads=tc.num_heads,
                       intermediate_size=4 * tc.hidden_size, max_position_embeddings=512, clip_width=feature_width)


def train_image_tokenizer(tc, images, run, meter):
    """Fit the LFQ tokenizer to reconstruct `images`, uint8 (B, H, W, 3).

    Loss = MSE(reconstruction) + commitment + entropy (both from the quantizer).
    """
    pixels = data.image_to_tensor(images)
    vq = ImageTokenizer(image_tokenizer_config(tc, pixels.shape[-1])).to(run.device)
    trained = run.wrap(vq)
    opt = torch.optim.AdamW(vq.parameters(), lr=tc.vq_lr, weight_decay=0.0)
    bar = tqdm(range(tc.vq_steps), desc="image tokenizer", disable=not run.main)
    for step in bar:
        with meter.step("image tokenizer", step):
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, tc.vq_steps, tc.vq_lr, tc.vq_lr / 10, tc.vq_steps // 20 + 1)
            _, gen = step_rng(tc.seed, run.rank, "image tokenizer", step)
            batch = pixels[torch.randint(len(pixels), (tc.vq_batch,), generator=gen)].to(run.device)
            reconstruction, _, commit, entropy = trained(batch)
            mse = F.mse_loss(reconstruction, batch)
            loss = mse + commit + entropy
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if step % 10 == 0:
            bar.set_postfix(mse=f"{mse.item():.4f}", entropy=f"{entropy.item():+.3f}")
    return vq.eval()


def train_contrastive_encoder(tc, training_data, text_tokenizer, run, meter, batch=128):
    """A CLIP of the shapes world (model.ContrastiveEncoder), trained on the training pictures
    and their captions by image-text matching alone (mmu_features=contrastive). Its FLOPs
    are part of the run's: the "contrastive encoder" stage."""
    images, captions, _, _ = training_data
    pixels = data.image_to_tensor(images)
    caption_ids = [text_tokenizer.encode(c) for c in captions]
    encoder = ContrastiveEncoder(len(text_tokenizer)).to(run.device)
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-3, weight_decay=0.01)
    bar = tqdm(range(tc.contrastive_steps), desc="contrastive encoder", disable=not run.main)
    for step in bar:
        with meter.step("contrastive encoder", step):
            _, gen = step_rng(tc.seed, run.rank, "contrastive encoder", step)
            picks = torch.randint(len(pixels), (batch,), generator=gen)
            chosen = [caption_ids[i] for i in picks]
            offsets = torch.tensor([0, *np.cumsum([len(ids) for ids in chosen])[:-1]])   # where each caption starts
            words = torch.tensor([token for ids in chosen for token in ids])
            loss = encoder.contrastive_loss(pixels[picks].to(run.device), words.to(run.device), offsets.to(run.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return encoder.eval()


def picture_reader(tc, vq, text_tokenizer, training_data, run, meter):
    """What understanding rows read instead of codes (mmu_features): None for codes, else
    uint8 pictures -> (B, N, C) continuous features."""
    if tc.mmu_features == "codes":
        return None
    if tc.mmu_features == "lfq_continuous":
        return partial(data.picture_features, vq.encoder, device=run.device)
    encoder = train_contrastive_encoder(tc, training_data, text_tokenizer, run, meter)
    return partial(data.picture_features, encoder.features, device=run.device)


# ----------------------------------------------------------------------------------------
# 3. Mixed batches (Show-o §3.2 "Training Objectives"): t2i (MTP) + understanding (NTP) + text (NTP)
# ----------------------------------------------------------------------------------------

class Part:
    """One kind of sequence in a mixed batch: (B, L) ids, labels and positions, (B, L, L) mask.

    mtp_positions (B, L) bool, stories only: the positions trained by mask-token prediction
    (the frame being drawn); the rest of a story row is trained by next-token prediction.
    features (B, N, C) float, understanding rows of a continuous `mmu_features` run only:
    the pictures' features, which take the N picture places (holding [MASK] ids).
    """

    def __init__(self, ids, labels, allowed, positions=None, mtp_positions=None, features=None):
        self.ids, self.labels, self.allowed = ids, labels, allowed
        self.mtp_positions, self.features = mtp_positions, features
        self.positions = torch.arange(ids.shape[1]).expand_as(ids) if positions is None else positions

    def __len__(self):
        return self.ids.shape[0]

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)   # noqa: E731
        return Part(*(move(t) for t in (self.ids, self.labels, self.allowed, self.positions, self.mtp_positions,
                                        self.features)))


def random_masks(count, n, gen):
    """(count, n) bool: which of n image tokens to mask in each of `count` pictures.

    Mask ratio cos(t*pi/2), t ~ U(0, 1): the same schedule sampling walks through. A random
    permutation per row; its first n_masked positions are masked (at least one).
    """
    t = torch.rand(count, generator=gen)
    n_masked = (n * torch.cos(t * math.pi / 2)).round().clamp(min=1)       # (count,)
    return torch.rand(count, n, generator=gen).argsort(1) < n_masked[:, None]


class MixedBatches:
    """Builds each step's three parts: t2i, understanding and plain text, with their labels.

    All pictures are tokenized once up front; a batch is then only index bookkeeping.
    Show-o trains its objectives jointly: one backward pass carries every gradient. What
    tells the kinds apart is only each row's attention mask and where its labels sit.
    Each part keeps its own length (no part is padded to another's).
    """

    def __init__(self, cfg, tc, codes, captions_ids, qa_ids, lm_ids, stories=(), rank=0, features=None):
        self.cfg, self.tc, self.rank = cfg, tc, rank
        self.codes, self.captions, self.qa, self.lm = codes, captions_ids, qa_ids, lm_ids
        self.features = features        # None, or (pictures, N, C): what understanding rows read
        self.stories = stories          # (sentences' ids, frames' codes (F, N)) per story
        # the stories with more than k frames, for k = 0 ... the most frames
        self.longer_than = [[i for i, (s, _) in enumerate(stories) if len(s) > k]
                            for k in range(max((len(s) for s, _ in stories), default=0))]

    def batch(self, step):
        """The parts of step `step` (the same for the same seed, rank and step)."""
        rng, gen = step_rng(self.tc.seed, self.rank, "transformer", step)
        pick = lambda count: [rng.randrange(len(self.codes)) for _ in range(count)]   # noqa: E731
        parts = {"t2i": self.t2i(pick(self.tc.batch_t2i), rng, gen)} if self.tc.batch_t2i else {}
        if self.tc.batch_mmu:
            parts["mmu"] = self.mmu(pick(self.tc.batch_mmu), rng)
        if self.tc.batch_lm:
            parts["lm"] = self.text([rng.randrange(len(self.lm)) for _ in range(self.tc.batch_lm)])
        if self.tc.batch_story:
            parts["story"] = self.story(rng, gen)
        return parts

    def t2i(self, picks, rng, gen):
        """Caption + partly masked picture. Labels: the original token at masked places only.

        With image_objective "ar" the picture is not masked: every image token is a label,
        predicted from the ones before it under a causal mask (see prediction_targets).
        """
        cfg, n = self.cfg, self.cfg.num_vq_tokens
        # Caption drop-out: an empty caption is the unconditional prompt, so the same
        # network learns p(image) too, which classifier-free guidance needs at sampling.
        captions = [[] if rng.random() < self.tc.caption_dropout else self.captions[i] for i in picks]
        tokens = self.codes[picks] + cfg.image_offset                         # (B, N)
        if self.tc.image_objective == "ar":
            ids = t2i_sequences(captions, tokens, cfg)
            labels = torch.full_like(ids, IGNORE)
            labels[:, -(n + 1):-1] = tokens
            return Part(ids, labels, lm_attention_mask(ids, cfg.pad_id))
        masked = random_masks(len(picks), n, gen)                             # (B, N)
        ids = t2i_sequences(captions, tokens.masked_fill(masked, cfg.mask_token_id), cfg)
        # The image span is the last N+1 ... last-1 positions (before <|eoi|>). Visible
        # image tokens get no loss: copying an input teaches nothing (Show-o Eq. 2).
        labels = torch.full_like(ids, IGNORE)
        labels[:, -(n + 1):-1] = tokens.masked_fill(~masked, IGNORE)
        return Part(ids, labels, t2i_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id))

    def mmu(self, picks, rng):
        """Picture + questions + answers: <|mmu|> <|soi|> img <|eoi|> then BOS q a EOS, ...

        Up to mmu_questions question-answer pairs of each picture share its row
        (attention.shared_picture_sequences). Labels: each answer and its EOS, and the
        question too unless mmu_answer_only (BOS is given, never predicted). With continuous
        features, the picture's places hold [MASK] ids and the part carries the features.
        """
        cfg, tc = self.cfg, self.tc
        if self.features is None:
            images = [self.codes[i] + cfg.image_offset for i in picks]
        else:
            images = [torch.full((cfg.num_vq_tokens,), cfg.mask_token_id) for _ in picks]
        asked = [rng.sample(self.qa[i], min(tc.mmu_questions, len(self.qa[i]))) for i in picks]
        labelled = [[([IGNORE] * len(q) if tc.mmu_answer_only else q) + a for q, a in pairs] for pairs in asked]
        ids, labels, positions, segments = shared_picture_sequences(images, asked, labelled, cfg, IGNORE)
        features = None if self.features is None else self.features[picks]
        return Part(ids, labels, shared_picture_attention_mask(segments, ids == cfg.pad_id), positions,
                    features=features)

    def story(self, rng, gen):
        """Stories cut after frame k: sentences 1..k, frames 1..k-1 whole, frame k partly
        masked (docs/sequences.md, "Stories"). Labels: every sentence token and EOS (NTP)
        and frame k's masked tokens (MTP), in one row: Show-o's two objectives at once.

        Why cut after frame k: at inference every sentence and every frame is written after
        WHOLE earlier frames, so in training nothing may look at a partly masked frame, and
        everything after frame k would. So each row trains one frame; its sentences and
        earlier frames are the context. One k per step (uniform over 1 ... the most frames,
        among the stories that long) gives rows of one length: no padding to compute.
        Sentence drop-out: a caption_dropout share of the rows loses EVERY sentence (empty
        slots, no text loss), so the network also learns frames from frames alone, the
        unconditional story that classifier-free guidance needs (sampling.draw_frame).
        """
        cfg, n = self.cfg, self.cfg.num_vq_tokens
        cut = rng.randrange(len(self.longer_than))                            # frame k = cut + 1
        chosen = [self.stories[rng.choice(self.longer_than[cut])] for _ in range(self.tc.batch_story)]
        masked = random_masks(len(chosen), n, gen)                            # (B, N)
        rows, labels = [], []
        for (sentences, codes), hidden in zip(chosen, masked):
            if rng.random() < self.tc.caption_dropout:
                sentences = [[] for _ in sentences]                            # the unconditional story
            tokens = codes[:cut + 1] + cfg.image_offset                        # (k, N)
            drawn = tokens[cut].masked_fill(hidden, cfg.mask_token_id)
            rows.append(story_sequence(sentences[:cut + 1], [*tokens[:cut].tolist(), drawn.tolist()], cfg))
            row_labels = [IGNORE]                                              # <|t2v|>
            for j, sentence in enumerate(sentences[:cut + 1]):
                slots = sentence_slots(sentence, cfg)                          # BOS words EOS [PAD]...
                words = [IGNORE if t == cfg.pad_id or not sentence else t for t in slots[1:]]
                row_labels += [IGNORE] + words
                frame = tokens[cut].masked_fill(~hidden, IGNORE).tolist() if j == cut else [IGNORE] * n
                row_labels += [IGNORE, *frame, IGNORE]                         # <|soi|> frame <|eoi|>
            labels.append(row_labels)
        ids, labels = torch.tensor(rows), torch.tensor(labels)
        return Part(ids, labels, story_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id),
                    mtp_positions=labels >= cfg.image_offset)

    def text(self, picks):
        """Plain sentences for language modelling. Labels: every real token."""
        cfg = self.cfg
        ids = lm_sequences([self.lm[i] for i in picks], cfg, max(len(self.lm[i]) for i in picks) + 2)
        return Part(ids, ids.masked_fill(ids == cfg.pad_id, IGNORE), lm_attention_mask(ids, cfg.pad_id))


def prediction_targets(part, kind, objective="mtp"):
    """What each position must predict: an MTP row its own label, an NTP row the next one.

    This is the shift inside ntp_loss / mtp_loss (model.py), done before the network runs
    so that lm_head only has to run where there is a target. With the "ar" image
    objective, t2i rows are NTP rows too (<|soi|> predicts the first image token, ...).
    """
    if kind == "t2i" and objective == "mtp":
        return part.labels
    targets = torch.full_like(part.labels, IGNORE)
    targets[:, :-1] = part.labels[:, 1:]
    return targets


def story_targets(part):
    """What each position of a story row predicts: on the frame being drawn, its own token
    (MTP, no shift); elsewhere the next token (NTP, the shift of prediction_targets)."""
    next_is_frame = torch.zeros_like(part.mtp_positions)
    next_is_frame[:, :-1] = part.mtp_positions[:, 1:]
    shifted = prediction_targets(part, "story").masked_fill(next_is_frame, IGNORE)
    return torch.where(part.mtp_positions, part.labels, shifted)


class MixedForward(nn.Module):
    """The transformer run over every part of a mixed batch, in one forward call.

    One call (rather than one per part) keeps DistributedDataParallel's rhythm of one
    forward, one backward. Returns, per part, the logits at the positions that have a
    target only: (K, V) for its K targets.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, parts, targets):
        return {kind: self.model(self.inputs(part), part.allowed, part.positions, keep=targets[kind] != IGNORE)
                for kind, part in parts.items()}

    def inputs(self, part):
        """A part's ids, or its embeddings with the projected picture features in place."""
        if part.features is None:
            return part.ids
        return self.model.embed_with_features(part.ids, self.model.mm_projector(part.features))


# A story row carries both objectives; its frame (MTP) is weighed as a t2i picture, its
# sentences (NTP, written from the pictures before them) as understanding text.
LOSS_WEIGHT = {"t2i": "loss_t2i", "lm": "loss_lm", "mmu": "loss_mmu", "story frames": "loss_t2i",
               "story text": "loss_mmu"}


def mixed_loss(forward, parts, tc, device):
    """The training objective on one mixed batch: a weighted sum of three losses.

    The paper (arXiv 2408.12528v7, §3.2 "Training Objectives", Eq. 3) writes

        L = L_MTP + alpha * L_NTP

    with one NTP term for all text. The released training code splits that term by data
    source and weights each part, which is what this function does:

        L = loss_t2i * MTP(t2i rows) + loss_lm * NTP(plain text) + loss_mmu * NTP(understanding)

    with the released configs' 1.0 / 0.1 / 1.0 as defaults. So the paper's alpha is one
    weight shared by loss_lm and loss_mmu; here they differ (text matters least).

    mtp_loss and ntp_loss (model.py, Eq. 1 and 2) are cross-entropy averaged over the
    positions whose target is not IGNORE. Here the network only computes logits at those
    positions (`keep`), and the cross-entropy of each part is averaged over them: the same
    number (tests/test_train.py checks it) for about a third of lm_head's work.
    """
    parts = {kind: part.to(device) for kind, part in parts.items()}
    targets = {kind: story_targets(part) if kind == "story" else prediction_targets(part, kind, tc.image_objective)
               for kind, part in parts.items()}
    logits = forward(parts, targets)
    losses = {}
    for kind, part in parts.items():
        kept = targets[kind] != IGNORE
        if kind == "story":   # one row, two objectives: a loss each, to weigh and to watch
            frame = part.mtp_positions[kept]                                  # (K,) which targets are MTP
            losses["story frames"] = F.cross_entropy(logits[kind][frame], targets[kind][kept][frame])
            losses["story text"] = F.cross_entropy(logits[kind][~frame], targets[kind][kept][~frame])
        else:
            losses[kind] = F.cross_entropy(logits[kind], targets[kind][kept])
    total = sum(getattr(tc, LOSS_WEIGHT[kind]) * loss for kind, loss in losses.items())
    return total, {kind: loss.item() for kind, loss in losses.items()}


# ----------------------------------------------------------------------------------------
# Saving and resuming
# ----------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything a checkpoint holds about a run besides the networks."""
    tc: TrainConfig
    preset: str
    step: int = 0                       # transformer steps done
    optimizer: dict = None
    history: list = None                # one {kind: loss} per step
    scores: list = None                 # one {"step", "tflop", score...} per evaluation
    meter: ComputeMeter = None
    data_dir: str = None                # your own pictures (--data-dir), or None: the shapes world

    def extra(self):
        settings = sampling_settings(self.tc)
        return {"sampling": {task: settings for task in TASKS}, "question_template": "{question}",
                "image_objective": self.tc.image_objective, "stories": self.tc.batch_story > 0,
                "mmu_features": self.tc.mmu_features,
                "preset": self.preset, "train_config": config_to_dict(self.tc),
                "train_state": {"step": self.step, "optimizer": self.optimizer, "data_dir": self.data_dir},
                "loss_history": self.history, "scores": self.scores, "compute": self.meter.to_dict()}

    @classmethod
    def from_extra(cls, extra, path, preset):
        """The run stored in a checkpoint's extra, to resume it; UsageError if there is none."""
        if "train_state" not in extra or "train_config" not in extra:
            raise UsageError(f"{path} holds no training run (a converted release?): --resume continues "
                             f"a checkpoint that train.py wrote")
        if extra.get("preset", "tiny") != preset:
            raise UsageError(f"{path} is a run of --preset {extra.get('preset')}: resume it with that preset")
        state, compute = extra["train_state"], extra.get("compute", {})
        return cls(config_from_dict(extra["train_config"]), preset, state["step"], materialize(state["optimizer"]),
                   list(extra.get("loss_history", [])), list(extra.get("scores", [])),
                   ComputeMeter(compute.get("stages")), state.get("data_dir"))


def sampling_settings(tc):
    """The recipe's picture-drawing settings, as sampling.generate_pictures takes them."""
    return {"steps": tc.sample_steps, "guidance": tc.guidance, "temperature": tc.sample_temperature,
            "top_k": tc.sample_top_k or None}


def save(path, model, vq, text_tokenizer, state):
    """Write the checkpoint (checkpoint.save_checkpoint: a temporary file, then a rename)."""
    save_checkpoint(path, model, vq, text_tokenizer, extra=state.extra())


# ----------------------------------------------------------------------------------------
# The transformer stage
# ----------------------------------------------------------------------------------------

class Diverged(Exception):
    """The loss or the weights are not finite numbers any more. Nothing more is saved, so the
    last checkpoint on disk is the last finite one."""


def train_transformer(model, batches, state, run, checkpoint=None, score=None):
    """AdamW with warm-up + cosine decay on mixed batches, from state.step to tc.steps.

    checkpoint(state): called every save_every steps, at the end and on Ctrl-C (then
    KeyboardInterrupt is raised again). score(step): called every eval_every steps.
    Raises Diverged at the first loss that is not a finite number, before it is saved.
    """
    tc = state.tc
    forward = run.wrap(MixedForward(model))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.999))
    if state.optimizer:
        opt.load_state_dict(state.optimizer)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.device.startswith("cuda")
                else nullcontext())
    model.train()

    def save():
        """Write a checkpoint, but never one whose weights are not all finite numbers."""
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise Diverged(f"the weights became NaN or infinite by step {state.step}: training diverged "
                           f"(is lr = {tc.lr} too large?)")
        state.optimizer = opt.state_dict()
        checkpoint(state)

    bar = tqdm(range(state.step, tc.steps), desc="transformer", disable=not run.main,
               initial=state.step, total=tc.steps)
    try:
        for step in bar:
            with state.meter.step("transformer", step):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(step, tc.steps, tc.lr, tc.min_lr, tc.warmup)
                parts = batches.batch(step)
                with autocast:
                    loss, losses = mixed_loss(forward, parts, tc, run.device)
                if not all(map(math.isfinite, losses.values())):    # stop before the update spreads it
                    raise Diverged(f"the loss is not finite at step {step} ({losses}): training diverged "
                                   f"(is lr = {tc.lr} too large?)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                # Clipping guards the first steps, when the freshly initialised embeddings
                # of the image ids get large, noisy gradients.
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            state.step, state.optimizer = step + 1, None
            state.history.append(losses)
            if step % 10 == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            if score and tc.eval_every and state.step % tc.eval_every == 0 and state.step < tc.steps:
                score(state.step)
                model.train()
            if checkpoint and (state.step % tc.save_every == 0 or state.step == tc.steps):
                save()
    except KeyboardInterrupt:
        if checkpoint:
            save()
        raise
    state.optimizer = opt.state_dict()
    return model.eval()


# ----------------------------------------------------------------------------------------
# The whole run
# ----------------------------------------------------------------------------------------

def train_tokenizers(args, tc, training_data, stories, run, meter):
    """Stages 1-2: a BPE on the training texts (stories' sentences too), the LFQ tokenizer on
    the training pictures."""
    images, _, qa, sentences = training_data
    texts = sentences + sorted({q for pairs in qa for q, _ in pairs}) + [s for story in stories for s in story.sentences]
    text_tokenizer = TextTokenizer.train(texts, tc.bpe_vocab_size, verbose=run.main)
    sample = texts[:2000]
    chars_per_token = sum(map(len, sample)) / sum(len(text_tokenizer.encode(t)) for t in sample)
    say(run, f"text tokenizer: {len(text_tokenizer)} ids, {chars_per_token:.1f} characters per token")
    vq = train_image_tokenizer(tc, images, run, meter)
    if not args.data_dir:
        q = report_image_tokenizer(vq, data.make_examples(300, seed=tc.seed + 1), run.device)
        say(run, f"image tokenizer: PSNR {q['psnr']:.1f} dB, objects read back from reconstructions "
                 f"{q['describe_ok']:.0%}, codes used {q['codes_used']}/{q['codebook']} "
                 f"(perplexity {q['perplexity']:.0f})")
    return text_tokenizer, vq


def parse_args(argv):
    p = argparse.ArgumentParser(description="Train a small Show-o (tokenizers + transformer).")
    p.add_argument("--tiny", action="store_true", help="the ~10 minute CPU recipe (the default preset)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override any TrainConfig field, e.g. --set steps=800 --set vq_ch_mult=1,2,4")
    p.add_argument("--seed", type=int, help="shorthand for --set seed=N")
    p.add_argument("--steps", type=int, help="shorthand for --set steps=N (transformer steps)")
    p.add_argument("--image-objective", choices=["mtp", "ar"],
                   help="shorthand for --set image_objective=...: mtp (Show-o, the default) or ar (raster order)")
    p.add_argument("--out-dir", type=Path, default=Path("out"))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue OUT_DIR/PRESET.pt where it stopped")
    p.add_argument("--init", help="fine-tune from a converted checkpoint (python checkpoint.py convert)")
    p.add_argument("--tokenizers-from", help="reuse the text and image tokenizers of this checkpoint")
    p.add_argument("--data-dir", help="folder of your own images with captions.jsonl")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out scores")
    return p.parse_args(argv)


def recipe(args):
    """(preset name, TrainConfig) from the preset and the overrides; ValueError when bad."""
    preset = "tiny" if args.tiny else args.preset
    shorthands = [f"{name}={value}" for name, value in (("seed", args.seed), ("steps", args.steps),
                                                        ("image_objective", args.image_objective))
                  if value is not None]
    tc = override(PRESETS[preset], shorthands + args.set)
    tc.check()
    return preset, tc


def check_arguments(args, path):
    """Fail early, in one line, on options that cannot work together or files that cannot be used."""
    if args.resume and (args.init or args.tokenizers_from):
        raise UsageError("--resume continues a run as it was: drop --init / --tokenizers-from")
    if args.resume and (args.set or args.seed is not None or args.steps is not None or args.image_objective):
        raise UsageError("--resume keeps the checkpoint's recipe (same schedule, same data): drop --set/--seed/--steps")
    if args.resume and not path.exists():
        raise UsageError(f"nothing to resume: {path} does not exist (start without --resume)")
    if args.init and args.tokenizers_from:
        raise UsageError("--init already brings its tokenizers: drop --tokenizers-from")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise UsageError(f"--out-dir {args.out_dir} is a file: give a folder")
    check_writable_folder(args.out_dir, "--out-dir", create=True)


def starting_point(args, preset, tc, path, run):
    """(model or None, vq, text_tokenizer or None, Run state) for a fresh, resumed or reused start."""
    if args.resume:
        model, vq, text_tokenizer, extra = load_checkpoint(path, run.device)
        state = Run.from_extra(extra, path, preset)
        if args.data_dir and Path(args.data_dir) != Path(state.data_dir or "."):
            raise UsageError(f"{path} was trained on {state.data_dir or 'the shapes world'}: resume without "
                             f"--data-dir (the run keeps its own data)")
        return model, vq, text_tokenizer, state
    state = Run(tc, preset, history=[], scores=[], meter=ComputeMeter(), data_dir=args.data_dir)
    source = args.init or args.tokenizers_from
    if not source:
        return None, None, None, state
    model, vq, text_tokenizer, extra = load_checkpoint(source, run.device)
    # The tokenizers' training compute is part of this run's cost.
    reused = extra.get("compute", {}).get("stages", {})
    state.meter = ComputeMeter({stage: reused[stage] for stage in ("image tokenizer",) if stage in reused})
    return (model if args.init else None), vq, text_tokenizer, state


def scoring(tc):
    """How this recipe is scored (evaluate.py): its seed, sizes and sampling settings."""
    return Scoring(tc.seed, tc.eval_draws, tc.eval_prompts, tc.eval_scenes, tc.image_objective,
                   sampling_settings(tc), STORY_FRAMES_SCORED if tc.batch_story else 0)


def record_scores(model, vq, text_tokenizer, state, reader, step):
    """Score the model now; keep the scores with the step and the TFLOP spent so far."""
    scores = evaluate(model, vq, text_tokenizer, scoring(state.tc), reader, draw=state.tc.batch_t2i > 0)
    state.scores.append({"step": step, "tflop": state.meter.total / 1e12, **scores})
    tqdm.write(f"step {step}, {state.meter.total / 1e12:.1f} TFLOP: {format_scores(scores)}")


def encode_stories(stories, vq, text_tokenizer, device):
    """[(sentences' ids, frames' codes (F, N))] for data.Story's, every frame tokenized at once."""
    codes = data.encode_pictures(vq, np.concatenate([story.images for story in stories]), device)
    ends = np.cumsum([len(story.sentences) for story in stories])
    return [([text_tokenizer.encode(s) for s in story.sentences], codes[end - len(story.sentences):end])
            for story, end in zip(stories, ends)]


def make_batches(cfg, tc, vq, text_tokenizer, training_data, stories, reader, run):
    """Stage 3 works on ids only: every picture is tokenized once, here, not per step."""
    images, captions, qa, sentences = training_data
    encode = text_tokenizer.encode
    caption_ids = [encode(c) for c in captions]
    # Answers are encoded with a leading space: GPT-2 style BPE spells " red" (the word
    # after a question) differently from "red" at the start of a text.
    qa_ids = [[(encode(q), encode(" " + a)) for q, a in pairs] for pairs in qa]
    # A caption longer than the text slots would be cut without a word (attention.text_slots).
    longest = max(map(len, caption_ids))
    if longest + 3 > cfg.max_text_len + 1:
        raise UsageError(f"max_text_len = {cfg.max_text_len}: the longest caption is {longest} tokens, and a "
                         f"t2i row needs 2 more: set at least --set max_text_len={longest + 2}")
    story_ids = encode_stories(stories, vq, text_tokenizer, run.device) if stories else ()
    longest = max((len(s) for sentences, _ in story_ids for s in sentences), default=0)
    if longest + 2 > cfg.max_text_len:
        raise UsageError(f"max_text_len = {cfg.max_text_len}: the longest story sentence is {longest} tokens, "
                         f"and its slots need 2 more: set at least --set max_text_len={longest + 2}")
    return MixedBatches(cfg, tc, data.encode_pictures(vq, images, run.device), caption_ids, qa_ids,
                        [encode(s) for s in sentences], story_ids, rank=run.rank,
                        features=reader(images) if reader else None)


def train(args, preset, tc, path, run, progress):
    """Stages 1-4 (see the top of this file). `progress` records how far the run got."""
    model, vq, text_tokenizer, state = starting_point(args, preset, tc, path, run)
    tc = state.tc
    training_data = data.training_set(state.data_dir, tc.train_scenes, tc.seed)
    stories = data.make_stories(tc.train_stories, seed=f"{tc.seed}/stories") if tc.batch_story else []
    torch.manual_seed(tc.seed)
    started = time.time()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    if vq is None:                                                     # stages 1-2
        text_tokenizer, vq = train_tokenizers(args, tc, training_data, stories, run, state.meter)
    reader = picture_reader(tc, vq, text_tokenizer, training_data, run, state.meter)
    width = reader(training_data[0][:1]).shape[-1] if reader else 0
    model = (model or Showo(model_config(tc, text_tokenizer, vq, width))).to(run.device).float()
    cfg = model.cfg
    say(run, f"transformer: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
             f"vocabulary {cfg.vocab_size} = {cfg.llm_vocab_size} text + {len(SPECIAL_TOKENS)} special + "
             f"{cfg.codebook_size} image + [MASK], {cfg.num_vq_tokens} image tokens per picture"
             + (f"; resuming at step {state.step} of {tc.steps}" if state.step else ""))

    # Stage 3. Only the main process writes checkpoints and scores.
    scored = run.main and not args.no_eval and not state.data_dir
    checkpoint = partial(save, path, model, vq, text_tokenizer) if run.main else None
    score = partial(record_scores, model, vq, text_tokenizer, state, reader) if scored else None
    batches = make_batches(cfg, tc, vq, text_tokenizer, training_data, stories, reader, run)
    progress["state"] = state
    train_transformer(model, batches, state, run, checkpoint, score)
    say(run, state.meter.report())

    # Stage 4: samples, held-out scores, training curves.
    if run.main:
        written = [path]
        if tc.batch_t2i:                                               # a model that draws
            sample_grid(model, vq, text_tokenizer, scoring(tc)).save(args.out_dir / "samples.png")
            written.append(args.out_dir / "samples.png")
        say(run, f"wrote {' and '.join(map(str, written))} ({time.time() - started:.0f} s so far)")
        if scored:
            score(tc.steps)
            checkpoint(state)
        curves_picture(state.history, state.scores).save(args.out_dir / "curves.png")
        say(run, f"wrote {args.out_dir / 'curves.png'}; done in {time.time() - started:.0f} s")


def main(argv=None):
    """Check the recipe and options, then train; every way a run can stop early is one line."""
    args = parse_args(argv)
    # Warnings (e.g. skipped unreadable images) as one plain line, not a source listing.
    warnings.formatwarning = lambda message, *_: f"warning: {message}\n"
    progress, run = {}, None
    try:
        preset, tc = recipe(args)
        path = args.out_dir / f"{preset}.pt"
        check_arguments(args, path)
        run = Distributed(pick_device(args.device))
        with one_writer(path) if run.main else nullcontext():
            train(args, preset, tc, path, run, progress)
    except KeyboardInterrupt:
        state = progress.get("state")
        if state and state.step:
            print(f"\ninterrupted: step {state.step} of {state.tc.steps} saved in {path}; continue with: "
                  f"python train.py --preset {preset} --out-dir {args.out_dir} --resume", file=sys.stderr)
        else:
            print("\ninterrupted before the first transformer step: nothing was saved (the tokenizer "
                  "stages are not resumable; run the command again)", file=sys.stderr)
        sys.exit(130)
    except Diverged as error:
        sys.exit(f"error: {error}; the last checkpoint with finite weights, if any, is {path}")
    except (UsageError, ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    finally:
        if run:
            run.close()


if __name__ == "__main__":
    main()
