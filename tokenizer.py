"""Show-o's tokenization: pictures become ids (MAGVIT-v2's lookup-free quantizer), and
text and picture ids share ONE vocabulary (arXiv 2408.12528v7, §3.1 "Tokenization").

Show-o feeds a single transformer with discrete tokens of both kinds. Text goes through
Phi-1.5's byte-level BPE (bpe.py: reference, read it when you want to). Pictures go
through MAGVIT-v2: a convolutional encoder shrinks the picture to a grid of vectors, each
vector is rounded to the signs of its channels (lookup-free quantization, LFQ), and the
signs, read as bits, are the code id. A decoder maps the codes back to pixels.

This file holds, top to bottom:

1. the shared vocabulary: where text ids, the special tokens, the picture codes and
   [MASK] sit in the one id space the transformer reads (model.ShowoConfig holds the ids);
2. the image tokenizer: its config, the encoder and decoder blocks, `LookupFreeQuantizer`
   (with the straight-through estimator and the entropy loss that trains it) and
   `ImageTokenizer` (encode, decode, and the training pass).

To watch it at work: `python evaluate.py lfq --ckpt assets/tiny.pt --png lfq.png`.

Read first: README.md. Read next: attention.py (how the ids are laid out in a sequence).
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------
# 1. The shared vocabulary
# ----------------------------------------------------------------------------------------
#
# One id space for everything (docs/sequences.md has the whole table):
#
#     [0, text)                          text tokens (BPE)
#     text + 0 ... text + 9              SPECIAL_TOKENS, in this order
#     text + 10 + c, c in [0, codes)     the picture token of code c
#     text + 10 + codes                  [MASK], the last id
#
# so the released model (50,295 text ids, 8,192 codes) reads 58,498 ids. A picture's
# CODE c (what the image tokenizer makes) becomes its TOKEN by adding the offset of the
# picture ids (model.ShowoConfig.image_offset).

# The ten tokens Show-o appends after the text vocabulary, in the order it adds them.
SPECIAL_TOKENS = ("[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>",
                  "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")


def unified_vocab_size(text_ids, codebook_size):
    """How many ids the transformer reads: text, special tokens, picture codes, [MASK]."""
    return text_ids + len(SPECIAL_TOKENS) + codebook_size + 1


# ----------------------------------------------------------------------------------------
# 2. The image tokenizer (MAGVIT-v2 encoder / lookup-free quantizer / decoder)
# ----------------------------------------------------------------------------------------
#
# Show-o §3.1 "Tokenization": an image becomes a grid of discrete ids. A convolutional encoder shrinks a
# 256x256 picture to a 16x16 grid of 13-dimensional vectors; each vector is quantized
# WITHOUT a codebook lookup (LFQ, Yu et al. 2023, "MAGVIT-v2"): every channel is rounded to
# its sign, so 13 channels give 2^13 = 8192 possible codes, and the code id is just those
# 13 bits read as a binary number. The decoder maps the +-1 vectors back to pixels.
# Layer names follow the released `showlab/magvitv2` checkpoint exactly, so its weights
# load without a renaming table.


@dataclass
class ImageTokenizerConfig:
    """Sizes of the MAGVIT-v2 tokenizer. Defaults are the released full size (docs/checkpoints.md)."""
    resolution: int = 256
    z_channels: int = 13                      # bits per code: codebook_size = 2**z_channels
    encoder_ch: int = 128
    encoder_ch_mult: tuple = (1, 2, 2, 4, 4)
    encoder_res_blocks: tuple = (4, 3, 4, 3, 4)
    decoder_ch: int = 128
    decoder_ch_mult: tuple = (1, 1, 2, 2, 4)
    decoder_res_blocks: tuple = (4, 4, 3, 4, 3)
    num_groups: int = 32                      # GroupNorm groups (32 in the release)
    # The release's middle block attends over the whole picture, so every code mixes in
    # the whole picture. Small models learn to read and draw LOCAL codes far more easily.
    mid_attention: bool = True
    # 0 (the release): the encoder's convolutions and GroupNorms run over the whole picture,
    # so a code also depends on pixels around its own patch. w > 0: every w x w window of
    # pixels is ENCODED on its own (w a multiple of the downsampling factor), so a code
    # depends on its own window only and an unchanged window keeps its codes from one
    # story frame to the next. The decoder still reads the whole grid of codes (decoding
    # each 4x4 patch alone collapsed the codebook; docs/experiments.md, "Stories").
    local_window: int = 0
    commitment_weight: float = 0.1            # LFQ training losses (docs/checkpoints.md)
    entropy_weight: float = 0.1
    beta: float = 0.25
    # The batch entropy of the LFQ entropy loss: per bit (as in the released code's
    # LFQuantizer) or over whole codes (as the MAGVIT-v2 paper defines it; see entropy_loss).
    entropy_per_code: bool = False

    @property
    def codebook_size(self): return 2 ** self.z_channels
    @property
    def downsample(self): return 2 ** (len(self.encoder_ch_mult) - 1)
    @property
    def grid_size(self): return self.resolution // self.downsample

    @classmethod
    def from_dict(cls, d):
        """Build from a dict (lists become tuples), ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def swish(x):
    """x * sigmoid(x), the non-linearity used throughout the VQGAN family."""
    return x * torch.sigmoid(x)


class ResBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> conv3x3, plus the input.

    When the channel count changes, a 1x1 conv (`nin_shortcut`) resizes the skip path.
    """

    def __init__(self, in_ch, out_ch, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=1e-6)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=1e-6)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels of a feature map, with a residual.

    Used once in the middle of encoder and decoder, where the map is smallest (16x16 at
    full size), so every position can see the whole image.
    """

    def __init__(self, ch, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.q, self.k, self.v = (nn.Conv2d(ch, ch, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q = self.q(n).flatten(2).transpose(1, 2)                         # (B, HW, C)
        k = self.k(n).flatten(2)                                          # (B, C, HW)
        v = self.v(n).flatten(2)                                          # (B, C, HW)
        weights = (q @ k * c ** -0.5).softmax(dim=-1)                     # (B, HW, HW)
        out = (v @ weights.transpose(1, 2)).view(b, c, h, w)              # (B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: pad one pixel right and bottom, then a stride-2 3x3 conv."""

    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 conv to smooth."""

    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks, resample=None):
    """One resolution level: a list of ResBlocks and an optional down/upsample.

    Stored as a module with `.block` (and `.downsample` / `.upsample`) so parameter
    names match the release (`encoder.down.0.block.1.conv1.weight`, ...).
    """
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    if resample is not None:
        setattr(level, resample[0], resample[1])
    return level


def _middle(ch, groups, attention=True):
    """ResBlock, attention, ResBlock at the smallest resolution (`mid.block_1` ...).

    Without `attention` the middle is two ResBlocks: every code then depends only on the
    pixels near it (see ImageTokenizerConfig.mid_attention).
    """
    mid = nn.Module()
    mid.block_1 = ResBlock(ch, ch, groups)
    mid.attn_1 = AttnBlock(ch, groups) if attention else nn.Identity()
    mid.block_2 = ResBlock(ch, ch, groups)
    return mid


def _run_middle(mid, h):
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    """Pixels (B, 3, H, W) in [-1, 1] -> continuous latents (B, z, H/f, W/f)."""

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        ch, mult, groups = cfg.encoder_ch, cfg.encoder_ch_mult, cfg.num_groups
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, (m, n_blocks) in enumerate(zip(mult, cfg.encoder_res_blocks)):
            block_out = ch * m
            blocks = [ResBlock(block_in if j == 0 else block_out, block_out, groups) for j in range(n_blocks)]
            last = i == len(mult) - 1
            self.down.append(_level(blocks, None if last else ("downsample", Downsample(block_out))))
            block_in = block_out
        self.mid = _middle(block_in, groups, cfg.mid_attention)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_middle(self.mid, h)
        return self.quant_conv(self.conv_out(swish(self.norm_out(h))))


class Decoder(nn.Module):
    """+-1 code vectors (B, z, h, w) -> pixels (B, 3, h*f, w*f)."""

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        ch, mult, groups = cfg.decoder_ch, cfg.decoder_ch_mult, cfg.num_groups
        block_in = ch * mult[-1]
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _middle(block_in, groups, cfg.mid_attention)
        # Built from the deepest level up, but stored shallowest first (`up.0` is the
        # full-resolution level), as in the release.
        levels = []
        for i in reversed(range(len(mult))):
            block_out = ch * mult[i]
            blocks = [ResBlock(block_in if j == 0 else block_out, block_out, groups)
                      for j in range(cfg.decoder_res_blocks[i])]
            levels.insert(0, _level(blocks, None if i == 0 else ("upsample", Upsample(block_out))))
            block_in = block_out
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z):
        h = _run_middle(self.mid, self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class LookupFreeQuantizer(nn.Module):
    """LFQ (MAGVIT-v2, arXiv 2310.05737, §3.1): quantize each channel to its sign; the bits are the code id.

    code = sum_c bit_c * 2^(C-1-c), bit_c = (z_c > 0): channel 0 is the most significant bit.
    """

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        bits = cfg.z_channels
        powers = 2 ** torch.arange(bits - 1, -1, -1)                       # (C,) 4096 ... 1
        codes = torch.arange(2 ** bits)
        # embedding[code] is the +-1 vector of that code: only used to DECODE ids.
        self.register_buffer("embedding", ((codes[:, None] // powers) % 2).float() * 2 - 1)
        self.register_buffer("power_vals", powers)

    def forward(self, z):
        """z (B, C, h, w) -> quantized z (straight-through), codes (B, h*w), two losses."""
        q = torch.where(z > 0, 1.0, -1.0)
        codes = ((z > 0).long() * self.power_vals[None, :, None, None]).sum(1).flatten(1)  # (B, h*w)
        # Straight-through estimator: forward uses q, backward pretends q = z (identity),
        # because sign() has zero gradient almost everywhere.
        q_st = z + (q - z).detach()
        # Commitment, in the VQ-VAE form: ||sg(q) - z||^2 + beta ||q - sg(z)||^2. The first
        # term pulls z towards its sign. In a VQ-VAE the second moves the codebook towards
        # z; LFQ has no codebook, and through the straight-through q_st its gradient
        # reaches z with the OPPOSITE sign (d/dz of (q_st - sg(z))^2 is +2(q - z)): it
        # pushes z away from q. Together: a pull of strength (1 - beta) towards q.
        commit = ((q.detach() - z) ** 2).mean() + self.cfg.beta * ((q_st - z.detach()) ** 2).mean()
        return q_st, codes, self.cfg.commitment_weight * commit, self.cfg.entropy_weight * self.entropy_loss(z)

    def entropy_loss(self, z):
        """Per-token entropy minus batch entropy (lower is better), in nats per bit.

        Each channel is a two-way choice {+1, -1} with logits -(z-1)^2 and -(z+1)^2, so a
        token's code distribution q(code | z) is the product of its C bit distributions.
        Low per-token entropy = each token is confident about its code. High entropy of
        the batch average = the batch spreads over many codes. Minimising the difference
        asks for both (MAGVIT-v2, Yu et al. 2023, §3.1, "lookup-free quantization").

        The per-token entropy of a product of bits is the sum of the bits' entropies. The
        batch average is NOT a product, and here the two versions differ:
        * per bit (the released code): the average of each bit's own batch distribution.
          Balanced bits do not mean evenly used codes: two bits that always agree are each
          +1 half of the time, yet use only 2 of their 4 codes.
        * per code (entropy_per_code, the paper's definition): the entropy of the batch
          average over all 2^C codes, which only rises when more codes are really used.
        """
        z = z.permute(0, 2, 3, 1).flatten(0, 2)                           # (N, C)
        log_probs = torch.stack([-(z - 1) ** 2, -(z + 1) ** 2], dim=-1).log_softmax(dim=-1)  # (N, C, 2)
        probs = log_probs.exp()
        per_token = -(probs * log_probs).sum(-1).mean()                  # mean over tokens and bits
        if self.cfg.entropy_per_code:
            is_plus = (self.embedding > 0).float()                       # (codes, C)
            # log q(code | z_n) = sum over bits of log q(that bit), as one matmul
            log_q = log_probs[..., 0] @ is_plus.T + log_probs[..., 1] @ (1 - is_plus).T   # (N, codes)
            mean_q = log_q.exp().mean(0)                                  # (codes,)
            batch = -(mean_q * mean_q.clamp_min(1e-12).log()).sum() / z.shape[1]
        else:
            mean_probs = probs.mean(0)                                    # (C, 2)
            batch = -(mean_probs * mean_probs.clamp_min(1e-12).log()).sum(-1).mean()
        return per_token - batch

    def codes_to_vectors(self, codes, grid):
        """(B, h*w) code ids -> (B, C, h, w) +-1 vectors."""
        b = codes.shape[0]
        return self.embedding[codes].view(b, grid, grid, -1).permute(0, 3, 1, 2)


class ImageTokenizer(nn.Module):
    """encode(pixels) -> codes and decode(codes) -> pixels; forward() for training."""

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = LookupFreeQuantizer(cfg)

    def check_pixels(self, pixels):
        """Fail with one clear line on input the network cannot tokenize."""
        f = self.cfg.local_window or self.cfg.downsample
        if pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.shape[2] % f or pixels.shape[3] % f:
            raise ValueError(f"expected images as (B, 3, H, W) with H and W multiples of {f} "
                             f"(trained at {self.cfg.resolution}x{self.cfg.resolution}), got {tuple(pixels.shape)}")

    def encode_latents(self, pixels):
        """(B, 3, H, W) -> (B, z, H/f, W/f). With local_window w, each w x w window is
        encoded alone, as a batch of (B * H/w * W/w, 3, w, w) pictures."""
        w = self.cfg.local_window
        if not w:
            return self.encoder(pixels)
        b, f = pixels.shape[0], self.cfg.downsample
        windows = pixels.unfold(2, w, w).unfold(3, w, w)                  # (B, 3, H/w, W/w, w, w)
        rows, cols = windows.shape[2:4]
        z = self.encoder(windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, w, w))   # (B*rows*cols, z, w/f, w/f)
        z = z.view(b, rows, cols, -1, w // f, w // f).permute(0, 3, 1, 4, 2, 5)    # (B, z, rows, w/f, cols, w/f)
        return z.reshape(b, -1, rows * w // f, cols * w // f)

    def forward(self, pixels):
        """Training pass: reconstruction, codes and the quantizer's two losses."""
        self.check_pixels(pixels)
        q, codes, commit_loss, entropy_loss = self.quantize(self.encode_latents(pixels))
        return self.decoder(q), codes, commit_loss, entropy_loss

    @torch.no_grad()
    def encode(self, pixels):
        """(B, 3, H, W) in [-1, 1] -> (B, h*w) code ids, row-major."""
        self.check_pixels(pixels)
        return self.quantize(self.encode_latents(pixels))[1]

    @torch.no_grad()
    def decode(self, codes):
        """(B, h*w) code ids -> (B, 3, H, W) pixels in about [-1, 1]."""
        grid = math.isqrt(codes.shape[1])
        if grid * grid != codes.shape[1] or codes.min() < 0 or codes.max() >= self.cfg.codebook_size:
            raise ValueError(f"expected (B, h*w) codes of a square grid in [0, {self.cfg.codebook_size}), "
                             f"got shape {tuple(codes.shape)}")
        return self.decoder(self.quantize.codes_to_vectors(codes, grid))
