"""What understanding reads: CLIP-ViT features (the released variant) and the readers of the
representation ablation (arXiv 2408.12528v7, §4 "Experiments", vision encoders and representations).

Show-o reads a picture for understanding as MAGVIT-v2 codes, the same tokens it draws. It
also released a variant that reads continuous CLIP-ViT features instead, and its ablation
compares three readers: discrete codes, MAGVIT-v2's continuous features, CLIP-ViT's
features. Continuous features are not ids of the vocabulary: an `mm_projector` (two
Linear layers, model.Showo) maps each feature into the transformer's width, and the
projected features take the picture's places in the sequence as embeddings. This file
holds, as one opt-in read beside the core:

1. the CLIP-ViT variant: `ClipConfig`, `ClipVisionTower`, its layout and mask, CLIP's own
   picture preprocessing (`clip_pixels`) and `answer_with_clip`;
2. the readers of the tiny world's ablation (train.py `--set mmu_features=...`): the LFQ
   encoder's features before quantization, and `ContrastiveEncoder`, a small CLIP of the
   shapes world, with its training stage;
3. features into a sequence: `embed_with_features` and `answer_from_features`.

Read first: sampling.py. Read next: bench.py (the released sizes at work).
"""

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from attention import causal_mask, hide_padding, mmu_sequences
from data import image_to_tensor
from distributed import step_rng
from pictures import read_rgb
from sampling import decode_answers, left_pad, understanding_mask_of
from tensor_files import materialize


# ----------------------------------------------------------------------------------------
# 1. The CLIP-ViT variant (showlab/show-o-w-clip-vit)
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
# below, `mmu_vit_sequences` lays them out in the sequence and `clip_pixels` preprocesses the picture.

# What understanding rows may read (train.py `mmu_features`): the image tokenizer's discrete
# codes (Show-o), its continuous features before quantization, or a contrastive encoder's.
MMU_FEATURES = ("codes", "lfq_continuous", "contrastive")


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


def mmu_vit_sequences(system_ids, questions_ids, num_features, cfg):
    """Understanding sequences of the CLIP-ViT variant (§3.2 "Unified Prompting", with CLIP
    features in the picture's place), left-padded with [PAD] to the longest:

        <|mmu|> system <|soi|> [MASK]*P <|eoi|> question...

    (the released inference_mmu.py, `w_clip_vit` branch). The P [MASK] ids only hold the
    places of the P projected CLIP features: the model gets the features there as embeddings
    (`answer_with_clip`), never these ids. Unlike `mmu_sequences`, there is no BOS
    before the question, and a system prompt comes first (LLaVA's). Left padding, so that
    every row's next token lands in the same column (sampling.left_pad). Returns (B, L) ids.
    """
    rows = [[cfg.mmu_id, *system_ids, cfg.soi_id, *[cfg.mask_token_id] * num_features, cfg.eoi_id, *question]
            for question in questions_ids]
    width = max(len(row) for row in rows)
    return torch.tensor([[cfg.pad_id] * (width - len(row)) + row for row in rows])



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
    return hide_padding(causal | features[:, None, :], input_ids == pad_id)


def clip_understanding_mask(cfg):
    """The CLIP-ViT variant's understanding mask (`mmu_vit_attention_mask`) as a function of the ids."""
    return partial(mmu_vit_attention_mask, pad_id=cfg.pad_id, soi_id=cfg.soi_id, eoi_id=cfg.eoi_id)


def clip_feature_slots(input_ids, soi_id, eoi_id):
    """(B, L) bool: the places of the CLIP features, after the first <|soi|>, before the first <|eoi|>."""
    opened = (input_ids == soi_id).cumsum(dim=1) > 0                    # (B, L) at or after <|soi|>
    closed = (input_ids == eoi_id).cumsum(dim=1) > 0                    # (B, L) at or after <|eoi|>
    return opened & ~closed & (input_ids != soi_id)


def clip_pixels(path, cfg):
    """An image file -> (1, 3, S, S) float32, as CLIP's own preprocessing gives it to the tower.

    transformers' CLIPImageProcessor (the released inference_mmu.py's `clip_image_processor`),
    with cfg (ClipConfig) holding preprocessor_config.json's values: the shorter side
    resized to cfg.resize_to (bicubic; the longer side's new length rounded DOWN, as
    get_resize_output_image_size does), the centre S x S cut out (the odd pixel goes to the
    right / bottom), scaled to [0, 1], then normalised with CLIP's mean and std. Not the
    MAGVIT path's `pictures.read_image`: the tower was trained on exactly these pixels.
    """
    image = read_rgb(path)
    width, height = image.size
    longer = int(cfg.resize_to * max(width, height) / min(width, height))
    image = image.resize((cfg.resize_to, longer) if width <= height else (longer, cfg.resize_to),
                         Image.Resampling.BICUBIC)
    left, top = (image.width - cfg.image_size) // 2, (image.height - cfg.image_size) // 2
    crop = np.array(image.crop((left, top, left + cfg.image_size, top + cfg.image_size)))   # (S, S, 3) uint8
    pixels = torch.from_numpy(crop).permute(2, 0, 1).float() / 255                         # (3, S, S)
    mean, std = torch.tensor(cfg.image_mean)[:, None, None], torch.tensor(cfg.image_std)[:, None, None]
    return ((pixels - mean) / std)[None]                                                    # (1, 3, S, S)


@torch.no_grad()
def answer_with_clip(model, tower, pixels, system_ids, questions_ids, max_new_tokens=32, temperature=0.0,
                     top_k=None, generator=None, naive=False):
    """The CLIP-ViT variant: B preprocessed pictures (B, 3, S, S) (`clip_pixels`), the system
    prompt's ids and B question id lists -> B answer id lists (EOS removed).

    The frozen tower's features go through the variant's mm_projector into the
    transformer's width and take the picture's places in the prompt as embeddings (the
    released inference_mmu.py, `w_clip_vit` branch, and Showo.mmu_generate). Greedy unless
    a temperature is given; naive recomputes everything per token, as mmu_generate does.
    """
    features = model.mm_projector(tower(pixels).to(model.embed.weight.dtype))   # (B, P, D)
    cfg = model.cfg
    ids = mmu_vit_sequences(system_ids, questions_ids, features.shape[1], cfg).to(pixels.device)
    return decode_answers(model, ids, clip_understanding_mask(cfg), max_new_tokens, temperature, top_k, generator, naive,
                          partial(embed_with_features, model, features=features))


# ----------------------------------------------------------------------------------------
# 2. The readers of the representation ablation
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



def train_contrastive_encoder(tc, training_data, text_tokenizer, process, meter, batch=128):
    """A CLIP of the shapes world (ContrastiveEncoder), trained on the training pictures
    and their captions by image-text matching alone (mmu_features=contrastive). Its FLOPs
    are part of the run's: the "contrastive encoder" stage."""
    images, captions, _, _ = training_data
    pixels = image_to_tensor(images)
    caption_ids = [text_tokenizer.encode(c) for c in captions]
    encoder = ContrastiveEncoder(len(text_tokenizer)).to(process.device)
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-3, weight_decay=0.01)
    bar = tqdm(range(tc.contrastive_steps), desc="contrastive encoder", disable=not process.main)
    for step in bar:
        with meter.step("contrastive encoder", step):
            _, gen = step_rng(tc.seed, process.rank, "contrastive encoder", step)
            picks = torch.randint(len(pixels), (batch,), generator=gen)
            chosen = [caption_ids[i] for i in picks]
            offsets = torch.tensor([0, *np.cumsum([len(ids) for ids in chosen])[:-1]])   # where each caption starts
            words = torch.tensor([token for ids in chosen for token in ids])
            loss = encoder.contrastive_loss(pixels[picks].to(process.device), words.to(process.device), offsets.to(process.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return encoder.eval()


def feature_reader(features, vq, contrastive_weights, vocab_size, device):
    """The reader of one `mmu_features` choice: None for codes, else uint8 pictures -> (B, N, C)
    continuous features, through the LFQ encoder or the contrastive encoder of these weights."""
    if features == "codes":
        return None
    if features == "lfq_continuous":
        return partial(picture_features, vq.encoder, device=device)
    encoder = ContrastiveEncoder(vocab_size).to(device)
    encoder.load_state_dict(contrastive_weights)
    return partial(picture_features, encoder.eval().features, device=device)


def picture_reader(tc, vq, text_tokenizer, training_data, process, state):
    """What a run's understanding rows read instead of codes (tc.mmu_features).

    The contrastive encoder is trained once per run: its weights join the run's state
    (state.readers), so a resumed run reads through the very encoder it started with."""
    if tc.mmu_features == "contrastive" and "contrastive" not in state.readers:
        encoder = train_contrastive_encoder(tc, training_data, text_tokenizer, process, state.meter)
        state.readers["contrastive"] = {k: v.cpu() for k, v in encoder.state_dict().items()}
    return feature_reader(tc.mmu_features, vq, state.readers.get("contrastive"), len(text_tokenizer),
                          process.device)


def stored_reader(extra, vq, text_tokenizer, device):
    """The reader of a trained checkpoint, rebuilt from what it stores. ValueError for a
    contrastive checkpoint that does not hold its encoder."""
    features = extra.get("mmu_features", "codes")
    stored = extra.get("train_state", {}).get("readers", {}).get("contrastive")
    if features == "contrastive" and stored is None:
        raise ValueError("it understands through the contrastive encoder of its training run, which this "
                         "checkpoint does not hold: retrain it, or ask a codes or lfq_continuous checkpoint")
    return feature_reader(features, vq, materialize(stored), len(text_tokenizer), device)


@torch.no_grad()
def picture_features(network, images, device, batch=256):
    """Continuous features (B, N, C) of uint8 pictures (B, H, W, 3), a chunk at a time.

    network maps (b, 3, H, W) pixels in [-1, 1] to a (b, C, h, w) grid, N = h*w cells in
    row-major order: the LFQ encoder before quantization (`vq.encoder`) or the contrastive
    encoder's `features` (train.py `mmu_features`, the representation ablation)."""
    return torch.cat([network(image_to_tensor(images[i:i + batch]).to(device)).flatten(2).transpose(1, 2).cpu()
                      for i in range(0, len(images), batch)])


# ----------------------------------------------------------------------------------------
# 3. Features into a sequence
# ----------------------------------------------------------------------------------------

def embed_with_features(model, ids, features):
    """(B, L) ids -> (B, L, D) embeddings, with (B, P, D) projected picture features in the
    P places between the first <|soi|> and the first <|eoi|> of each row (which hold
    placeholder ids): the CLIP-ViT variant, and the continuous-feature arms of the
    representation ablation (train.py `mmu_features`)."""
    embeddings = model.embed(ids)                                          # (B, L, D)
    slots = clip_feature_slots(ids, model.cfg.soi_id, model.cfg.eoi_id)     # (B, L), P True per row
    embeddings[slots] = features.reshape(-1, features.shape[-1]).to(embeddings.dtype)
    return embeddings


@torch.no_grad()
def answer_from_features(model, features, questions_ids, max_new_tokens=32, temperature=0.0, top_k=None,
                         generator=None, naive=False):
    """answer_questions (sampling.py) for a model that reads continuous features: (B, N, C)
    features (`picture_reader`) + B question id lists -> B answer id lists (EOS removed).

    The sequence is the understanding layout with [MASK] ids in the picture's N places; the
    projected features replace their embeddings.
    """
    cfg = model.cfg
    placeholders = torch.full(features.shape[:2], cfg.mask_token_id, device=features.device)
    padded, lengths = mmu_sequences(placeholders, questions_ids, cfg)
    ids = left_pad([row[:n] for row, n in zip(padded.tolist(), lengths)], cfg.pad_id).to(features.device)
    embed = partial(embed_with_features, model, features=model.mm_projector(features))
    return decode_answers(model, ids, understanding_mask_of(cfg), max_new_tokens, temperature, top_k, generator,
                          naive, embed)
