"""Byte-level BPE, the text half of Show-o's tokenization (arXiv 2408.12528v7, §3.1 "Tokenization").

Show-o reads text with Phi-1.5's tokenizer, which is GPT-2's byte-level BPE plus a few
whole tokens for runs of whitespace. This file builds that tokenizer step by step, in
the order of minbpe: bytes as printable characters, the pre-tokenizer that cuts text into
chunks, merging pairs, added tokens, then the `TextTokenizer` that encodes, decodes,
trains a small vocabulary from scratch and reads and writes the GPT-2 / Phi-1.5 files
(vocab.json, merges.txt, added_tokens.json).

It is reference: a reader of the paper can take it as given (`python evaluate.py bpe "a
red circle"` shows it at work). The image half, and the one vocabulary both halves share,
are in tokenizer.py.

Read first: README.md. Read next: tokenizer.py.
"""

import json
import math
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

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
