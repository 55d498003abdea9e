"""Omni-attention masks (attention.py), drawn by hand from the rules of docs/sequences.md.

Each expected mask is a picture: row i says which columns position i may look at ('#')
and which it may not ('.'). A wrong mask fails with the first row that differs, drawn
both ways, so these tests double as the checks for the masks exercise of COURSE.md.
"""

import pytest
import torch

import attention

pytestmark = pytest.mark.lesson3   # COURSE.md: `python -m pytest -q -m lesson3` checks that lesson's exercise

PAD, SOI, EOI, T2I, MMU, BOS, WORD, IMG = 0, 1, 2, 3, 4, 5, 6, 7
NAMES = {PAD: "[PAD]", SOI: "<soi>", EOI: "<eoi>", T2I: "<t2i>", MMU: "<mmu>", BOS: "BOS", WORD: "word", IMG: "img"}

T2I_IDS = [PAD, PAD, T2I, BOS, WORD, WORD, BOS, SOI, IMG, IMG, IMG, EOI]
T2I_MASK = """
# . . . . . . . . . . .
# # . . . . . . . . . .
. . # . . . . . . . . .
. . # # . . . . . . . .
. . # # # . . . . . . .
. . # # # # . . . . . .
. . # # # # # . . . . .
. . # # # # # # # # # #
. . # # # # # # # # # #
. . # # # # # # # # # #
. . # # # # # # # # # #
. . # # # # # # # # # #
"""

MMU_IDS = [MMU, SOI, IMG, IMG, IMG, EOI, BOS, WORD, WORD, WORD, PAD, PAD]
MMU_MASK = """
# # # # # # . . . . . .
# # # # # # . . . . . .
# # # # # # . . . . . .
# # # # # # . . . . . .
# # # # # # . . . . . .
# # # # # # . . . . . .
# # # # # # # . . . . .
# # # # # # # # . . . .
# # # # # # # # # . . .
# # # # # # # # # # . .
. . . . . . . . . . # .
. . . . . . . . . . # #
"""

LM_IDS = [BOS, WORD, WORD, WORD, BOS, PAD, PAD]
LM_MASK = """
# . . . . . .
# # . . . . .
# # # . . . .
# # # # . . .
# # # # # . .
. . . . . # .
. . . . . # #
"""

# Two answers about one picture: segment 0 is the picture, 1 and 2 the two answers.
PACKED_SEGMENTS = [0, 0, 0, 0, 1, 1, 1, 2, 2, -1]
PACKED_MASK = """
# # # # . . . . . .
# # # # . . . . . .
# # # # . . . . . .
# # # # . . . . . .
# # # # # . . . . .
# # # # # # . . . .
# # # # # # # . . .
# # # # . . . # . .
# # # # . . . # # .
. . . . . . . . . #
"""


def picture(mask_text):
    rows = [line.split() for line in mask_text.strip().splitlines()]
    return torch.tensor([[cell == "#" for cell in row] for row in rows])


def draw(row):
    return " ".join("#" if cell else "." for cell in row.tolist())


def assert_mask(name, got, expected_text, ids=None):
    expected = picture(expected_text)
    assert got.shape == expected.shape, f"{name}: mask shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    for i, (mine, theirs) in enumerate(zip(got, expected)):
        label = f" ({NAMES[ids[i]]})" if ids is not None else ""
        assert torch.equal(mine, theirs), (
            f"{name} mask, row {i}{label}: may look at\n  expected {draw(theirs)}\n  got      {draw(mine)}")


def test_t2i_mask_causal_text_bidirectional_picture_pads_hidden():
    ids = torch.tensor([T2I_IDS])
    assert_mask("t2i", attention.t2i_attention_mask(ids, PAD, SOI, EOI)[0], T2I_MASK, T2I_IDS)


def test_mmu_mask_bidirectional_prefix_then_causal():
    ids = torch.tensor([MMU_IDS])
    assert_mask("mmu", attention.mmu_attention_mask(ids, PAD, EOI)[0], MMU_MASK, MMU_IDS)


def test_lm_mask_causal():
    ids = torch.tensor([LM_IDS])
    assert_mask("lm", attention.lm_attention_mask(ids, PAD)[0], LM_MASK, LM_IDS)


def test_shared_picture_mask_answers_never_see_each_other():
    segments = torch.tensor([PACKED_SEGMENTS])
    assert_mask("shared picture", attention.shared_picture_attention_mask(segments, segments < 0)[0], PACKED_MASK)


def test_one_answer_per_picture_is_the_understanding_mask():
    ids = torch.tensor([MMU_IDS])
    segments = torch.tensor([[0] * 6 + [1] * 4 + [-1] * 2])
    assert torch.equal(attention.shared_picture_attention_mask(segments, ids == PAD),
                       attention.mmu_attention_mask(ids, PAD, EOI))


def test_masks_work_row_by_row_in_a_batch():
    """Each row of a batch gets its own mask (here: the same sequence, padded left and right)."""
    ids = torch.tensor([T2I_IDS, T2I_IDS[2:] + [PAD, PAD]])
    both = attention.t2i_attention_mask(ids, PAD, SOI, EOI)
    assert_mask("t2i batch row 0", both[0], T2I_MASK, T2I_IDS)
    # row 1: <t2i> BOS word word BOS <soi> img img img <eoi> [PAD] [PAD]; its <soi> sees all but the pads
    assert both[1, 5].tolist() == [True] * 10 + [False] * 2


@pytest.mark.parametrize("make", [attention.t2i_attention_mask, attention.mmu_attention_mask],
                         ids=["t2i", "mmu"])
def test_fused_and_written_out_attention_agree(make):
    ids = torch.tensor([T2I_IDS, [MMU, SOI, IMG, IMG, EOI, BOS, WORD, WORD, WORD, PAD, PAD, PAD]])
    allowed = make(ids, PAD, SOI, EOI) if make is attention.t2i_attention_mask else make(ids, PAD, EOI)
    q, k, v = torch.randn(3, 2, 4, 12, 8, generator=torch.Generator().manual_seed(0))
    fused = attention.attend(q, k, v, allowed)
    explicit = attention.attend_explicit(q, k, v, allowed)
    assert torch.allclose(fused, explicit, atol=1e-5)


# ---- one rule for every layout (attention.omni_attention_mask) ------------------------------

# A two-picture story: a sentence, its picture, a sentence, its picture, padding.
STORY_IDS = [BOS, WORD, SOI, IMG, EOI, WORD, SOI, IMG, EOI, PAD]
STORY_MASK = """
# . . . . . . . . .
# # . . . . . . . .
# # # # # . . . . .
# # # # # . . . . .
# # # # # . . . . .
# # # # # # . . . .
# # # # # # # # # .
# # # # # # # # # .
# # # # # # # # # .
. . . . . . . . . #
"""


@pytest.mark.lesson9
def test_the_general_rule_on_a_story_drawn_by_hand():
    """Every token sees all earlier ones; a picture's tokens also see their whole picture,
    never a later picture or later text; padding is seen by nobody."""
    ids = torch.tensor([STORY_IDS])
    blocks = attention.picture_blocks(ids, SOI, EOI)
    assert blocks[0].tolist() == [0, 0, 1, 1, 1, 0, 2, 2, 2, 0]
    assert_mask("story", attention.omni_attention_mask(blocks, ids == PAD)[0], STORY_MASK, STORY_IDS)


@pytest.mark.lesson9
@pytest.mark.parametrize("layout", ["t2i", "mmu", "lm"])
def test_the_three_masks_are_the_general_rule_on_their_layouts(layout):
    """t2i: the picture is the one block; understanding: <|mmu|> + picture is one block; text: none."""
    rows = {"t2i": [T2I_IDS, T2I_IDS[2:] + [PAD, PAD]], "mmu": [MMU_IDS, [PAD, PAD] + MMU_IDS[:-2]],
            "lm": [LM_IDS]}[layout]
    ids = torch.tensor(rows)
    special = {"t2i": attention.t2i_attention_mask(ids, PAD, SOI, EOI),
               "mmu": attention.mmu_attention_mask(ids, PAD, EOI),
               "lm": attention.lm_attention_mask(ids, PAD)}[layout]
    blocks = attention.picture_blocks(ids, SOI, EOI, prefix_until_first_eoi=layout == "mmu")
    assert torch.equal(attention.omni_attention_mask(blocks, ids == PAD), special)


def test_a_layout_of_spans_gives_the_same_blocks_as_the_token_ids():
    layout = [("text", 2), ("image", 3), ("text", 1), ("image", 3), ("text", 1)]
    assert attention.blocks_of_layout(layout).tolist() == [0, 0, 1, 1, 1, 0, 2, 2, 2, 0]
    with pytest.raises(ValueError, match="use 'text' or 'image'"):
        attention.blocks_of_layout([("video", 2)])
