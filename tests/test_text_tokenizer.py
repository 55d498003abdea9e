"""Tests for Part 1 of tokenizer.py: the byte-level BPE text tokenizer.

The exactness test reads every *_cases.json file (a list of {"text", "ids"}) from the
folder in $SHOWO_BPE_DIR, which also holds GPT-2's vocab.json and merges.txt (default: the
copy shipped in tests/fixtures/gpt2_bpe). A missing or broken folder fails, never skips.
"""

import functools
import json
import os
import random
from pathlib import Path

import pytest
import torch

from bpe import EOS_TOKEN, TextTokenizer, apply_merges, bytes_to_unicode, merge_pair, pretokenize

pytestmark = pytest.mark.lesson1   # COURSE.md: `python -m pytest -q -m lesson1` checks that lesson's exercise

DEFAULT_BPE_DIR = Path(__file__).resolve().parent / "fixtures" / "gpt2_bpe"


# ---- exactness against GPT-2 --------------------------------------------------------

def bpe_cases():
    """One pytest.param per (file, case); a fixture problem becomes one failing param."""
    directory = Path(os.environ.get("SHOWO_BPE_DIR", DEFAULT_BPE_DIR))
    try:
        if not directory.is_dir():
            raise ValueError("the folder does not exist")
        params = []
        case_files = sorted(directory.glob("*_cases.json"))
        if not case_files:
            raise ValueError(f"no *_cases.json file in {directory}")
        for path in case_files:
            cases = json.loads(path.read_text(encoding="utf-8"))
            for index, case in enumerate(cases):
                text, ids = case["text"], case["ids"]
                params.append(pytest.param(str(directory), text, ids, id=f"{path.stem}[{index}]:{text[:40]}"))
        return params
    except (OSError, ValueError, KeyError, TypeError) as error:
        problem = f"bad BPE fixture folder {directory}: {error}"
        return [pytest.param(str(directory), problem, None, id="broken-fixture")]


@functools.lru_cache(maxsize=None)
def gpt2_tokenizer(directory: str) -> TextTokenizer:
    """The GPT-2 tokenizer from a fixture folder, loaded once per test session."""
    return TextTokenizer.from_files(directory)


@pytest.mark.parametrize("directory, text, ids", bpe_cases())
def test_gpt2_cases_encode_exactly_and_round_trip(directory, text, ids):
    if ids is None:
        pytest.fail(text)
    tokenizer = gpt2_tokenizer(directory)
    assert tokenizer.encode(text) == ids, f"wrong ids for {text!r}"
    assert tokenizer.decode(ids) == text


# ---- pieces: byte table, pre-tokenizer, merge loop ---------------------------------

def test_byte_table_is_gpt2s():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord("!")] == "!"
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā"


@pytest.mark.parametrize("text, chunks", [
    ("", []),
    ("Hello world", ["Hello", " world"]),
    ("I'll say we've done it, you'd agree",
     ["I", "'ll", " say", " we", "'ve", " done", " it", ",", " you", "'d", " agree"]),
    ("DON'T", ["DON", "'", "T"]),  # contractions are lowercase only
    ("rock'n'roll", ["rock", "'", "n", "'", "roll"]),  # 'n is no contraction
    ("pi is 3.14159, or 22/7", ["pi", " is", " 3", ".", "14159", ",", " or", " 22", "/", "7"]),
    ("½ Ⅻ ²", ["½", " Ⅻ", " ²"]),  # categories No and Nl are numbers too
    ("abc123def", ["abc", "123", "def"]),
    ("naïve café", ["naïve", " café"]),
    ("日本語のテキスト", ["日本語のテキスト"]),
    ("emoji 😀🚀!! ok", ["emoji", " 😀🚀!!", " ok"]),  # emoji are symbols, like punctuation
    ("a  b", ["a", " ", " b"]),  # the last space of a run goes to the word
    ("a     b", ["a", "    ", " b"]),
    ("trailing   ", ["trailing", "   "]),
    ("   leading", ["  ", " leading"]),
    (" ", [" "]),
    ("line\nnext", ["line", "\n", "next"]),
    ("para\n\nnext", ["para", "\n", "\n", "next"]),
    ("end\n", ["end", "\n"]),
    ("a\n  b", ["a", "\n ", " b"]),
    ("x \ty", ["x", " ", "\t", "y"]),
    ("tab\tword", ["tab", "\t", "word"]),
    ("\u00a0word", ["\u00a0", "word"]),  # a non-breaking space is whitespace but not " "
    ("a\x1cb", ["a", "\x1c", "b"]),  # str.isspace() says yes, GPT-2's regex says no
    ("I'll  go!", ["I", "'ll", " ", " go", "!"]),
])
def test_pretokenize(text, chunks):
    assert pretokenize(text) == chunks


def test_pretokenize_keeps_every_character():
    rng = random.Random(0)
    alphabet = "ab Z9'.\n\t\u00a0é日😀"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert "".join(pretokenize(text)) == text


def test_merge_pair_replaces_every_occurrence_left_to_right():
    """Every occurrence, not just the first (a BPE that merged only the first would learn the
    same merge again and again); overlapping runs resolve leftmost-first."""
    assert merge_pair([1, 2, 3, 1, 2, 1, 2], (1, 2), 9) == [9, 3, 9, 9], "merge every occurrence of the pair"
    assert merge_pair(["a", "a", "a"], ("a", "a"), "aa") == ["aa", "a"], "a-a-a merges to aa-a"
    assert merge_pair([1, 1, 1, 1], (1, 1), 7) == [7, 7]
    assert merge_pair([2, 1], (1, 2), 9) == [2, 1], "the pair is ordered"


def test_merges_apply_in_rank_order():
    symbols = list("abc")
    assert apply_merges(symbols, {("a", "b"): 0, ("b", "c"): 1}) == ["ab", "c"]
    assert apply_merges(symbols, {("b", "c"): 0, ("a", "b"): 1}) == ["a", "bc"]
    assert apply_merges(symbols, {("b", "c"): 0, ("a", "bc"): 1}) == ["abc"]
    assert apply_merges(list("aaa"), {("a", "a"): 0}) == ["aa", "a"]  # leftmost first
    assert apply_merges(symbols, {}) == ["a", "b", "c"]


# ---- a tokenizer trained here ------------------------------------------------------

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "heart"]
PLACES = ["at the top left", "at the top right", "in the center", "at the bottom left", "on the right"]


def captions(count: int, seed: int = 0) -> list[str]:
    """Short synthetic captions like "a red circle at the top left and a blue star in the center"."""
    rng = random.Random(seed)
    def phrase():
        return f"a {rng.choice(COLORS)} {rng.choice(SHAPES)} {rng.choice(PLACES)}"
    return [" and ".join(phrase() for _ in range(rng.randint(1, 2))) for _ in range(count)]


@pytest.fixture(scope="module")
def trained() -> TextTokenizer:
    return TextTokenizer.train(captions(2000), vocab_size=300)


def test_training_fills_the_requested_vocabulary(trained):
    assert len(trained) == 300
    assert len(trained.merges) == 300 - 256 - 1
    assert trained.eos_id == 299  # special tokens come after the merges
    assert trained.vocab["a"] == ord("a")  # ids 0-255 are the bytes themselves


def test_training_stops_when_no_pair_is_left():
    tokenizer = TextTokenizer.train(["ab ab ab"], vocab_size=400)
    assert [tokenizer.decode([256 + i]) for i in range(len(tokenizer.merges))] == ["ab", " ab"]
    assert tokenizer.eos_id == 258 and len(tokenizer) == 259


def test_training_is_deterministic_and_order_free():
    texts = captions(500, seed=1)
    first = TextTokenizer.train(texts, vocab_size=290)
    assert TextTokenizer.train(texts, vocab_size=290).to_dict() == first.to_dict()
    assert TextTokenizer.train(texts[::-1], vocab_size=290).to_dict() == first.to_dict()


def test_trained_tokenizer_compresses_its_corpus(trained):
    for text in captions(20, seed=2):
        assert len(trained.encode(text)) < len(text.encode("utf-8")) / 2


@pytest.mark.parametrize("text", [
    "a red circle at the top left",
    "Zebra! 42 naïve 日本語 😀 never seen in training",
    "  tabs\tand\nnewlines  \n",
    "\x00\x7f\u00a0\u2028",
    "",
])
def test_trained_tokenizer_round_trips_anything(trained, text):
    ids = trained.encode(text)
    assert all(0 <= i < len(trained) for i in ids)
    assert trained.decode(ids) == text


def test_training_never_learns_special_tokens():
    tokenizer = TextTokenizer.train(["hi<|endoftext|>" * 50], vocab_size=270)
    assert "<|" not in "".join(tokenizer.vocab)
    assert tokenizer.encode("hi<|endoftext|>") == [tokenizer.token_id("hi"), tokenizer.eos_id]


# ---- added tokens, decoding errors, look-ups ---------------------------------------

def test_endoftext_inside_text_is_one_token(trained):
    ids = trained.encode("a red star<|endoftext|>a blue star")
    assert ids.count(trained.eos_id) == 1
    assert ids[:ids.index(trained.eos_id)] == trained.encode("a red star")
    assert trained.decode(ids) == "a red star<|endoftext|>a blue star"


def test_eos_in_vocab_is_special_without_being_listed():
    vocab = {token: i for i, token in enumerate(bytes_to_unicode().values())}
    vocab[EOS_TOKEN] = 256
    tokenizer = TextTokenizer(vocab, [])
    assert tokenizer.eos_id == 256
    assert tokenizer.encode("x" + EOS_TOKEN) == [vocab["x"], 256]


def test_longest_added_token_wins(trained):
    added = {**trained.added_tokens, "  ": 300, "    ": 301}
    tokenizer = TextTokenizer(trained.vocab, trained.merges, added)
    assert tokenizer.encode("a      b") == [ord("a"), 301, 300, ord("b")]
    assert tokenizer.decode([301]) == "    "


def test_decode_rejects_unknown_ids(trained):
    with pytest.raises(ValueError, match="unknown token id 12345: the vocabulary has 300 tokens"):
        trained.decode([1, 12345])
    with pytest.raises(ValueError, match="unknown token id -1"):
        trained.decode([-1])


def test_decode_accepts_tensors_and_replaces_broken_utf8(trained):
    assert trained.decode(torch.tensor(trained.encode("a star"))) == "a star"
    assert trained.decode([0xE6, 0x97]) == "\ufffd"  # the first two of 日's three bytes


def test_token_id(trained):
    assert trained.token_id(EOS_TOKEN) == 299
    assert trained.token_id("a") == ord("a")
    with pytest.raises(KeyError, match="not a token"):
        trained.token_id("<|nope|>")


# ---- storing and loading -----------------------------------------------------------

SAMPLE = "a red star<|endoftext|>naïve 😀  end\n"


def test_checkpoint_round_trip(trained, tmp_path):
    torch.save({"tokenizer": trained.to_dict()}, tmp_path / "ckpt.pt")
    stored = torch.load(tmp_path / "ckpt.pt", weights_only=True)["tokenizer"]
    restored = TextTokenizer.from_dict(stored)
    assert restored.encode(SAMPLE) == trained.encode(SAMPLE)
    assert restored.to_dict() == trained.to_dict()


def test_save_and_from_files_round_trip(trained, tmp_path):
    trained.save(tmp_path)
    restored = TextTokenizer.from_files(tmp_path)
    assert restored.encode(SAMPLE) == trained.encode(SAMPLE)
    assert restored.to_dict() == trained.to_dict()


def test_from_files_reads_hugging_face_added_tokens(trained, tmp_path):
    trained.save(tmp_path)
    decoder = {"300": {"content": "[PAD]", "special": True}, "301": {"content": "<|soi|>", "special": True}}
    config = {"added_tokens_decoder": decoder}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    specials = {"eos_token": {"content": EOS_TOKEN}, "pad_token": "[PAD]",
                "additional_special_tokens": ["<|soi|>", "<|new|>"]}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(specials))
    tokenizer = TextTokenizer.from_files(tmp_path)
    assert tokenizer.token_id("[PAD]") == 300 and tokenizer.token_id("<|soi|>") == 301
    assert tokenizer.token_id("<|new|>") == 302  # named but numbered nowhere: next free id
    assert tokenizer.token_id(EOS_TOKEN) == 299
    assert tokenizer.encode("[PAD]<|soi|>a") == [300, 301, ord("a")]


def test_from_files_names_the_missing_file(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextTokenizer.from_files(tmp_path / "nowhere")
    trained.save(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt is missing"):
        TextTokenizer.from_files(tmp_path)


def test_phi_whitespace_tokens_take_the_longest_run(tmp_path):
    """Phi-1.5 adds runs of 31 ... 2 spaces (ids 50257-50286) and 9 ... 2 tabs (50287-50294).

    They are matched in the raw text before BPE, longest run first, so an indented line of
    code starts with ONE whitespace token and its first word loses the space it would
    otherwise carry ("return", not " return").
    """
    directory = Path(os.environ.get("SHOWO_BPE_DIR", DEFAULT_BPE_DIR))
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_text((directory / name).read_text(encoding="utf-8"), encoding="utf-8")
    spaces = {" " * n: 50257 + 31 - n for n in range(31, 1, -1)}
    tabs = {"\t" * n: 50287 + 9 - n for n in range(9, 1, -1)}
    (tmp_path / "added_tokens.json").write_text(json.dumps({**spaces, **tabs}))
    phi = TextTokenizer.from_files(tmp_path)
    assert len(phi) == 50295
    # def ' f' (): '\n' '    ' return ' 1'
    assert phi.encode("def f():\n    return 1") == [4299, 277, 33529, 198, 50284, 7783, 352]
    # five spaces: the 4-space token would leave one; the longest run (5) is one token
    assert phi.encode("\n     return") == [198, 50283, 7783]
    assert phi.encode("\n\t\tpass") == [198, 50294, 6603]
    assert phi.encode("\n" + " " * 33 + "x") == [198, 50257, 50286, 87]   # 31 + 2 spaces
