"""Show-o's two tokenizers: how text and images become ids in one shared vocabulary.

Show-o (arXiv 2408.12528v7, §3.1 "Tokenization") feeds a single transformer with discrete tokens of both kinds:

* Text goes through Phi-1.5's tokenizer, which is GPT-2's byte-level BPE (plus a few
  whole tokens for runs of whitespace that Phi-1.5 adds on top).
* Images go through MAGVIT-v2, whose lookup-free quantization (LFQ) turns every patch of
  a 256x256 picture into one of 8192 codes.

This file holds both: the text tokenizer first (Part 1), the image tokenizer second
(Part 2). How the two kinds of ids are laid out in one sequence ("unified prompting")
is in attention.py, beside the masks that go with each layout. To watch both tokenizers
at work: `python evaluate.py bpe "a red circle"` and `python evaluate.py lfq --ckpt out/tiny.pt`.

Read first: README.md. Read next: attention.py.
"""

import json
import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

# =====================================================================================
# Part 1: the text tokenizer (byte-level BPE)
# =====================================================================================
#
# Byte-level BPE in one paragraph: text is UTF-8 bytes, so 256 starting tokens can spell
# anything and no input is ever "unknown". Training then repeatedly glues the most
# frequent adjacent pair of tokens into a new token ("merge"); encoding replays those
# merges in the order they were learned. Before any of that, a regex cuts the text into
# chunks (words, numbers, punctuation, whitespace) and merges never cross a chunk border,
# so " dog" is one token but "dog." never is.

EOS_TOKEN = "<|endoftext|>"  # Phi-1.5 uses it as both BOS and EOS


# -------------------------------------------------------------------------------------
# Step 1: bytes as printable characters
# -------------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table that gives each of the 256 byte values its own printable character.

    vocab.json and merges.txt are text files whose tokens are separated by spaces and
    newlines, so a token cannot contain a raw space, newline or control byte. GPT-2 keeps
    the bytes that already print as a visible character (e.g. 'a' stays 'a') and moves every
    other byte, in increasing order, to the characters from chr(256) on. That is why a
    leading space shows up as 'Ġ' (chr(256 + 32)) in GPT-2's vocabulary.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in visible}
    moved = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + moved)
            moved += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {char: byte for byte, char in BYTE_TO_CHAR.items()}


def bytes_to_token(data: bytes) -> str:
    """Spell a byte string as a vocabulary token, e.g. b' dog' -> 'Ġdog'."""
    return "".join(BYTE_TO_CHAR[byte] for byte in data)


def token_to_bytes(token: str) -> bytes:
    """Undo bytes_to_token: 'Ġdog' -> b' dog'."""
    return bytes(CHAR_TO_BYTE[char] for char in token)


# -------------------------------------------------------------------------------------
# Step 2: pre-tokenization (cutting text into chunks that merges may not cross)
# -------------------------------------------------------------------------------------
#
# GPT-2 cuts text with this regex, written for the third-party `regex` module:
#
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
#
# Python's built-in `re` has no \p{L} ("any letter") or \p{N} ("any number"), and `\w`
# is not the same thing (it also matches digits and '_'). So we scan by hand instead, with
# unicodedata.category telling letters (categories L*) from numbers (N*). The scanner
# tries the regex's alternatives in the regex's order, which yields exactly its chunks.
# (unicodedata knows the Unicode version of your Python, 14.0 for 3.11; characters that
# were assigned after that may be classed differently by a newer `regex` module.)

CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # lowercase only, as in GPT-2

LETTER, NUMBER, SPACE, OTHER = "letter", "number", "space", "other"

# The regex's \s is Unicode's White_Space property. str.isspace() agrees except for these
# four "information separator" controls, which it calls space and the regex does not.
NOT_REGEX_SPACE = frozenset("\x1c\x1d\x1e\x1f")


def char_class(char: str) -> str:
    """Which of the regex's four kinds of character `char` is: LETTER, NUMBER, SPACE or OTHER."""
    if char.isspace() and char not in NOT_REGEX_SPACE:
        return SPACE
    major_category = unicodedata.category(char)[0]
    if major_category == "L":
        return LETTER
    if major_category == "N":
        return NUMBER
    return OTHER


def run_end(text: str, start: int, kind: str) -> int:
    """Index just past the run of `kind` characters that begins at text[start]."""
    end = start
    while end < len(text) and char_class(text[end]) == kind:
        end += 1
    return end


def chunk_end(text: str, start: int) -> int:
    """Index just past the chunk that GPT-2's regex would match at text[start]."""
    # 's|'t|'re|'ve|'m|'ll|'d
    for contraction in CONTRACTIONS:
        if text.startswith(contraction, start):
            return start + len(contraction)

    # ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': at most one plain space (not a tab
    # or newline), glued to the run of letters / numbers / other symbols right after it.
    # This is what makes " dog" a single chunk.
    body = start + 1 if text[start] == " " and start + 1 < len(text) else start
    kind = char_class(text[body])
    if kind != SPACE:
        return run_end(text, body, kind)

    # '\s+(?!\S)', then '\s+': a whitespace run. If a word follows, the run gives back its
    # last character, so that (when it is a space) the next chunk can be " word" just as
    # after a single space. A run at the very end of the text, or one that is only one
    # character long, is taken whole.
    end = run_end(text, start, SPACE)
    if end < len(text) and end - start > 1:
        return end - 1
    return end


def pretokenize(text: str) -> list[str]:
    """Cut `text` into GPT-2's chunks, e.g. "I'll  go!" -> ['I', "'ll", ' ', ' go', '!'].

    The chunks always join back to `text` exactly: nothing is dropped or normalized.
    """
    chunks = []
    start = 0
    while start < len(text):
        end = chunk_end(text, start)
        chunks.append(text[start:end])
        start = end
    return chunks


# -------------------------------------------------------------------------------------
# Step 3: the merge loop
# -------------------------------------------------------------------------------------

def merge_pair(sequence: list, pair: tuple, merged) -> list:
    """Replace each occurrence of `pair` in `sequence` by `merged`, scanning left to right.

    Overlaps resolve leftmost-first: merging ('a', 'a') in a-a-a gives aa-a. Training (on
    integer ids) and encoding (on token strings) both use this one function, so a text
    encodes exactly the way the training corpus was merged.
    """
    result = []
    i = 0
    while i < len(sequence):
        if i + 1 < len(sequence) and sequence[i] == pair[0] and sequence[i + 1] == pair[1]:
            result.append(merged)
            i += 2
        else:
            result.append(sequence[i])
            i += 1
    return result


def apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply learned merges to one chunk's symbols until none applies.

    Among the adjacent pairs present, the one learned earliest (lowest rank) always goes
    first: that replays the order in which training created the tokens.
    """
    while len(symbols) > 1:
        pairs = set(zip(symbols, symbols[1:]))
        best = min(pairs, key=lambda pair: ranks.get(pair, math.inf))
        if best not in ranks:
            break
        symbols = merge_pair(symbols, best, best[0] + best[1])
    return symbols


# -------------------------------------------------------------------------------------
# Added tokens: whole strings matched before any of the above
# -------------------------------------------------------------------------------------
#
# "<|endoftext|>" must become one id, not the BPE pieces '<', '|', 'endoftext', '|>'.
# Hugging Face calls such strings "added tokens": they are found in the raw text first and
# only the text between them is pre-tokenized and merged. Phi-1.5 also adds runs of
# spaces and of tabs as added tokens (ids 50257-50294, for indented code).

def added_token_pattern(tokens) -> re.Pattern | None:
    """A regex that finds any of `tokens` (None if there are none).

    Longer tokens are listed first, because `re` takes the first alternative that matches:
    with "  " and "    " both added, four spaces then become one token, not two.
    """
    if not tokens:
        return None
    longest_first = sorted(tokens, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(token) for token in longest_first) + ")")


def split_on_added_tokens(text: str, pattern: re.Pattern | None) -> list[str]:
    """Split `text` around added tokens: even positions hold plain text, odd positions added tokens."""
    return pattern.split(text) if pattern else [text]


# -------------------------------------------------------------------------------------
# The tokenizer object: encode (step 4), decode (step 5), train (step 6), save and load
# -------------------------------------------------------------------------------------

class TextTokenizer:
    """GPT-2 / Phi-1.5 byte-level BPE: text <-> token ids.

    vocab:        token string (bytes spelled with BYTE_TO_CHAR, e.g. 'Ġdog') -> id
    merges:       learned pairs, best (earliest) first, as in merges.txt
    added_tokens: whole strings matched in the raw text before BPE -> id, e.g. Phi-1.5's
                  whitespace runs and special tokens such as "<|endoftext|>"
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]],
                 added_tokens: dict[str, int] | None = None):
        self.vocab = dict(vocab)
        self.merges = [tuple(pair) for pair in merges]
        self.added_tokens = dict(added_tokens or {})
        # GPT-2's and Phi-1.5's tokenizers always treat <|endoftext|> as special, even
        # when no file lists it as an added token.
        if EOS_TOKEN in self.vocab and EOS_TOKEN not in self.added_tokens:
            self.added_tokens[EOS_TOKEN] = self.vocab[EOS_TOKEN]

        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._added_pattern = added_token_pattern(self.added_tokens)
        # Added tokens are raw text; vocabulary tokens are bytes spelled with BYTE_TO_CHAR.
        self._bytes_of = {i: token_to_bytes(token) for token, i in self.vocab.items()
                          if token not in self.added_tokens}
        self._bytes_of.update({i: token.encode("utf-8") for token, i in self.added_tokens.items()})
        self._num_ids = max(self._bytes_of, default=-1) + 1
        self._chunk_cache: dict[str, list[int]] = {}  # texts repeat words: BPE each chunk once

    # ---- step 4: encode --------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids for `text` (no BOS/EOS is added; the caller decides the layout)."""
        ids = []
        for position, piece in enumerate(split_on_added_tokens(text, self._added_pattern)):
            if position % 2 == 1:
                ids.append(self.added_tokens[piece])
            else:
                for chunk in pretokenize(piece):
                    ids.extend(self._encode_chunk(chunk))
        return ids

    def _encode_chunk(self, chunk: str) -> list[int]:
        """BPE one chunk: its UTF-8 bytes as symbols, merged, then looked up in the vocabulary."""
        if chunk not in self._chunk_cache:
            symbols = [BYTE_TO_CHAR[byte] for byte in chunk.encode("utf-8")]
            self._chunk_cache[chunk] = [self.vocab[token] for token in apply_merges(symbols, self._ranks)]
        return self._chunk_cache[chunk]

    # ---- step 5: decode --------------------------------------------------------------

    def decode(self, ids) -> str:
        """Text for a sequence of ids (a list, or any iterable of ints, e.g. a 1-D tensor).

        Tokens are glued as bytes before decoding, because one character may be split over
        several tokens (most emoji and CJK characters are). A sequence that ends inside a
        character, or otherwise is not valid UTF-8, decodes with U+FFFD in those places.
        """
        pieces = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id not in self._bytes_of:
                raise ValueError(f"unknown token id {token_id}: the vocabulary has {len(self)} tokens")
            pieces.append(self._bytes_of[token_id])
        return b"".join(pieces).decode("utf-8", errors="replace")

    # ---- looking tokens up -----------------------------------------------------------

    def token_id(self, token: str) -> int:
        """The id of one whole token, e.g. token_id("<|endoftext|>") == 50256 for Phi-1.5."""
        if token in self.added_tokens:
            return self.added_tokens[token]
        if token in self.vocab:
            return self.vocab[token]
        raise KeyError(f"{token!r} is not a token of this tokenizer (vocabulary of {len(self)} ids)")

    @property
    def eos_id(self) -> int:
        """Id of "<|endoftext|>", Phi-1.5's end-of-text token, which it also uses as BOS."""
        return self.token_id(EOS_TOKEN)

    def __len__(self) -> int:
        """Number of ids: the largest id + 1."""
        return self._num_ids

    # ---- step 6: training ------------------------------------------------------------

    @classmethod
    def train(cls, texts: list[str], vocab_size: int, special_tokens: tuple[str, ...] = (EOS_TOKEN,),
              verbose=False) -> "TextTokenizer":
        """Learn a byte-level BPE from `texts`.

        `vocab_size` counts every id: 256 byte tokens, then the merges, then the special
        tokens, in that order (ids 0-255 are the byte values themselves). A corpus that runs
        out of pairs to merge yields fewer merges, and so a smaller vocabulary. `verbose`
        shows a progress bar.
        """
        num_merges = vocab_size - 256 - len(special_tokens)
        if num_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} is too small: it must hold 256 bytes "
                             f"and {len(special_tokens)} special tokens")
        merges = learn_merges(count_chunks(texts, special_tokens), num_merges, verbose)

        token_bytes = [bytes([byte]) for byte in range(256)]
        for left, right in merges:
            token_bytes.append(token_bytes[left] + token_bytes[right])
        names = [bytes_to_token(data) for data in token_bytes]
        vocab = {name: i for i, name in enumerate(names)}
        merge_names = [(names[left], names[right]) for left, right in merges]
        added = {token: len(names) + k for k, token in enumerate(special_tokens)}
        return cls(vocab, merge_names, added)

    # ---- storing in a checkpoint -----------------------------------------------------

    def to_dict(self) -> dict:
        """Everything needed to rebuild the tokenizer, as plain str/int/list/dict values.

        Plain containers can be stored inside a torch checkpoint and read back with
        torch.load(..., weights_only=True).
        """
        return {
            "vocab": dict(self.vocab),
            "merges": [list(pair) for pair in self.merges],
            "added_tokens": dict(self.added_tokens),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "TextTokenizer":
        """Rebuild a tokenizer from to_dict's output."""
        return cls(data["vocab"], [tuple(pair) for pair in data["merges"]], data["added_tokens"])

    # ---- GPT-2 / Hugging Face files --------------------------------------------------

    def save(self, directory) -> None:
        """Write vocab.json, merges.txt and added_tokens.json in GPT-2's format."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / "vocab.json", self.vocab)
        merge_lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in self.merges]
        (directory / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
        if self.added_tokens:
            write_json(directory / "added_tokens.json", self.added_tokens)

    @classmethod
    def from_files(cls, directory) -> "TextTokenizer":
        """Load a GPT-2 style tokenizer folder, such as a download of microsoft/phi-1_5.

        Needs vocab.json and merges.txt. Added tokens come from added_tokens.json, from
        tokenizer_config.json's "added_tokens_decoder" and from the special tokens named in
        special_tokens_map.json, whichever of those files exist.
        """
        directory = Path(directory)
        hint = "pass the folder that holds a GPT-2 style vocab.json and merges.txt (e.g. microsoft/phi-1_5)"
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer folder {directory} does not exist: {hint}")
        for name in ("vocab.json", "merges.txt"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} is missing: {hint}")

        # Each file is checked as read: a damaged download must fail here, naming the file,
        # not build a tokenizer that quietly encodes text into the wrong ids.
        again = "the file is damaged; download it again"
        vocab = read_json(directory / "vocab.json")
        if not vocab or not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
            raise ValueError(f"{directory / 'vocab.json'} does not map tokens to ids: {again}")
        try:
            merges = read_merges(directory / "merges.txt")
        except UnicodeDecodeError:
            raise ValueError(f"{directory / 'merges.txt'} is not UTF-8 text: {again}") from None
        bad = next((pair for pair in merges if len(pair) != 2), None)
        if bad is not None:
            raise ValueError(f"{directory / 'merges.txt'} has the line {' '.join(bad)!r}, not a "
                             f"\"left right\" pair: {again}")
        added = read_json(directory / "added_tokens.json")
        if not all(isinstance(i, int) for i in added.values()):
            raise ValueError(f"{directory / 'added_tokens.json'} does not map tokens to ids: {again}")
        config = read_json(directory / "tokenizer_config.json")
        try:
            for token_id, entry in config.get("added_tokens_decoder", {}).items():
                added[entry["content"]] = int(token_id)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{directory / 'tokenizer_config.json'}: its added_tokens_decoder is not "
                             f"{{id: {{\"content\": token}}}}: {again}") from None
        special_map = directory / "special_tokens_map.json"
        try:
            special = special_token_names(read_json(special_map))
        except (KeyError, TypeError):
            special = [None]
        if not all(isinstance(name, str) for name in special):
            raise ValueError(f"{special_map} names its tokens neither as text nor as {{\"content\": text}}: {again}")
        for name in special:
            if name not in added:
                # A special token with no id anywhere gets the next free one, as in Hugging Face.
                added[name] = vocab.get(name, max([*vocab.values(), *added.values()]) + 1)
        return cls(vocab, merges, added)


# -------------------------------------------------------------------------------------
# Step 6: training (learning merges from a corpus)
# -------------------------------------------------------------------------------------
#
# TextTokenizer.train (above) calls these two.

def count_chunks(texts: list[str], special_tokens) -> Counter:
    """How often each pre-tokenized chunk occurs in `texts` (special tokens are left out).

    Training works on these counts rather than on the texts: a caption corpus says " the"
    thousands of times, and it only has to be merged once.
    """
    pattern = added_token_pattern(special_tokens)
    counts = Counter()
    for text, repeats in Counter(texts).items():
        for plain in split_on_added_tokens(text, pattern)[::2]:
            for chunk in pretokenize(plain):
                counts[chunk] += repeats
    return counts


def learn_merges(chunk_counts: Counter, num_merges: int, verbose: bool = False) -> list[tuple[int, int]]:
    """Learn up to `num_merges` merges; merge i creates token id 256 + i.

    Each chunk starts as its UTF-8 bytes (ids 0-255). Each round merges the adjacent pair
    that is most frequent over the corpus; ties go to the pair with the smallest ids, so
    the result never depends on the order of the texts. Training stops early if no pair is
    left (every chunk is then a single token).

    Recounting every pair after each merge would be slow, so we keep the pair counts up to
    date instead: only the chunks that contain the merged pair change, and `where` says
    which ones those are.
    """
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    pair_counts = Counter()
    where = defaultdict(set)  # pair -> indices of the words that (may) contain it
    for index, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freqs[index]
            where[pair].add(index)

    merges = []
    for new_id in tqdm(range(256, 256 + num_merges), desc="learning BPE merges", disable=not verbose):
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        for index in where.pop(best):
            old_word = words[index]
            words[index] = merge_pair(old_word, best, new_id)
            for pair in zip(old_word, old_word[1:]):
                pair_counts[pair] -= freqs[index]
                if pair_counts[pair] == 0:
                    del pair_counts[pair]
            for pair in zip(words[index], words[index][1:]):
                pair_counts[pair] += freqs[index]
                where[pair].add(index)
        merges.append(best)
    return merges


# -------------------------------------------------------------------------------------
# Reading GPT-2 / Hugging Face tokenizer files
# -------------------------------------------------------------------------------------

def read_merges(path: Path) -> list[tuple[str, str]]:
    """Read merges.txt: one "left right" pair per line, after an optional "#version" line.

    Only the first line may be that header: later lines such as "# #" are real merges.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    return [tuple(line.split(" ")) for line in lines if line]


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} if the file does not exist (these files are optional).

    A file that exists but is not a JSON object (cut short by a failed download, or some
    other file under that name) is a ValueError naming it, in one line: reading on with
    {} would silently build the wrong tokenizer or model.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:                   # bad JSON or bad UTF-8, both ValueErrors
        raise ValueError(f"{path} is not valid JSON ({error}): the file is damaged or cut short; "
                         f"download it again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object: the file is damaged "
                         f"or not the one expected; download it again")
    return data


def write_json(path: Path, data: dict) -> None:
    """Write `data` as UTF-8 JSON, keeping non-ASCII token strings readable."""
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def special_token_names(special_tokens_map: dict) -> list[str]:
    """The token strings named in a special_tokens_map.json.

    Values are a token string, a {"content": ...} record, or (for
    "additional_special_tokens") a list of either.
    """
    names = []
    for value in special_tokens_map.values():
        for entry in value if isinstance(value, list) else [value]:
            names.append(entry["content"] if isinstance(entry, dict) else entry)
    return names

# ========================================================================================
# Part 2: the image tokenizer (MAGVIT-v2 encoder / lookup-free quantizer / decoder)
# ========================================================================================
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
        f = self.cfg.downsample
        if pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.shape[2] % f or pixels.shape[3] % f:
            raise ValueError(f"expected images as (B, 3, H, W) with H and W multiples of {f} "
                             f"(trained at {self.cfg.resolution}x{self.cfg.resolution}), got {tuple(pixels.shape)}")

    def forward(self, pixels):
        """Training pass: reconstruction, codes and the quantizer's two losses."""
        self.check_pixels(pixels)
        q, codes, commit_loss, entropy_loss = self.quantize(self.encoder(pixels))
        return self.decoder(q), codes, commit_loss, entropy_loss

    @torch.no_grad()
    def encode(self, pixels):
        """(B, 3, H, W) in [-1, 1] -> (B, h*w) code ids, row-major."""
        self.check_pixels(pixels)
        return self.quantize(self.encoder(pixels))[1]

    @torch.no_grad()
    def decode(self, codes):
        """(B, h*w) code ids -> (B, 3, H, W) pixels in about [-1, 1]."""
        grid = math.isqrt(codes.shape[1])
        if grid * grid != codes.shape[1] or codes.min() < 0 or codes.max() >= self.cfg.codebook_size:
            raise ValueError(f"expected (B, h*w) codes of a square grid in [0, {self.cfg.codebook_size}), "
                             f"got shape {tuple(codes.shape)}")
        return self.decoder(self.quantize.codes_to_vectors(codes, grid))
