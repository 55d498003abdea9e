"""Train a small Show-o from nothing: tokenizers, then one transformer for two jobs.

`python train.py --tiny` runs the whole recipe on one machine (a laptop CPU is enough):

1. learn a byte-level BPE text tokenizer on the captions and questions (bpe.py);
2. learn a small MAGVIT-v2 style LFQ image tokenizer on the pictures (tokenizer.py);
3. train the transformer on MIXED batches (Show-o arXiv 2408.12528v7, §3.2 "Training
   Objectives", and Appendix C "Training Pipeline"): every step holds text-to-image rows
   (mask-token prediction, MTP, with 10% of captions dropped so classifier-free guidance
   works), understanding rows (next-token prediction, NTP, on the questions and answers
   by default; `mmu_answer_only` keeps it to the answers; up to `mmu_questions` pairs
   share one picture) and plain text (NTP). The loss is a weighted sum of the three,
   Eq. 3 (`mixed_loss`), each term model.py's ntp_loss or mtp_loss;
4. write one checkpoint (checkpoint.save_checkpoint: the same single-file format as
   `python checkpoint.py convert`), a grid of samples, held-out scores and the training
   curves (measured by evaluate.py).

Training FLOPs are counted (evaluate.ComputeMeter), so a recipe's cost is a number that
is the same on every machine. The data is the built-in shapes world (data.py) unless
--data-dir points at a folder of your own captioned images. `torchrun
--nproc_per_node=N train.py ...` trains with DistributedDataParallel (distributed.py).
The command line itself (options, checks, resuming) is cli.py.

How the recipe's values were chosen, with the measurements: docs/experiments.md.

Read first: model.py. Read next: sampling.py.
"""

import signal
import sys

if __name__ == "__main__":    # Ctrl-C while the imports below load (seconds): one line, not a traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit("\ninterrupted while starting: nothing was done"))

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
from attention import (lm_attention_mask, lm_sequences, shared_picture_attention_mask, shared_picture_sequences,
                       t2i_attention_mask, t2i_image_positions, t2i_sequences)
from bpe import TextTokenizer
from distributed import say, step_rng
from evaluate import report_image_tokenizer
from model import IGNORE, ShowoConfig, mtp_loss, next_token_targets, ntp_loss, random_masks
from readers import embed_with_features
from stories import story_losses, story_rows, story_targets
from tokenizer import ImageTokenizer, ImageTokenizerConfig, unified_vocab_size


# ----------------------------------------------------------------------------------------
# The recipe, as one dataclass
# ----------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Every knob of a run, one line each on why it has its value. Presets below;
    `--set name=value` overrides any field (cli.py checks every value against its range).
    The measurements behind the choices (tables of runs at equal FLOPs, over seeds) are
    in docs/experiments.md."""
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
    vq_local_window: int = 0           # > 0: codes see only their own window of pixels (stories: 8)
    # transformer (Phi-1.5 layout, scaled down)
    hidden_size: int = 192
    num_layers: int = 4              # at this budget, steps count for more than width and depth
    num_heads: int = 4
    max_text_len: int = 20           # text slots of a t2i row; the longest caption is 15 tokens + 3
    steps: int = 1600
    batch_t2i: int = 20              # rows per step: small batches, many steps learn more per FLOP here
    batch_mmu: int = 4
    batch_lm: int = 1                # plain text matters least here (a story run: its change sentences)
    image_objective: str = "mtp"     # "mtp": Show-o (masked tokens, MaskGIT); "ar": the raster-order baseline
    mmu_questions: int = 6           # question-answer pairs sharing one picture (the picture runs once)
    mmu_answer_only: bool = False    # False: NTP on questions too (draws better); True: on answers only
    # what understanding reads (docs/experiments.md, "Discrete or continuous"): "codes" (Show-o's
    # MAGVIT-v2 tokens), "lfq_continuous" (the LFQ encoder's features before quantization) or
    # "contrastive" (a small CLIP of the shapes world, readers.ContrastiveEncoder); the
    # continuous ones go through an mm_projector, as the released CLIP-ViT variant's do
    mmu_features: str = "codes"
    contrastive_steps: int = 600     # the contrastive encoder's training steps (batch 128)
    batch_story: int = 0             # story rows per step (mixed-modality; the story preset)
    train_stories: int = 0           # shapes-world stories of 2-4 frames (stories.make_stories)
    lr: float = 2e-3                 # a 2M model trained from nothing needs a larger step than 1e-4
    min_lr: float = 1e-4             # where the cosine decay ends
    warmup: int = 50
    weight_decay: float = 0.01       # the released configs' AdamW value
    caption_dropout: float = 0.1     # the released configs' value: teaches p(image) for guidance
    loss_t2i: float = 1.0            # the three weights of mixed_loss (the released configs' values)
    loss_lm: float = 0.1
    loss_mmu: float = 1.0
    loss_story_changes: float = 0.0  # stories: MTP again on the tokens a sentence changed (stories.story_losses)
    # sampling for the samples and scores, stored in the checkpoint as sampling.py's defaults;
    # chosen on draws apart from the scored ones, averaged over three seeds
    sample_steps: int = 16
    guidance: float = 1.0
    sample_temperature: float = 1.0
    sample_top_k: int = 0            # ar only: sample among the k most likely codes (0: all)
    sample_code_temperature: float = 1.0   # mtp only: codes drawn from softmax(logits / T); 1: as released
    save_every: int = 100            # a checkpoint every this many transformer steps (and on Ctrl-C)
    eval_every: int = 0              # scores every this many steps for the learning curve (0: at the end)


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
    # Mixed-modality generation (docs/experiments.md, "Stories"), from nothing in one command:
    # a window-local image tokenizer (a code sees its 8x8 window of pixels only, so a later
    # frame copies every unchanged object's codes), then the tiny transformer on story rows,
    # few t2i rows (a story row draws its opening from a caption too: lever 13), a few
    # understanding rows (reading) and plain-text rows of the change sentences (the writer's
    # rules, weighed 3); changed tokens get a loss term of their own. Frames: w = 0.5, codes 0.1 (lever 11).
    "story": TrainConfig(vq_local_window=8, batch_t2i=4, batch_mmu=2, batch_lm=24, loss_lm=3.0, batch_story=8,
                         train_stories=10000, steps=3160, loss_story_changes=1.0, guidance=0.5,
                         sample_code_temperature=0.1),
    # seconds: for tests and for trying the code path
    "micro": TrainConfig(train_scenes=400, eval_draws=1, eval_prompts=4, eval_scenes=4, bpe_vocab_size=512,
                         vq_z_channels=6, vq_ch=8, vq_steps=20, vq_batch=16, hidden_size=64,
                         num_layers=2, num_heads=2, steps=30, batch_t2i=8, batch_mmu=8, batch_lm=4,
                         warmup=5, sample_steps=4, save_every=10),
}


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
                                mid_attention=tc.vq_mid_attention, local_window=tc.vq_local_window)


def model_config(tc, text_tokenizer, vq, feature_width=0):
    """The transformer's config: its vocabulary laid out for these two tokenizers (and an
    mm_projector from feature_width when understanding reads continuous features)."""
    return ShowoConfig(llm_vocab_size=len(text_tokenizer), codebook_size=vq.cfg.codebook_size,
                       vocab_size=unified_vocab_size(len(text_tokenizer), vq.cfg.codebook_size),
                       bos_token_id=text_tokenizer.eos_id, eos_token_id=text_tokenizer.eos_id,
                       num_vq_tokens=vq.cfg.grid_size ** 2, max_text_len=tc.max_text_len,
                       hidden_size=tc.hidden_size, num_layers=tc.num_layers, num_heads=tc.num_heads,
                       intermediate_size=4 * tc.hidden_size, max_position_embeddings=512, clip_width=feature_width)


def train_image_tokenizer(tc, images, process, meter):
    """Fit the LFQ tokenizer to reconstruct `images`, uint8 (B, H, W, 3).

    Loss = MSE(reconstruction) + commitment + entropy (both from the quantizer).
    """
    pixels = data.image_to_tensor(images)
    vq = ImageTokenizer(image_tokenizer_config(tc, pixels.shape[-1])).to(process.device)
    trained = process.wrap(vq)
    opt = torch.optim.AdamW(vq.parameters(), lr=tc.vq_lr, weight_decay=0.0)
    bar = tqdm(range(tc.vq_steps), desc="image tokenizer", disable=not process.main)
    for step in bar:
        with meter.step("image tokenizer", step):
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, tc.vq_steps, tc.vq_lr, tc.vq_lr / 10, tc.vq_steps // 20 + 1)
            _, gen = step_rng(tc.seed, process.rank, "image tokenizer", step)
            batch = pixels[torch.randint(len(pixels), (tc.vq_batch,), generator=gen)].to(process.device)
            reconstruction, _, commit, entropy = trained(batch)
            mse = F.mse_loss(reconstruction, batch)
            loss = mse + commit + entropy
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if step % 10 == 0:
            bar.set_postfix(mse=f"{mse.item():.4f}", entropy=f"{entropy.item():+.3f}")
    return vq.eval()


def train_tokenizers(tc, training_data, stories, process, meter, shapes_world=True):
    """Stages 1-2: a BPE on the training texts (stories' sentences too), the LFQ tokenizer on
    the training pictures. shapes_world: report how well the world's objects survive the LFQ."""
    images, _, qa, sentences = training_data
    texts = sentences + sorted({q for pairs in qa for q, _ in pairs}) + [s for story in stories for s in story.sentences]
    text_tokenizer = TextTokenizer.train(texts, tc.bpe_vocab_size, verbose=process.main)
    sample = texts[:2000]
    chars_per_token = sum(map(len, sample)) / sum(len(text_tokenizer.encode(t)) for t in sample)
    say(process, f"text tokenizer: {len(text_tokenizer)} ids, {chars_per_token:.1f} characters per token")
    vq = train_image_tokenizer(tc, images, process, meter)
    if shapes_world:
        q = report_image_tokenizer(vq, data.make_examples(300, seed=tc.seed + 1), process.device)
        say(process, f"image tokenizer: PSNR {q['psnr']:.1f} dB, objects read back from reconstructions "
                 f"{q['describe_ok']:.0%}, codes used {q['codes_used']}/{q['codebook']} "
                 f"(perplexity {q['perplexity']:.0f})")
    return text_tokenizer, vq


# ----------------------------------------------------------------------------------------
# 3. Mixed batches (Show-o §3.2 "Training Objectives"): t2i (MTP) + understanding (NTP) + text (NTP)
# ----------------------------------------------------------------------------------------

class Part:
    """One kind of sequence in a mixed batch: (B, L) ids, labels and positions, (B, L, L) mask.

    mtp_positions (B, L) bool, stories only: the positions trained by mask-token prediction
    (the frame being drawn); the rest of a story row is trained by next-token prediction.
    changed (B, L) bool, stories only: those of them that differ from the frame before.
    features (B, N, C) float, understanding rows of a continuous `mmu_features` run only:
    the pictures' features, which take the N picture places (holding [MASK] ids).
    """

    def __init__(self, ids, labels, allowed, positions=None, mtp_positions=None, features=None, changed=None):
        self.ids, self.labels, self.allowed = ids, labels, allowed
        self.mtp_positions, self.features, self.changed = mtp_positions, features, changed
        self.positions = torch.arange(ids.shape[1]).expand_as(ids) if positions is None else positions

    def __len__(self):
        return self.ids.shape[0]

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)   # noqa: E731
        return Part(*(move(t) for t in (self.ids, self.labels, self.allowed, self.positions, self.mtp_positions,
                                        self.features, self.changed)))


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
            labels[:, t2i_image_positions(cfg)] = tokens
            return Part(ids, labels, lm_attention_mask(ids, cfg.pad_id))
        masked = random_masks(len(picks), n, gen)                             # (B, N)
        ids = t2i_sequences(captions, tokens.masked_fill(masked, cfg.mask_token_id), cfg)
        # Visible image tokens get no loss: copying an input teaches nothing (Show-o Eq. 2).
        labels = torch.full_like(ids, IGNORE)
        labels[:, t2i_image_positions(cfg)] = tokens.masked_fill(~masked, IGNORE)
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
        """Stories cut after the frame being drawn (stories.story_rows)."""
        ids, labels, allowed, frame, changed = story_rows(self.stories, self.longer_than, self.tc.batch_story,
                                                          self.tc.caption_dropout, self.cfg, rng, gen)
        return Part(ids, labels, allowed, mtp_positions=frame, changed=changed)

    def text(self, picks):
        """Plain sentences for language modelling. Labels: every real token."""
        cfg = self.cfg
        ids = lm_sequences([self.lm[i] for i in picks], cfg, max(len(self.lm[i]) for i in picks) + 2)
        return Part(ids, ids.masked_fill(ids == cfg.pad_id, IGNORE), lm_attention_mask(ids, cfg.pad_id))


def prediction_targets(part, kind, objective="mtp"):
    """What each position must predict (B, L): an MTP row its own label, an NTP row the next one.

    mixed_loss asks the network for logits only where there is a target (`keep`). With the
    "ar" image objective, t2i rows are NTP rows too (<|soi|> predicts the first image
    token, ...). Story rows hold both (stories.story_targets).
    """
    if kind == "story":
        return story_targets(part.labels, part.mtp_positions)
    if kind == "t2i" and objective == "mtp":
        return part.labels
    return next_token_targets(part.labels)


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
        return embed_with_features(self.model, part.ids, self.model.mm_projector(part.features))


# A story row: its frame (MTP) weighed as a t2i picture, its sentences (NTP) as understanding
# text, and the frame's changed tokens once more by loss_story_changes (0 but in the preset).
LOSS_WEIGHT = {"t2i": "loss_t2i", "lm": "loss_lm", "mmu": "loss_mmu", "story frames": "loss_t2i",
               "story text": "loss_mmu", "story changes": "loss_story_changes"}


def mixed_loss(forward, parts, tc, device):
    """The training objective on one mixed batch: Show-o Eq. 3 (arXiv 2408.12528v7, §3.2
    "Training Objectives"),

        L = L_MTP + alpha * L_NTP,

    with one NTP term for all text. The released training code splits that term by data
    source and weights each part, which is what this function does:

        L = loss_t2i * MTP(t2i rows) + loss_lm * NTP(plain text) + loss_mmu * NTP(understanding)

    with the released configs' 1.0 / 0.1 / 1.0 as defaults. So the paper's alpha is one
    weight shared by loss_lm and loss_mmu; here they differ (text matters least). Each term
    is model.py's mtp_loss (Eq. 2) or ntp_loss (Eq. 1), given the logits of the positions
    that have a target only (`prediction_targets`): the same numbers as logits everywhere
    (tests/test_model.py checks it) for about a third of lm_head's work.
    """
    parts = {kind: part.to(device) for kind, part in parts.items()}
    targets = {kind: prediction_targets(part, kind, tc.image_objective) for kind, part in parts.items()}
    logits = forward(parts, targets)                                      # {kind: (K, V)}
    losses = {}
    for kind, part in parts.items():
        if kind == "story":   # one row, two objectives: a loss each, to weigh and to watch
            losses.update(story_losses(logits[kind], part.labels, part.mtp_positions, part.changed))
        elif kind == "t2i" and tc.image_objective == "mtp":
            losses[kind] = mtp_loss(logits[kind], part.labels)
        else:
            losses[kind] = ntp_loss(logits[kind], part.labels)
    total = sum(getattr(tc, LOSS_WEIGHT[kind]) * loss for kind, loss in losses.items())
    return total, {kind: loss.item() for kind, loss in losses.items()}


# ----------------------------------------------------------------------------------------
# 4. The transformer stage
# ----------------------------------------------------------------------------------------

class Diverged(Exception):
    """The loss or the weights are not finite numbers any more. Nothing more is saved, so the
    last checkpoint on disk is the last finite one."""


def train_transformer(model, batches, state, process, checkpoint=None, score=None):
    """AdamW with warm-up + cosine decay on mixed batches, from state.step to tc.steps.

    checkpoint(state): called every save_every steps, at the end and on Ctrl-C (then
    KeyboardInterrupt is raised again). score(step): called every eval_every steps.
    Raises Diverged at the first loss that is not a finite number, before it is saved.
    """
    tc = state.tc
    forward = process.wrap(MixedForward(model))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.999))
    if state.optimizer:
        opt.load_state_dict(state.optimizer)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if process.device.startswith("cuda")
                else nullcontext())
    model.train()

    def save():
        """Write a checkpoint, but never one whose weights are not all finite numbers."""
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise Diverged(f"the weights became NaN or infinite by step {state.step}: training diverged "
                           f"(is lr = {tc.lr} too large?)")
        state.optimizer = opt.state_dict()
        checkpoint(state)

    bar = tqdm(range(state.step, tc.steps), desc="transformer", disable=not process.main,
               initial=state.step, total=tc.steps)
    try:
        for step in bar:
            with state.meter.step("transformer", step):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(step, tc.steps, tc.lr, tc.min_lr, tc.warmup)
                parts = batches.batch(step)
                with autocast:
                    loss, losses = mixed_loss(forward, parts, tc, process.device)
                if not all(map(math.isfinite, losses.values())):    # stop before the update spreads it
                    raise Diverged(f"the loss is not finite at step {step} ({losses}): training diverged; "
                                   f"a smaller --set lr (now {tc.lr}) may help")
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


def main(argv=None):
    """`python train.py --tiny`: parsed, checked and run by cli.py (errors as one line)."""
    from cli import train_command
    train_command(argv)


if __name__ == "__main__":
    main()
