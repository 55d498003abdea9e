"""Train a small Show-o from nothing: tokenizers, then one transformer for two jobs.

`python train.py --tiny` runs the whole recipe on one machine (a laptop CPU is enough):

1. learn a byte-level BPE text tokenizer on the captions and questions (tokenizer.py);
2. learn a small MAGVIT-v2 style LFQ image tokenizer on the pictures (tokenizer.py);
3. train the transformer on MIXED batches (Show-o §3.3): every step holds
   text-to-image sequences (mask-token prediction, MTP, with 10% of captions dropped so
   classifier-free guidance works), understanding sequences (next-token prediction, NTP,
   on captions and answers) and plain text (NTP); the loss is
   1.0 * MTP(t2i) + 0.1 * NTP(lm) + 1.0 * NTP(mmu)  (SHOWO_FACTS §6);
4. write one checkpoint (the same single-file format as `python model.py convert`) and a
   grid of samples, and print held-out scores: does a generated picture match its
   prompt, are answers and captions right.

The data is the built-in shapes world (data.py) unless --data-dir points at a folder of
your own captioned images. `torchrun --nproc_per_node=N train.py ...` trains with
DistributedDataParallel. Read first: data.py, model.py; read next: sampling.py.
"""

import argparse
import math
import os
import random
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import data
from attention import lm_attention_mask, mmu_attention_mask, t2i_attention_mask
from model import IGNORE, SPECIAL_TOKENS, CheckpointError, Showo, ShowoConfig, load_checkpoint, save_checkpoint
from sampling import UsageError, answer_questions, generate_image_codes, image_grid, pick_device
from tokenizer import (ImageTokenizer, ImageTokenizerConfig, TextTokenizer, lm_sequences,
                       mmu_sequences, t2i_sequences)


# ----------------------------------------------------------------------------------------
# The recipe, as one dataclass
# ----------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Every knob of a run. Presets below; any field can be overridden from the CLI."""
    seed: int = 0
    # data
    train_scenes: int = 20000
    eval_prompts: int = 80           # held-out prompts per t2i score (single, two objects)
    eval_scenes: int = 100           # held-out pictures for VQA and captioning
    # text tokenizer
    bpe_vocab_size: int = 512
    # image tokenizer (32x32 pictures -> 8x8 codes of 13 bits, as in Show-o)
    vq_z_channels: int = 13
    vq_ch: int = 16
    vq_ch_mult: tuple = (1, 2, 4)
    vq_groups: int = 8
    vq_steps: int = 700
    vq_batch: int = 64
    vq_lr: float = 3e-3
    # transformer (about 5M parameters; t2i gets the largest share of each batch)
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    max_text_len: int = 20
    steps: int = 400
    batch_t2i: int = 40
    batch_mmu: int = 24
    batch_lm: int = 8
    # The reference fine-tunes a pretrained 1.3B model at 1e-4; a 5M model trained from
    # nothing for a few hundred steps needs a larger step (QK-Norm keeps it stable).
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.01
    caption_dropout: float = 0.1
    # The loss weights of SHOWO_FACTS §6: plain text matters least here.
    loss_t2i: float = 1.0
    loss_lm: float = 0.1
    loss_mmu: float = 1.0
    # sampling used for the samples and the scores (the reference training config's
    # preview settings); stored in the checkpoint as sampling.py's defaults
    sample_steps: int = 12
    guidance: float = 1.5


PRESETS = {
    # ~10 minutes on a 2-core CPU
    "tiny": TrainConfig(),
    # seconds: for tests and for trying the code path
    "micro": TrainConfig(train_scenes=400, eval_prompts=4, eval_scenes=4, bpe_vocab_size=300,
                         vq_z_channels=6, vq_ch=8, vq_steps=20, vq_batch=16, hidden_size=64,
                         num_layers=2, num_heads=2, steps=30, batch_t2i=8, batch_mmu=8, batch_lm=4,
                         warmup=5, sample_steps=4),
}


# ----------------------------------------------------------------------------------------
# Devices and processes
# ----------------------------------------------------------------------------------------

class Distributed:
    """Rank/world size under torchrun (RANK, WORLD_SIZE in the environment), else 1 process.

    Every process builds the same tokenizers and model (same seed), draws its own batches
    (seed + 1000 * rank) and DDP averages the gradients, so the weights stay identical.
    gloo runs on CPUs, nccl between GPUs.
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
                                num_groups=tc.vq_groups)


def model_config(tc, text_tokenizer, vq):
    """The transformer's config: its vocabulary laid out for these two tokenizers (§1)."""
    return ShowoConfig(llm_vocab_size=len(text_tokenizer), codebook_size=vq.cfg.codebook_size,
                       vocab_size=len(text_tokenizer) + len(SPECIAL_TOKENS) + vq.cfg.codebook_size + 1,
                       bos_token_id=text_tokenizer.eos_id, eos_token_id=text_tokenizer.eos_id,
                       num_vq_tokens=vq.cfg.grid_size ** 2, max_text_len=tc.max_text_len,
                       hidden_size=tc.hidden_size, num_layers=tc.num_layers, num_heads=tc.num_heads,
                       intermediate_size=4 * tc.hidden_size, max_position_embeddings=512)


def train_image_tokenizer(tc, pixels, run):
    """Fit the LFQ tokenizer to reconstruct `pixels` (B, 3, H, W) in [-1, 1].

    Loss = MSE(reconstruction) + commitment + entropy (both from the quantizer, §5).
    """
    vq = ImageTokenizer(image_tokenizer_config(tc, pixels.shape[-1])).to(run.device)
    trained = run.wrap(vq)
    opt = torch.optim.AdamW(vq.parameters(), lr=tc.vq_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(tc.seed + 1000 * run.rank)
    bar = tqdm(range(tc.vq_steps), desc="image tokenizer", disable=not run.main)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, tc.vq_steps, tc.vq_lr, tc.vq_lr / 10, tc.vq_steps // 20 + 1)
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
def encode_all(vq, pixels, device, batch=512):
    """Image codes (B, N) for a stack of pictures, in chunks."""
    return torch.cat([vq.encode(pixels[i:i + batch].to(device)).cpu() for i in range(0, len(pixels), batch)])


@torch.no_grad()
def report_image_tokenizer(vq, examples, device):
    """Reconstruction quality and codebook usage, on pictures the tokenizer never saw."""
    pixels = data.image_to_tensor(np.stack([e.image for e in examples]))
    codes = encode_all(vq, pixels, device)
    rebuilt = torch.cat([vq.decode(codes[i:i + 256].to(device)).cpu() for i in range(0, len(codes), 256)])
    mse = F.mse_loss(rebuilt.clamp(-1, 1), pixels).item()
    psnr = 10 * math.log10(4 / mse)            # peak-to-peak range is 2 in [-1, 1]
    readable = np.mean([data.describe(image) == data.parse_caption(e.caption)
                        for image, e in zip(data.tensor_to_image(rebuilt), examples)])
    counts = torch.bincount(codes.flatten(), minlength=vq.cfg.codebook_size).float()
    p = counts[counts > 0] / counts.sum()
    perplexity = math.exp(-(p * p.log()).sum().item())
    return {"psnr": psnr, "describe_ok": float(readable), "codes_used": int((counts > 0).sum()),
            "codebook": vq.cfg.codebook_size, "perplexity": perplexity}


# ----------------------------------------------------------------------------------------
# 3. Mixed batches (Show-o §3.3): t2i (MTP) + understanding (NTP) + text (NTP)
# ----------------------------------------------------------------------------------------

class MixedBatches:
    """Builds one padded batch holding the three kinds of sequence, with masks and labels.

    All pictures are tokenized once up front; a batch is then only index bookkeeping.
    Why one batch and not three: Show-o trains its objectives jointly, so one forward pass
    over all three kinds lets one backward pass carry every gradient (and keeps
    DistributedDataParallel to its one-forward-one-backward rhythm). What tells the kinds
    apart is only each row's attention mask and where its labels sit.
    """

    def __init__(self, cfg, tc, codes, captions_ids, qa_ids, lm_ids, seed):
        self.cfg, self.tc = cfg, tc
        self.codes, self.captions, self.qa, self.lm = codes, captions_ids, qa_ids, lm_ids
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def t2i(self, picks):
        """Caption + partly masked picture. Labels: the original token at masked places only."""
        cfg, n = self.cfg, self.cfg.num_vq_tokens
        # Caption drop-out: an empty caption is the unconditional prompt, so the same
        # network learns p(image) too, which classifier-free guidance needs at sampling.
        captions = [[] if self.rng.random() < self.tc.caption_dropout else self.captions[i] for i in picks]
        tokens = self.codes[picks] + cfg.image_offset                         # (B, N)
        # Mask ratio cos(t*pi/2), t ~ U(0, 1): the same schedule sampling walks through.
        t = torch.rand(len(picks), generator=self.gen)
        n_masked = (n * torch.cos(t * math.pi / 2)).round().clamp(min=1)       # (B,)
        # A random permutation per row; its first n_masked positions get [MASK].
        masked = torch.rand(len(picks), n, generator=self.gen).argsort(1) < n_masked[:, None]
        ids = t2i_sequences(captions, tokens.masked_fill(masked, cfg.mask_token_id), cfg)
        # The image span is the last N+1 ... last-1 positions (before <|eoi|>). Visible
        # image tokens get no loss: copying an input teaches nothing (MaskGIT, Eq. 2).
        labels = torch.full_like(ids, IGNORE)
        labels[:, -(n + 1):-1] = tokens.masked_fill(~masked, IGNORE)
        return ids, labels, t2i_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id)

    def mmu(self, picks):
        """Picture + question + answer. Labels: the text after <|eoi|> (question, answer, EOS)."""
        cfg = self.cfg
        texts = []
        # One random question per picture per visit; "describe the image." (captioning)
        # is one of them, so captioning and VQA share this objective.
        for i in picks:
            question, answer = self.rng.choice(self.qa[i])
            texts.append(question + answer + [cfg.eos_token_id])
        ids, _ = mmu_sequences(self.codes[picks] + cfg.image_offset, texts, cfg)
        labels = ids.masked_fill(ids == cfg.pad_id, IGNORE)
        labels[:, :cfg.num_vq_tokens + 4] = IGNORE                             # <mmu> <soi> img <eoi> BOS
        return ids, labels, mmu_attention_mask(ids, cfg.pad_id, cfg.eoi_id)

    def text(self, count):
        """Plain sentences for language modelling. Labels: every real token."""
        cfg = self.cfg
        picks = [self.rng.randrange(len(self.lm)) for _ in range(count)]
        ids = lm_sequences([self.lm[i] for i in picks], cfg, max(len(self.lm[i]) for i in picks) + 2)
        return ids, ids.masked_fill(ids == cfg.pad_id, IGNORE), lm_attention_mask(ids, cfg.pad_id)

    def next(self):
        """(ids, labels, allowed, sizes): the three parts padded to one length, stacked."""
        tc = self.tc
        parts = [self.t2i(self.sample(tc.batch_t2i)), self.text(tc.batch_lm), self.mmu(self.sample(tc.batch_mmu))]
        length = max(p[0].shape[1] for p in parts)
        ids, labels, allowed = zip(*(pad_part(*p, length, self.cfg.pad_id) for p in parts))
        return torch.cat(ids), torch.cat(labels), torch.cat(allowed), [p[0].shape[0] for p in parts]

    def sample(self, count):
        """`count` random scene indices (with replacement)."""
        return torch.tensor([self.rng.randrange(len(self.codes)) for _ in range(count)])


def pad_part(ids, labels, allowed, length, pad_id):
    """Right-pad one part of a mixed batch to `length` (pads see only themselves)."""
    extra = length - ids.shape[1]
    if extra == 0:
        return ids, labels, allowed
    b = ids.shape[0]
    ids = torch.cat([ids, torch.full((b, extra), pad_id)], dim=1)
    labels = torch.cat([labels, torch.full((b, extra), IGNORE)], dim=1)
    grown = torch.zeros(b, length, length, dtype=torch.bool)
    grown[:, :allowed.shape[1], :allowed.shape[2]] = allowed
    grown[:, allowed.shape[1]:, allowed.shape[2]:] = torch.eye(extra, dtype=torch.bool)
    return ids, labels, grown


def prediction_targets(labels, sizes):
    """What each position must predict: MTP rows their own label, NTP rows the next one.

    This is the shift inside ntp_loss / mtp_loss (model.py), done once for the whole mixed
    batch so that only positions with a target need logits.
    """
    n_t2i = sizes[0]
    targets = torch.full_like(labels, IGNORE)
    targets[:n_t2i] = labels[:n_t2i]
    targets[n_t2i:, :-1] = labels[n_t2i:, 1:]
    return targets


def mixed_loss(model, batch, tc, device):
    """The Show-o objective on one mixed batch: 1.0 MTP(t2i) + 0.1 NTP(lm) + 1.0 NTP(mmu).

    Equal to mtp_loss / ntp_loss on each part's full logits (tests/test_train.py checks
    it), but lm_head runs only where a target is, about a third of the positions.
    """
    ids, labels, allowed, sizes = batch
    targets = prediction_targets(labels, sizes).to(device)
    keep = targets != IGNORE                                              # (B, L)
    logits = model(ids.to(device), allowed.to(device), keep=keep)         # (K, V)
    per_token = F.cross_entropy(logits, targets[keep], reduction="none")  # (K,)
    part = torch.repeat_interleave(torch.arange(3, device=device), torch.tensor(sizes, device=device))
    part = part[:, None].expand_as(targets)[keep]                         # (K,) 0 t2i, 1 lm, 2 mmu
    t2i, lm, mmu = (per_token[part == i].mean() for i in range(3))
    total = tc.loss_t2i * t2i + tc.loss_lm * lm + tc.loss_mmu * mmu
    return total, {"t2i": t2i.item(), "lm": lm.item(), "mmu": mmu.item()}


def train_transformer(model, batches, tc, run, start_step=0, optimizer_state=None):
    """AdamW with warm-up + cosine decay on mixed batches. Returns the optimizer state."""
    trained = run.wrap(model)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.999))
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.device.startswith("cuda")
                else nullcontext())
    model.train()
    # Resuming starts the bar (and the learning-rate schedule) where the checkpoint stopped.
    bar = tqdm(range(start_step, tc.steps), desc="transformer", disable=not run.main,
               initial=start_step, total=tc.steps)
    history = []
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, tc.steps, tc.lr, tc.min_lr, tc.warmup)
        with autocast:
            loss, parts = mixed_loss(trained, batches.next(), tc, run.device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # Clipping guards the first steps, when the freshly initialised embeddings of
        # thousands of image ids get large, noisy gradients.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(parts)
        if step % 10 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
    model.eval()
    return opt.state_dict(), history


# ----------------------------------------------------------------------------------------
# 4. Scores on held-out data
# ----------------------------------------------------------------------------------------

@torch.no_grad()
def t2i_match_rate(model, vq, text_tokenizer, prompts, tc, seed, batch=50):
    """Fraction of generated pictures whose objects (read by data.describe) equal the prompt's."""
    gen = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    hits = 0
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        codes = generate_image_codes(model, [text_tokenizer.encode(p) for p in chunk], tc.sample_steps,
                                     tc.guidance, generator=gen)
        pictures = data.tensor_to_image(vq.decode(codes))
        hits += sum(data.matches(picture, prompt) for picture, prompt in zip(pictures, chunk))
    return hits / len(prompts)


@torch.no_grad()
def answer_accuracy(model, vq, text_tokenizer, examples, device, want_captions):
    """Exact-match rate of greedy answers: captions ('describe the image.') or the other questions."""
    asked = [(e, q, a) for e in examples for q, a in e.qa if (q == "describe the image.") == want_captions]
    hits = 0
    for i in range(0, len(asked), 64):
        chunk = asked[i:i + 64]
        pixels = data.image_to_tensor(np.stack([e.image for e, _, _ in chunk])).to(device)
        answers = answer_questions(model, vq.encode(pixels), [text_tokenizer.encode(q) for _, q, _ in chunk],
                                   max_new_tokens=model.cfg.max_text_len)
        hits += sum(text_tokenizer.decode(ids).strip() == a for ids, (_, _, a) in zip(answers, chunk))
    return hits / max(1, len(asked))


def evaluate(model, vq, text_tokenizer, tc, device):
    """Held-out scores (a seed no training scene used).

    t2i: draw each prompt, decode, and let data.describe read the objects back; a picture
    counts only when colour, shape and place of every object are right. Understanding:
    greedy answers must equal the true answer string exactly.
    """
    rng = random.Random(tc.seed + 7919)
    singles = [data.caption(data.random_scene(rng, 1)) for _ in range(tc.eval_prompts)]
    doubles = [data.caption(data.random_scene(rng, 2)) for _ in range(tc.eval_prompts)]
    held_out = data.make_examples(tc.eval_scenes, seed=tc.seed + 104729)
    return {
        "t2i_single": t2i_match_rate(model, vq, text_tokenizer, singles, tc, tc.seed),
        "t2i_two": t2i_match_rate(model, vq, text_tokenizer, doubles, tc, tc.seed),
        "vqa": answer_accuracy(model, vq, text_tokenizer, held_out, device, want_captions=False),
        "caption": answer_accuracy(model, vq, text_tokenizer, held_out, device, want_captions=True),
    }


SAMPLE_PROMPTS = ["a red circle in the center", "a blue square at the top left",
                  "a yellow triangle at the bottom right", "a green circle at the top right",
                  "a white square in the center", "a purple triangle at the bottom left",
                  "a red square at the top left and a blue circle at the bottom right",
                  "a green triangle at the top right and a yellow circle at the bottom left"]


# ----------------------------------------------------------------------------------------
# The whole run
# ----------------------------------------------------------------------------------------

def load_training_data(args, tc, resolution):
    """(pictures uint8 (B, H, W, 3), captions, question-answer lists, LM sentences)."""
    if args.data_dir:
        items = data.load_caption_folder(args.data_dir, resolution)
        if not items:
            sys.exit(f"error: no readable images listed in {args.data_dir}/captions.jsonl")
        images = np.stack([image for image, _ in items])
        captions = [caption for _, caption in items]
        return images, captions, [[("describe the image.", c)] for c in captions], captions
    examples = data.make_examples(tc.train_scenes, seed=tc.seed)
    images = np.stack([e.image for e in examples])
    if resolution != images.shape[1]:       # e.g. fine-tuning the released 256 px tokenizer
        images = np.stack([data.resize_and_crop(Image.fromarray(i), resolution) for i in images])
    return images, [e.caption for e in examples], [e.qa for e in examples], data.text_corpus(tc.train_scenes, tc.seed)


def load_starting_point(args, run):
    """(model, vq, text_tokenizer, extra) of the checkpoint to resume / fine-tune, or Nones."""
    source = args.init or (args.out_dir / "tiny.pt" if args.resume else None)
    if not source:
        return None, None, None, {}
    try:
        return load_checkpoint(source, run.device)
    except CheckpointError as error:
        sys.exit(f"error: {error}")


def train_tokenizers(args, tc, images, texts, run):
    """Stages 1-2: a BPE on the training texts, the LFQ tokenizer on the training pictures."""
    text_tokenizer = TextTokenizer.train(texts, tc.bpe_vocab_size, verbose=run.main)
    sample = texts[:2000]
    chars_per_token = sum(map(len, sample)) / sum(len(text_tokenizer.encode(t)) for t in sample)
    say(run, f"text tokenizer: {len(text_tokenizer)} ids, {chars_per_token:.1f} characters per token")
    vq = train_image_tokenizer(tc, data.image_to_tensor(images), run)
    if not args.data_dir:
        q = report_image_tokenizer(vq, data.make_examples(300, seed=tc.seed + 1), run.device)
        say(run, f"image tokenizer: PSNR {q['psnr']:.1f} dB, objects read back from reconstructions "
                 f"{q['describe_ok']:.0%}, codes used {q['codes_used']}/{q['codebook']} "
                 f"(perplexity {q['perplexity']:.0f})")
    return text_tokenizer, vq


def main(argv=None):
    p = argparse.ArgumentParser(description="Train a small Show-o (tokenizers + transformer).")
    p.add_argument("--tiny", action="store_true", help="the ~10 minute CPU recipe (the default preset)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--out-dir", type=Path, default=Path("out"))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="transformer steps (overrides the preset)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/tiny.pt")
    p.add_argument("--init", help="fine-tune from a converted checkpoint (python model.py convert)")
    p.add_argument("--data-dir", help="folder of your own images with captions.jsonl")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out scores")
    args = p.parse_args(argv)

    # The preset is the recipe; --seed and --steps are the two knobs worth a flag.
    tc = PRESETS["tiny" if args.tiny else args.preset]
    tc = replace(tc, **{k: v for k, v in {"seed": args.seed, "steps": args.steps}.items() if v is not None})
    # Warnings (e.g. skipped unreadable images) as one plain line, not a source listing.
    warnings.formatwarning = lambda message, *_: f"warning: {message}\n"
    try:
        device = pick_device(args.device)
    except UsageError as error:
        sys.exit(f"error: {error}")
    run = Distributed(device)
    torch.manual_seed(tc.seed)
    started = time.time()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    model, vq, text_tokenizer, extra = load_starting_point(args, run)
    resolution = vq.cfg.resolution if vq else data.IMAGE_SIZE
    try:
        images, captions, qa, sentences = load_training_data(args, tc, resolution)
    except (FileNotFoundError, ValueError) as error:      # a bad --data-dir: say what to fix
        sys.exit(f"error: {error}")
    if vq is None:
        questions = sorted({q for pairs in qa for q, _ in pairs})
        text_tokenizer, vq = train_tokenizers(args, tc, images, sentences + questions, run)
    start_step, optimizer_state = 0, None
    if args.resume and model is not None:
        state = extra.get("train_state", {})
        start_step, optimizer_state = state.get("step", 0), state.get("optimizer")
        say(run, f"resuming at step {start_step} of {tc.steps}")
    if model is None:
        model = Showo(model_config(tc, text_tokenizer, vq))
    model = model.to(run.device).float()
    cfg = model.cfg
    say(run, f"transformer: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
             f"vocabulary {cfg.vocab_size} = {cfg.llm_vocab_size} text + 10 special + "
             f"{cfg.codebook_size} image + [MASK], {cfg.num_vq_tokens} image tokens per picture")

    # Stage 3 works on ids only: every picture is tokenized once, here, not per step.
    codes = encode_all(vq, data.image_to_tensor(images), run.device)
    encode = text_tokenizer.encode
    # Answers are encoded with a leading space: GPT-2 style BPE spells " red" (the word
    # after a question) differently from "red" at the start of a text.
    batches = MixedBatches(cfg, tc, codes, [encode(c) for c in captions],
                           [[(encode(q), encode(" " + a)) for q, a in pairs] for pairs in qa],
                           [encode(s) for s in sentences], seed=tc.seed + 1000 * run.rank)
    optimizer_state, history = train_transformer(model, batches, tc, run, start_step, optimizer_state)

    # Only one process writes and scores; the others are done once training is.
    if run.main:
        path = args.out_dir / "tiny.pt"
        save_checkpoint(path, model, vq, text_tokenizer, extra={
            "sampling": {"steps": tc.sample_steps, "guidance": tc.guidance},
            "train_state": {"step": tc.steps, "optimizer": optimizer_state},
            "train_config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(tc).items()},
            "loss_history": history,
        })
        gen = torch.Generator(run.device).manual_seed(tc.seed)
        sample_codes = generate_image_codes(model, [encode(p) for p in SAMPLE_PROMPTS], tc.sample_steps,
                                            tc.guidance, generator=gen)
        image_grid(data.tensor_to_image(vq.decode(sample_codes)), columns=4).save(args.out_dir / "samples.png")
        say(run, f"wrote {path} and {args.out_dir / 'samples.png'} ({time.time() - started:.0f} s so far)")
        if not args.no_eval and not args.data_dir:
            scores = evaluate(model, vq, text_tokenizer, tc, run.device)
            say(run, "held-out scores: " + ", ".join(
                f"{name} {value:.0%}" for name, value in [
                    ("t2i match (one object)", scores["t2i_single"]), ("t2i match (two objects)", scores["t2i_two"]),
                    ("VQA accuracy", scores["vqa"]), ("caption exact match", scores["caption"])]))
        say(run, f"done in {time.time() - started:.0f} s")
    run.close()


if __name__ == "__main__":
    main()
