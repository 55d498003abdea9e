"""Train a small Show-o from nothing: tokenizers, then one transformer for two jobs.

`python train.py --tiny` runs the whole recipe on one machine (a laptop CPU is enough):

1. learn a byte-level BPE text tokenizer on the captions and questions (tokenizer.py);
2. learn a small MAGVIT-v2 style LFQ image tokenizer on the pictures (tokenizer.py);
3. train the transformer on MIXED batches (Show-o arXiv 2408.12528v7, §3.2 "Training Objectives"
   and Appendix C "Training Pipeline"): every step holds
   text-to-image sequences (mask-token prediction, MTP, with 10% of captions dropped so
   classifier-free guidance works), understanding sequences (next-token prediction, NTP,
   on the answers; a picture carries six questions) and plain text (NTP); the loss is
   1.0 * MTP(t2i) + 0.1 * NTP(lm) + 1.0 * NTP(mmu)  (Eq. 3 of the paper);
4. write one checkpoint (the same single-file format as `python checkpoint.py convert`), a
   grid of samples, and held-out scores: does a generated picture match its prompt,
   are answers and captions right.

Training FLOPs are counted (ComputeMeter), so a recipe's cost is a number that is the
same on every machine. The data is the built-in shapes world (data.py) unless
--data-dir points at a folder of your own captioned images. `torchrun
--nproc_per_node=N train.py ...` trains with DistributedDataParallel.

Read first: data.py. Read next: sampling.py.
"""

import argparse
import math
import os
import random
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.flop_counter import (FlopCounterMode, flop_registry, register_flop_formula,
                                      sdpa_backward_flop_count, sdpa_flop_count)
from tqdm import tqdm

import data
from attention import lm_attention_mask, shared_picture_attention_mask, t2i_attention_mask
from checkpoint import CheckpointError, load_checkpoint, materialize, save_checkpoint
from model import IGNORE, SPECIAL_TOKENS, Showo, ShowoConfig
from sampling import TASKS, UsageError, answer_questions, generate_pictures, image_grid, pick_device
from tokenizer import ImageTokenizer, ImageTokenizerConfig, TextTokenizer, lm_sequences, t2i_sequences


# ----------------------------------------------------------------------------------------
# The recipe, as one dataclass
# ----------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Every knob of a run. Presets below; `--set name=value` overrides any field."""
    seed: int = 0
    # data
    train_scenes: int = 20000
    # held-out scores: every one-object caption `eval_draws` times, `eval_prompts`
    # two-object prompts, all 108 held-out pairings, and `eval_scenes` new pictures
    eval_draws: int = 2
    eval_prompts: int = 200
    eval_scenes: int = 200
    # text tokenizer
    bpe_vocab_size: int = 512
    # Image tokenizer: 32x32 pictures -> 8x8 codes of vq_z_channels bits. Chosen on how
    # often `data.describe` reads the objects back from reconstructions (one / two objects)
    # at a fixed FLOP budget (README, "The tiny recipe"):
    # - 10 bits, not Show-o's 13: the shapes world needs a few hundred codes; at 10 TFLOP
    #   10 bits read back 98% / 96% against 97% / 94% for 13 bits, and the image head
    #   (hidden x codebook) shrinks 8x. 8 bits were too few (79% / 62%).
    # - many small batches: at 20 TFLOP, 64 x 700 read back 93% / 84%, 32 x 1400 100% / 98%;
    #   16 x 1400 reaches 97% / 94% at half that cost (10 TFLOP).
    # - the entropy bonus on whole codes, not bits (tokenizer.LFQ): 571 codes used instead of
    #   49, PSNR 30.1 against 28.8 dB; the understanding scores gained most from it (captions
    #   69% -> 88% with the same transformer).
    # - no attention block in the middle: 4% fewer FLOPs; with the per-code entropy it
    #   reads back 99% / 98% (an 8x8 grid is small enough for convolutions alone).
    vq_z_channels: int = 10
    vq_ch: int = 16
    vq_ch_mult: tuple = (1, 2, 4)
    vq_groups: int = 8
    vq_steps: int = 1400
    vq_batch: int = 16
    vq_lr: float = 3e-3
    vq_entropy_per_code: bool = True
    vq_mid_attention: bool = False
    # Transformer. Smaller batches and more steps learn more per FLOP here (40/24/8 x 432
    # steps: t2i 79% / 50%; 20/4/1 x 1002: 78% / 62%, same 57 TFLOP); six question-answer
    # pairs share one picture (the picture is paid for once), and plain text matters least.
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    max_text_len: int = 20
    steps: int = 1600
    batch_t2i: int = 20
    batch_mmu: int = 4
    batch_lm: int = 1
    # How pictures are modelled: "mtp" (Show-o: masked tokens, bidirectional, MaskGIT
    # decoding) or "ar" (the baseline Show-o argues against: raster order, causal, next-token)
    image_objective: str = "mtp"
    mmu_questions: int = 6          # question-answer pairs per picture in one understanding row
    # NTP loss on the question and the answer, as the released code's captioning stages
    # do (True: on the answer only). Predicting the questions ("what shape is the red
    # object?") also trains the colour and shape words the captions use, which drawing
    # needs. Over seeds 0-2 at 55 TFLOP: one object 69% -> 81%, two objects 44% -> 53%,
    # VQA 89% -> 88%, captions 82% -> 79%, captions of held-out pairs 61% -> 42% (the
    # cost; README, "How much one run tells").
    mmu_answer_only: bool = False
    # The reference fine-tunes a pretrained 1.3B model at 1e-4; a 2M model trained from
    # nothing needs a larger step (QK-Norm keeps it stable).
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.01
    caption_dropout: float = 0.1
    # The loss weights of the paper's Eq. 3: plain text matters least here.
    loss_t2i: float = 1.0
    loss_lm: float = 0.1
    loss_mmu: float = 1.0
    # Sampling used for the samples and the scores; stored in the checkpoint as
    # sampling.py's defaults. Chosen on draws apart from the scored ones (other noise,
    # other two-object prompts), averaged over seeds 0-2 of this recipe: 12 steps at w = 1.5
    # drew one / two objects right 82% / 46%, w = 1 82% / 51%, 16 steps at w = 1 84% / 54%,
    # 24 steps 83% / 55% (for half again the time). The released 256 px default is 18 steps.
    sample_steps: int = 16
    guidance: float = 1.0
    sample_temperature: float = 1.0
    sample_top_k: int = 0           # ar only: sample among the k most likely codes (0: all)
    # a checkpoint every save_every transformer steps (and on Ctrl-C); scores every
    # eval_every steps for the learning curve (0: only at the end)
    save_every: int = 100
    eval_every: int = 0

    def check(self):
        """Raise ValueError (one line) for a value no run can use."""
        positive = ["train_scenes", "bpe_vocab_size", "vq_z_channels", "vq_ch", "vq_groups", "vq_steps",
                    "vq_batch", "hidden_size", "num_layers", "num_heads", "max_text_len", "steps",
                    "batch_t2i", "mmu_questions", "sample_steps", "save_every", "eval_draws"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be at least 1")
        for name in ["batch_mmu", "batch_lm", "eval_prompts", "eval_scenes", "warmup", "eval_every",
                     "weight_decay", "guidance", "sample_temperature", "min_lr"]:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)}: must not be negative")
        for name in ["lr", "vq_lr"]:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} = {getattr(self, name)}: must be positive")
        if self.image_objective not in ("mtp", "ar"):
            raise ValueError(f"image_objective = {self.image_objective!r}: choose mtp (Show-o) or ar")
        if self.sample_top_k < 0:
            raise ValueError(f"sample_top_k = {self.sample_top_k}: must not be negative (0: no limit)")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout = {self.caption_dropout}: must be in [0, 1)")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ValueError(f"hidden_size {self.hidden_size} / num_heads {self.num_heads}: the head size "
                             f"must be a whole multiple of 4 (rotary embedding)")
        if self.vq_ch % self.vq_groups:
            raise ValueError(f"vq_ch {self.vq_ch} must be a multiple of vq_groups {self.vq_groups}")
        if data.IMAGE_SIZE % 2 ** (len(self.vq_ch_mult) - 1):
            raise ValueError(f"vq_ch_mult {self.vq_ch_mult}: {len(self.vq_ch_mult) - 1} halvings do not "
                             f"divide {data.IMAGE_SIZE} px")


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
    # seconds: for tests and for trying the code path
    "micro": TrainConfig(train_scenes=400, eval_draws=1, eval_prompts=4, eval_scenes=4, bpe_vocab_size=300,
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
# Counting the compute
# ----------------------------------------------------------------------------------------
#
# Budgets here are stated in floating-point operations (FLOPs), not seconds: a FLOP count
# is the same on every machine, while the same run takes twice as long on a busy CPU.
# PyTorch's FlopCounterMode watches every matmul, convolution and attention call as it
# runs and adds up 2 FLOPs per multiply-add, forward and backward alike. (nanoGPT
# estimates the same number from a formula, 6 * parameters per token plus attention, to
# report its MFU; counting needs no formula and covers the convolutions too.)
#
# The counter knows the attention kernels PyTorch uses on GPUs but not the one it uses on
# CPUs; the two registrations below give the CPU kernel the same formula.

_CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_CPU_ATTENTION_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
if _CPU_ATTENTION not in flop_registry:
    @register_flop_formula(_CPU_ATTENTION)
    def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    @register_flop_formula(_CPU_ATTENTION_BACKWARD)
    def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)


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
            with FlopCounterMode(display=False) as counter:
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
                         f"TFLOP in {record['seconds']:.0f} s, {self.flops(stage) / record['seconds'] / 1e9:.0f} GFLOP/s")
        return "\n".join(lines)

    def to_dict(self):
        return {"stages": self.stages, "flops": {stage: self.flops(stage) for stage in self.stages},
                "total_flops": self.total}


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


def model_config(tc, text_tokenizer, vq):
    """The transformer's config: its vocabulary laid out for these two tokenizers."""
    return ShowoConfig(llm_vocab_size=len(text_tokenizer), codebook_size=vq.cfg.codebook_size,
                       vocab_size=len(text_tokenizer) + len(SPECIAL_TOKENS) + vq.cfg.codebook_size + 1,
                       bos_token_id=text_tokenizer.eos_id, eos_token_id=text_tokenizer.eos_id,
                       num_vq_tokens=vq.cfg.grid_size ** 2, max_text_len=tc.max_text_len,
                       hidden_size=tc.hidden_size, num_layers=tc.num_layers, num_heads=tc.num_heads,
                       intermediate_size=4 * tc.hidden_size, max_position_embeddings=512)


def pictures_to_tensor(images, resolution):
    """uint8 (B, H, W, 3) pictures -> float (B, 3, res, res) in [-1, 1], resized when needed."""
    if images.shape[1] != resolution:
        images = np.stack([data.resize_and_crop(Image.fromarray(image), resolution) for image in images])
    return data.image_to_tensor(images)


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


@torch.no_grad()
def encode_all(vq, images, device, batch=256):
    """Image codes (B, N) for uint8 pictures (B, H, W, 3), a chunk at a time.

    Chunks keep memory small: 20,000 pictures as float32 at 256 px would be 16 GB.
    """
    res = vq.cfg.resolution
    return torch.cat([vq.encode(pictures_to_tensor(images[i:i + batch], res).to(device)).cpu()
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def decode_all(vq, codes, batch=256):
    """uint8 pictures (B, H, W, 3) for (B, N) codes, a chunk at a time."""
    device = next(vq.parameters()).device
    return np.concatenate([data.tensor_to_image(vq.decode(codes[i:i + batch].to(device)))
                           for i in range(0, len(codes), batch)])


def as_world_picture(picture):
    """A decoded picture at the shapes world's 32 px, which data.describe reads."""
    if picture.shape[0] == data.IMAGE_SIZE:
        return picture
    return np.array(Image.fromarray(picture).resize((data.IMAGE_SIZE,) * 2, Image.Resampling.BOX))


@torch.no_grad()
def report_image_tokenizer(vq, examples, device):
    """Reconstruction quality and codebook usage, on pictures the tokenizer never saw."""
    images = np.stack([e.image for e in examples])
    codes = encode_all(vq, images, device)
    rebuilt = decode_all(vq, codes)
    mse = np.mean(((rebuilt.astype(np.float64) - images) / 127.5) ** 2)
    readable = np.mean([data.matches(as_world_picture(image), e.caption) for image, e in zip(rebuilt, examples)])
    counts = torch.bincount(codes.flatten(), minlength=vq.cfg.codebook_size).float()
    p = counts[counts > 0] / counts.sum()
    perplexity = math.exp(-(p * p.log()).sum().item())
    return {"psnr": 10 * math.log10(4 / mse), "describe_ok": float(readable),   # peak-to-peak range 2
            "codes_used": int((counts > 0).sum()), "codebook": vq.cfg.codebook_size, "perplexity": perplexity}


# ----------------------------------------------------------------------------------------
# 3. Mixed batches (Show-o §3.2 "Training Objectives"): t2i (MTP) + understanding (NTP) + text (NTP)
# ----------------------------------------------------------------------------------------

class Part:
    """One kind of sequence in a mixed batch: (B, L) ids, labels and positions, (B, L, L) mask."""

    def __init__(self, ids, labels, allowed, positions=None):
        self.ids, self.labels, self.allowed = ids, labels, allowed
        self.positions = torch.arange(ids.shape[1]).expand_as(ids) if positions is None else positions

    def __len__(self):
        return self.ids.shape[0]


class MixedBatches:
    """Builds each step's three parts: t2i, understanding and plain text, with their labels.

    All pictures are tokenized once up front; a batch is then only index bookkeeping.
    Show-o trains its objectives jointly: one backward pass carries every gradient. What
    tells the kinds apart is only each row's attention mask and where its labels sit.
    Each part keeps its own length (no part is padded to another's).
    """

    def __init__(self, cfg, tc, codes, captions_ids, qa_ids, lm_ids, rank=0):
        self.cfg, self.tc, self.rank = cfg, tc, rank
        self.codes, self.captions, self.qa, self.lm = codes, captions_ids, qa_ids, lm_ids

    def batch(self, step):
        """The parts of step `step` (the same for the same seed, rank and step)."""
        rng, gen = step_rng(self.tc.seed, self.rank, "transformer", step)
        pick = lambda count: [rng.randrange(len(self.codes)) for _ in range(count)]   # noqa: E731
        parts = {"t2i": self.t2i(pick(self.tc.batch_t2i), rng, gen)}
        if self.tc.batch_mmu:
            parts["mmu"] = self.mmu(pick(self.tc.batch_mmu), rng)
        if self.tc.batch_lm:
            parts["lm"] = self.text([rng.randrange(len(self.lm)) for _ in range(self.tc.batch_lm)])
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
        # Mask ratio cos(t*pi/2), t ~ U(0, 1): the same schedule sampling walks through.
        t = torch.rand(len(picks), generator=gen)
        n_masked = (n * torch.cos(t * math.pi / 2)).round().clamp(min=1)       # (B,)
        # A random permutation per row; its first n_masked positions get [MASK].
        masked = torch.rand(len(picks), n, generator=gen).argsort(1) < n_masked[:, None]
        ids = t2i_sequences(captions, tokens.masked_fill(masked, cfg.mask_token_id), cfg)
        # The image span is the last N+1 ... last-1 positions (before <|eoi|>). Visible
        # image tokens get no loss: copying an input teaches nothing (Show-o Eq. 2).
        labels = torch.full_like(ids, IGNORE)
        labels[:, -(n + 1):-1] = tokens.masked_fill(~masked, IGNORE)
        return Part(ids, labels, t2i_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id))

    def mmu(self, picks, rng):
        """Picture + questions + answers: <|mmu|> <|soi|> img <|eoi|> then BOS q a EOS, ...

        With mmu_questions = 1 this is Show-o's understanding sequence. With more, one row
        holds several question-answer segments about the same picture, each seeing only
        the picture and itself, each with positions restarting after the picture
        (attention.shared_picture_attention_mask): the same logits as separate rows, with
        the 64-token picture run once instead of once per question.
        Labels: the answer and EOS (and the question unless mmu_answer_only).
        """
        cfg, tc = self.cfg, self.tc
        rows = []
        for i in picks:
            prefix = [cfg.mmu_id, cfg.soi_id, *(self.codes[i] + cfg.image_offset).tolist(), cfg.eoi_id]
            ids, segments, labels = list(prefix), [0] * len(prefix), [IGNORE] * len(prefix)
            positions = list(range(len(prefix)))
            asked = rng.sample(self.qa[i], min(tc.mmu_questions, len(self.qa[i])))
            for segment, (question, answer) in enumerate(asked, start=1):
                text = [cfg.bos_token_id, *question, *answer, cfg.eos_token_id]
                ids += text
                segments += [segment] * len(text)
                positions += range(len(prefix), len(prefix) + len(text))
                question_labels = [IGNORE] * len(question) if tc.mmu_answer_only else question
                labels += [IGNORE, *question_labels, *answer, cfg.eos_token_id]   # BOS is given
            rows.append((ids, segments, positions, labels))
        width = max(len(r[0]) for r in rows)
        pad = lambda values, fill: torch.tensor([v + [fill] * (width - len(v)) for v in values])  # noqa: E731
        ids, segments = pad([r[0] for r in rows], cfg.pad_id), pad([r[1] for r in rows], -1)
        positions, labels = pad([r[2] for r in rows], 0), pad([r[3] for r in rows], IGNORE)
        return Part(ids, labels, shared_picture_attention_mask(segments, ids == cfg.pad_id), positions)

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
        return {kind: self.model(part.ids, part.allowed, part.positions, keep=targets[kind] != IGNORE)
                for kind, part in parts.items()}


LOSS_WEIGHT = {"t2i": "loss_t2i", "lm": "loss_lm", "mmu": "loss_mmu"}


def mixed_loss(forward, parts, tc, device):
    """The Show-o objective on one mixed batch (Eq. 3): 1.0 MTP(t2i) + 0.1 NTP(lm) + 1.0 NTP(mmu).

    mtp_loss and ntp_loss (model.py, Eq. 1 and 2) are cross-entropy averaged over the
    positions whose target is not IGNORE. Here the network only computes logits at those
    positions (`keep`), and the cross-entropy of each part is averaged over them: the same
    number (tests/test_train.py checks it) for about a third of lm_head's work.
    """
    parts = {kind: Part(p.ids.to(device), p.labels.to(device), p.allowed.to(device), p.positions.to(device))
             for kind, p in parts.items()}
    targets = {kind: prediction_targets(part, kind, tc.image_objective) for kind, part in parts.items()}
    logits = forward(parts, targets)
    losses = {kind: F.cross_entropy(logits[kind], targets[kind][targets[kind] != IGNORE]) for kind in parts}
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

    def extra(self):
        settings = sampling_settings(self.tc)
        return {"sampling": {task: settings for task in TASKS}, "question_template": "{question}",
                "image_objective": self.tc.image_objective,
                "preset": self.preset, "train_config": config_to_dict(self.tc),
                "train_state": {"step": self.step, "optimizer": self.optimizer},
                "loss_history": self.history, "scores": self.scores, "compute": self.meter.to_dict()}

    @classmethod
    def from_extra(cls, extra):
        state, compute = extra["train_state"], extra.get("compute", {})
        return cls(config_from_dict(extra["train_config"]), extra.get("preset", "tiny"), state["step"],
                   materialize(state["optimizer"]), list(extra.get("loss_history", [])), list(extra.get("scores", [])),
                   ComputeMeter(compute.get("stages")))


def sampling_settings(tc):
    """The recipe's picture-drawing settings, as sampling.generate_pictures takes them."""
    return {"steps": tc.sample_steps, "guidance": tc.guidance, "temperature": tc.sample_temperature,
            "top_k": tc.sample_top_k or None}


def save(path, model, vq, text_tokenizer, state):
    """Write the checkpoint (model.save_checkpoint writes a temporary file, then renames it)."""
    save_checkpoint(path, model, vq, text_tokenizer, extra=state.extra())


# ----------------------------------------------------------------------------------------
# The transformer stage
# ----------------------------------------------------------------------------------------

def train_transformer(model, batches, state, run, checkpoint=None, score=None):
    """AdamW with warm-up + cosine decay on mixed batches, from state.step to tc.steps.

    checkpoint(state): called every save_every steps, at the end and on Ctrl-C (then
    KeyboardInterrupt is raised again). score(step): called every eval_every steps.
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
                state.optimizer = opt.state_dict()
                checkpoint(state)
    except KeyboardInterrupt:
        if checkpoint:
            state.optimizer = opt.state_dict()
            checkpoint(state)
        raise
    state.optimizer = opt.state_dict()
    return model.eval()


# ----------------------------------------------------------------------------------------
# 4. Scores on held-out data
# ----------------------------------------------------------------------------------------

@torch.no_grad()
def t2i_match_rate(model, vq, text_tokenizer, prompts, tc, seed, batch=64):
    """Fraction of generated pictures whose objects (read by data.describe) equal the prompt's."""
    gen = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    hits = 0
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        codes = generate_pictures(model, [text_tokenizer.encode(p) for p in chunk], tc.image_objective,
                                  sampling_settings(tc), gen)
        pictures = decode_all(vq, codes)
        hits += sum(data.matches(as_world_picture(picture), prompt) for picture, prompt in zip(pictures, chunk))
    return hits / len(prompts)


@torch.no_grad()
def answer_accuracy(model, vq, text_tokenizer, examples, device, want_captions):
    """Exact-match rate of greedy answers: captions ('describe the image.') or the other questions."""
    asked = [(e, q, a) for e in examples for q, a in e.qa if (q == "describe the image.") == want_captions]
    hits = 0
    for i in range(0, len(asked), 64):
        chunk = asked[i:i + 64]
        codes = encode_all(vq, np.stack([e.image for e, _, _ in chunk]), device).to(device)
        answers = answer_questions(model, codes, [text_tokenizer.encode(q) for _, q, _ in chunk],
                                   max_new_tokens=model.cfg.max_text_len)
        hits += sum(text_tokenizer.decode(ids).strip() == a for ids, (_, _, a) in zip(answers, chunk))
    return hits / max(1, len(asked))


# What each score is, as printed (the README's tables use the same words).
SCORE_NAMES = {
    "t2i_one": "t2i one object (seen captions, new draws)",
    "t2i_two": "t2i two objects (seen pairings)",
    "t2i_novel": "t2i two objects (held-out pairings)",
    "vqa": "VQA (new pictures)",
    "caption": "caption exact match (new pictures)",
    "caption_novel": "caption exact match (held-out pairings)",
}


def evaluate(model, vq, text_tokenizer, tc, device):
    """Held-out scores (seeds no training scene used).

    t2i: draw each prompt, decode, and let data.describe read the objects back; a picture
    counts only when colour, shape and place of every object are right. The 90
    one-object captions all occur in training (only the pictures are new); so do nearly
    all two-object ones, except the 108 that pair a held-out pair of kinds
    (data.HELD_OUT_PAIRS), which test composition. Understanding: greedy answers must
    equal the true answer string exactly, on pictures no training step saw.
    """
    model.eval()
    rng = random.Random(tc.seed + 7919)
    doubles = [data.caption(scene) for scene in data.random_scenes(rng, tc.eval_prompts, 2)]
    pictures = data.make_examples(tc.eval_scenes, seed=tc.seed + 104729)
    novel_pictures = data.make_examples(max(1, tc.eval_scenes // 2), seed=tc.seed + 15485863, held_out=True)
    rate = lambda prompts: t2i_match_rate(model, vq, text_tokenizer, prompts, tc, tc.seed)  # noqa: E731
    answers = lambda examples, captions: answer_accuracy(model, vq, text_tokenizer, examples,  # noqa: E731
                                                         device, want_captions=captions)
    return {
        "t2i_one": rate(data.one_object_captions() * tc.eval_draws),
        "t2i_two": rate(doubles),
        "t2i_novel": rate(data.held_out_captions()),
        "vqa": answers(pictures, False),
        "caption": answers(pictures, True),
        "caption_novel": answers(novel_pictures, True),
    }


SCORE_LABELS = {"t2i_one": "t2i, one object", "t2i_two": "t2i, two objects", "t2i_novel": "t2i, held-out pairs",
                "vqa": "VQA", "caption": "captions", "caption_novel": "captions, held-out pairs"}


def format_scores(scores):
    return "; ".join(f"{SCORE_NAMES[k]} {scores[k]:.0%}" for k in SCORE_NAMES if k in scores)


# ----------------------------------------------------------------------------------------
# The training curves, drawn with PIL (no plotting library needed)
# ----------------------------------------------------------------------------------------

CURVE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def line_chart(series, title, x_label, y_low, y_high, size=(420, 260)):
    """A PIL line chart of {name: (xs, ys)}: axes with their ranges written on, and a legend."""
    width, height = size
    left, right, top, bottom = 44, 10, 22, 30
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 4), title, fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    x_high = max((max(xs) for xs, _ in series.values() if len(xs)), default=1) or 1
    for y_value in (y_low, (y_low + y_high) / 2, y_high):
        y = height - bottom - (y_value - y_low) / (y_high - y_low) * (height - top - bottom)
        draw.text((2, y - 6), f"{y_value:g}", fill="black")
    draw.text((left, height - bottom + 4), "0", fill="black")
    draw.text((width - right - 70, height - bottom + 4), f"{x_high:.3g} {x_label}", fill="black")
    for k, (name, (xs, ys)) in enumerate(series.items()):
        colour = CURVE_COLOURS[k % len(CURVE_COLOURS)]
        points = [(left + x / x_high * (width - left - right),
                   height - bottom - (min(max(y, y_low), y_high) - y_low) / (y_high - y_low) * (height - top - bottom))
                  for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for point in points if len(points) < 12 else []:
            draw.ellipse([point[0] - 2, point[1] - 2, point[0] + 2, point[1] + 2], fill=colour)
        draw.text((width - right - 150, top + 4 + 12 * k), name, fill=colour)
    return image


def curves_picture(history, scores):
    """Losses per objective over steps (left) and held-out scores over training TFLOP (right)."""
    smooth = 10
    losses = {}
    for kind in (history[0] if history else {}):
        values = [h[kind] for h in history]
        averaged = [np.mean(values[max(0, i - smooth + 1):i + 1]) for i in range(len(values))]
        losses[f"{kind} loss"] = (list(range(1, len(values) + 1)), averaged)
    top = max((max(ys) for _, ys in losses.values()), default=1.0)
    charts = [line_chart(losses, f"training losses ({smooth}-step average)", "steps", 0, round(top + 0.5))]
    if scores:
        tflop = [s["tflop"] for s in scores]
        series = {SCORE_LABELS[k]: (tflop, [100 * s[k] for s in scores]) for k in SCORE_LABELS}
        charts.append(line_chart(series, "held-out scores (%)", "TFLOP", 0, 100))
    sheet = Image.new("RGB", (sum(c.width for c in charts), charts[0].height), "white")
    for i, chart in enumerate(charts):
        sheet.paste(chart, (i * charts[0].width, 0))
    return sheet


SAMPLE_PROMPTS = ["a red circle in the center", "a blue square at the top left",
                  "a yellow triangle at the bottom right", "a green circle at the top right",
                  "a white square in the center", "a purple triangle at the bottom left",
                  "a red square at the top left and a blue circle at the bottom right",
                  "a green triangle at the top right and a yellow circle at the bottom left"]


# ----------------------------------------------------------------------------------------
# The whole run
# ----------------------------------------------------------------------------------------

def load_training_data(data_dir, tc):
    """(pictures uint8 (B, 32, 32, 3), captions, question-answer lists, LM sentences).

    Pictures stay small and uint8 here; encode_all resizes a chunk at a time when the
    image tokenizer works at another resolution (a released one fine-tuned with --init).
    """
    if data_dir:
        items = data.load_caption_folder(data_dir, data.IMAGE_SIZE)
        if not items:
            raise ValueError(f"no readable images listed in {data_dir}/captions.jsonl")
        captions = [caption for _, caption in items]
        return (np.stack([image for image, _ in items]), captions,
                [[("describe the image.", c)] for c in captions], captions)
    examples = data.make_examples(tc.train_scenes, seed=tc.seed)
    return (np.stack([e.image for e in examples]), [e.caption for e in examples], [e.qa for e in examples],
            data.text_corpus(tc.train_scenes, tc.seed))


def train_tokenizers(args, tc, training_data, run, meter):
    """Stages 1-2: a BPE on the training texts, the LFQ tokenizer on the training pictures."""
    images, _, qa, sentences = training_data
    texts = sentences + sorted({q for pairs in qa for q, _ in pairs})
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
    """Fail early, in one line, on options that cannot work together."""
    if args.resume and (args.init or args.tokenizers_from):
        raise ValueError("--resume continues a run as it was: drop --init / --tokenizers-from")
    if args.resume and (args.set or args.seed is not None or args.steps is not None or args.image_objective):
        raise ValueError("--resume keeps the checkpoint's recipe (same schedule, same data): drop --set/--seed/--steps")
    if args.resume and not path.exists():
        raise ValueError(f"nothing to resume: {path} does not exist (start without --resume)")
    if args.init and args.tokenizers_from:
        raise ValueError("--init already brings its tokenizers: drop --tokenizers-from")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise ValueError(f"--out-dir {args.out_dir} is a file: give a folder")


def starting_point(args, preset, tc, path, run):
    """(model or None, vq, text_tokenizer or None, Run state) for a fresh, resumed or reused start."""
    if args.resume:
        model, vq, text_tokenizer, extra = load_checkpoint(path, run.device)
        return model, vq, text_tokenizer, Run.from_extra(extra)
    state = Run(tc, preset, history=[], scores=[], meter=ComputeMeter())
    source = args.init or args.tokenizers_from
    if not source:
        return None, None, None, state
    model, vq, text_tokenizer, extra = load_checkpoint(source, run.device)
    # The tokenizers' training compute is part of this run's cost.
    reused = extra.get("compute", {}).get("stages", {})
    state.meter = ComputeMeter({stage: reused[stage] for stage in ("image tokenizer",) if stage in reused})
    return (model if args.init else None), vq, text_tokenizer, state


def record_scores(model, vq, text_tokenizer, state, device, step):
    """Score the model now; keep the scores with the step and the TFLOP spent so far."""
    scores = evaluate(model, vq, text_tokenizer, state.tc, device)
    state.scores.append({"step": step, "tflop": state.meter.total / 1e12, **scores})
    tqdm.write(f"step {step}, {state.meter.total / 1e12:.1f} TFLOP: {format_scores(scores)}")


def write_samples(model, vq, text_tokenizer, tc, device, path):
    """A grid of pictures for SAMPLE_PROMPTS, drawn with the recipe's sampling settings."""
    generator = torch.Generator(device).manual_seed(tc.seed)
    codes = generate_pictures(model, [text_tokenizer.encode(p) for p in SAMPLE_PROMPTS], tc.image_objective,
                              sampling_settings(tc), generator)
    image_grid(decode_all(vq, codes), columns=4).save(path)


def make_batches(cfg, tc, vq, text_tokenizer, training_data, run):
    """Stage 3 works on ids only: every picture is tokenized once, here, not per step."""
    images, captions, qa, sentences = training_data
    encode = text_tokenizer.encode
    # Answers are encoded with a leading space: GPT-2 style BPE spells " red" (the word
    # after a question) differently from "red" at the start of a text.
    return MixedBatches(cfg, tc, encode_all(vq, images, run.device), [encode(c) for c in captions],
                        [[(encode(q), encode(" " + a)) for q, a in pairs] for pairs in qa],
                        [encode(s) for s in sentences], rank=run.rank)


def main(argv=None):
    args = parse_args(argv)
    # Warnings (e.g. skipped unreadable images) as one plain line, not a source listing.
    warnings.formatwarning = lambda message, *_: f"warning: {message}\n"
    try:
        preset, tc = recipe(args)
        path = args.out_dir / f"{preset}.pt"
        check_arguments(args, path)
        run = Distributed(pick_device(args.device))
        model, vq, text_tokenizer, state = starting_point(args, preset, tc, path, run)
        tc = state.tc
        training_data = load_training_data(args.data_dir, tc)
    except (ValueError, UsageError, CheckpointError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    torch.manual_seed(tc.seed)
    started = time.time()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    if vq is None:                                                     # stages 1-2
        text_tokenizer, vq = train_tokenizers(args, tc, training_data, run, state.meter)
    model = (model or Showo(model_config(tc, text_tokenizer, vq))).to(run.device).float()
    cfg = model.cfg
    say(run, f"transformer: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
             f"vocabulary {cfg.vocab_size} = {cfg.llm_vocab_size} text + 10 special + "
             f"{cfg.codebook_size} image + [MASK], {cfg.num_vq_tokens} image tokens per picture"
             + (f"; resuming at step {state.step} of {tc.steps}" if state.step else ""))

    # Stage 3. Only the main process writes checkpoints and scores.
    scored = run.main and not args.no_eval and not args.data_dir
    checkpoint = partial(save, path, model, vq, text_tokenizer) if run.main else None
    score = partial(record_scores, model, vq, text_tokenizer, state, run.device) if scored else None
    try:
        train_transformer(model, make_batches(cfg, tc, vq, text_tokenizer, training_data, run), state, run,
                          checkpoint, score)
    except KeyboardInterrupt:
        say(run, f"\ninterrupted: step {state.step} of {tc.steps} saved in {path}; "
                 f"continue with: python train.py --preset {preset} --out-dir {args.out_dir} --resume")
        run.close()
        sys.exit(130)
    say(run, state.meter.report())

    # Stage 4: samples, held-out scores, training curves.
    if run.main:
        write_samples(model, vq, text_tokenizer, tc, run.device, args.out_dir / "samples.png")
        say(run, f"wrote {path} and {args.out_dir / 'samples.png'} ({time.time() - started:.0f} s so far)")
        if scored:
            score(tc.steps)
            checkpoint(state)
        curves_picture(state.history, state.scores).save(args.out_dir / "curves.png")
        say(run, f"wrote {args.out_dir / 'curves.png'}; done in {time.time() - started:.0f} s")
    run.close()

if __name__ == "__main__":
    main()
