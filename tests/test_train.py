"""Training: the mixed-batch layout, the objective falling, FLOP counting, resuming, DDP."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import commands
import data
import evaluate
import train
from attention import mmu_attention_mask, mmu_sequences
from checkpoint import load_checkpoint
from commands import TrainingState
from distributed import Process
from evaluate import ComputeMeter
from model import IGNORE, Showo, ShowoConfig, mtp_loss, ntp_loss
from train import PRESETS, MixedBatches, MixedForward, learning_rate, mixed_loss, model_config, train_transformer

ROOT = Path(__file__).resolve().parent.parent


def micro_batches(micro, scenes=64, seed=0, **changes):
    _, vq, text_tokenizer, _ = micro
    tc = replace(PRESETS["micro"], seed=seed, **changes)
    examples = data.make_examples(scenes, seed=seed)
    codes = vq.encode(data.image_to_tensor(np.stack([e.image for e in examples])))
    cfg = model_config(tc, text_tokenizer, vq)
    enc = text_tokenizer.encode
    return cfg, tc, MixedBatches(cfg, tc, codes, [enc(e.caption) for e in examples],
                                 [[(enc(q), enc(" " + a)) for q, a in e.qa] for e in examples],
                                 [enc(e.caption) for e in examples])


@pytest.mark.lesson5
@pytest.mark.lesson8
def test_mixed_batch_layout_and_labels(micro):
    text_tokenizer = micro[2]
    cfg, tc, batches = micro_batches(micro, mmu_questions=1, mmu_answer_only=False)
    parts = batches.batch(0)
    assert {k: len(p) for k, p in parts.items()} == {"t2i": tc.batch_t2i, "mmu": tc.batch_mmu, "lm": tc.batch_lm}
    t2i = parts["t2i"]
    # MTP labels sit exactly on [MASK] positions and hold image tokens.
    assert torch.equal(t2i.labels != IGNORE, t2i.ids == cfg.mask_token_id)
    assert (t2i.labels[t2i.labels != IGNORE] >= cfg.image_offset).all()
    # NTP labels are text ids only: never [PAD], a special token or an image token.
    for kind in ("mmu", "lm"):
        labels = parts[kind].labels
        assert (labels[labels != IGNORE] < cfg.llm_vocab_size).all(), kind
    # An understanding row's labels spell exactly "question answer<|endoftext|>".
    mmu = parts["mmu"]
    texts = {text_tokenizer.decode(row[row != IGNORE]) for row in mmu.labels}
    questions = {q for e in data.make_examples(64, seed=0) for q, _ in e.qa}
    for text in texts:
        assert text.endswith("<|endoftext|>") and any(text.startswith(q + " ") for q in questions), text
    for part in parts.values():
        assert part.allowed.diagonal(dim1=1, dim2=2).all()


@pytest.mark.lesson5
def test_answer_only_labels_skip_the_question(micro):
    text_tokenizer = micro[2]
    _, _, batches = micro_batches(micro, mmu_questions=1, mmu_answer_only=True)
    labels = batches.batch(0)["mmu"].labels
    answers = {" " + a for e in data.make_examples(64, seed=0) for _, a in e.qa}
    for row in labels:
        assert text_tokenizer.decode(row[row != IGNORE]).removesuffix("<|endoftext|>") in answers


def test_several_answers_per_picture_give_the_logits_of_separate_rows(micro):
    """Packed segments (shared_picture_attention_mask) = one understanding row per question."""
    model = micro[0]
    cfg, _, batches = micro_batches(micro, mmu_questions=3, batch_mmu=2)
    packed = batches.batch(0)["mmu"]
    with torch.no_grad():
        logits = model(packed.ids, packed.allowed, packed.positions)
    prefix = cfg.num_vq_tokens + 3
    checked = 0
    for row in range(len(packed)):
        ids = packed.ids[row]
        segments = torch.cumsum((ids == cfg.bos_token_id) & (packed.positions[row] == prefix), 0)
        for segment in range(1, int(segments.max()) + 1):
            where = (segments == segment) & (ids != cfg.pad_id)
            text = ids[where][1:].tolist()                                   # without BOS
            alone, _ = mmu_sequences(ids[None, 2:prefix - 1], [text], cfg)
            with torch.no_grad():
                expected = model(alone, mmu_attention_mask(alone, cfg.pad_id, cfg.eoi_id))[0, prefix:]
            assert torch.allclose(logits[row, where], expected, atol=1e-5), (row, segment)
            checked += 1
    assert checked >= 4


@pytest.mark.lesson5
@pytest.mark.lesson8
def test_mixed_loss_equals_the_per_task_losses(micro):
    cfg, tc, batches = micro_batches(micro)
    model = Showo(cfg)
    parts = batches.batch(0)
    _, losses = mixed_loss(MixedForward(model), parts, tc, "cpu")
    with torch.no_grad():
        logits = {kind: model(p.ids, p.allowed, p.positions) for kind, p in parts.items()}
    assert losses["t2i"] == pytest.approx(mtp_loss(logits["t2i"], parts["t2i"].labels).item(), rel=1e-5)
    for kind in ("mmu", "lm"):
        assert losses[kind] == pytest.approx(ntp_loss(logits[kind], parts[kind].labels).item(), rel=1e-5)


@pytest.mark.lesson5
def test_the_training_loss_is_made_of_the_models_ntp_and_mtp_losses(micro, monkeypatch):
    """Eq. 3 calls Eq. 1 and Eq. 2 themselves (so exercise 5's functions are what trains)."""
    cfg, tc, batches = micro_batches(micro)
    calls = []
    for name in ("ntp_loss", "mtp_loss"):
        real = getattr(train, name)
        monkeypatch.setattr(train, name, lambda logits, labels, real=real, name=name: calls.append(name) or
                            real(logits, labels))
    mixed_loss(MixedForward(Showo(cfg)), batches.batch(0), tc, "cpu")
    assert sorted(calls) == ["mtp_loss", "ntp_loss", "ntp_loss"], f"the loss called {calls}"


@pytest.mark.lesson5
def test_a_recipe_without_plain_text_has_no_text_loss(micro):
    cfg, tc, batches = micro_batches(micro, batch_lm=0)
    parts = batches.batch(0)
    total, losses = mixed_loss(MixedForward(Showo(cfg)), parts, tc, "cpu")
    assert set(parts) == set(losses) == {"t2i", "mmu"} and torch.isfinite(total)


def test_batches_depend_only_on_seed_and_step(micro):
    _, _, batches = micro_batches(micro)
    _, _, again = micro_batches(micro)
    assert torch.equal(batches.batch(5)["t2i"].ids, again.batch(5)["t2i"].ids)
    assert not torch.equal(batches.batch(5)["t2i"].ids, batches.batch(6)["t2i"].ids)


def test_learning_rate_warms_up_then_decays():
    rates = [learning_rate(s, 100, 1.0, 0.1, 10) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and rates[-1] >= 0.1


@pytest.mark.lesson5
@pytest.mark.lesson8
def test_training_loss_falls(micro):
    torch.manual_seed(0)
    cfg, tc, batches = micro_batches(micro)
    model = Showo(cfg)
    state = TrainingState(replace(tc, steps=40, lr=3e-3, warmup=5), "micro", history=[], scores=[], meter=ComputeMeter())
    train_transformer(model, batches, state, Process("cpu"))
    first = np.mean([sum(h.values()) for h in state.history[:5]])
    last = np.mean([sum(h.values()) for h in state.history[-5:]])
    assert last < 0.7 * first, f"loss {first:.2f} -> {last:.2f}"


# ---- counting the compute ----------------------------------------------------------------

@pytest.mark.lesson5
def test_flop_count_of_a_training_step_matches_a_hand_count():
    """2 FLOPs per multiply-add; backward = 2x forward for the linears, 2.5x for attention."""
    d, layers, vocab, batch, length = 16, 2, 40, 3, 10
    cfg = ShowoConfig(llm_vocab_size=20, codebook_size=8, vocab_size=vocab, num_vq_tokens=4,
                      hidden_size=d, num_layers=layers, num_heads=2, intermediate_size=4 * d)
    model = Showo(cfg)
    ids = torch.randint(20, (batch, length))
    allowed = torch.ones(batch, length, length, dtype=torch.bool).tril()
    meter = ComputeMeter()
    with meter.step("step", 0):
        model(ids, allowed).sum().backward()
    tokens = batch * length
    linear = tokens * 2 * (layers * (4 * d * d + 2 * d * 4 * d) + d * vocab)      # q k v out, fc1 fc2, head
    attention = layers * 2 * 2 * batch * length * length * d                      # q k^T and weights v
    assert meter.flops("step") == 3 * linear + 3.5 * attention


def test_compute_is_reported_and_stored(tmp_path):
    train.main(["--preset", "micro", "--steps", "3", "--no-eval", "--out-dir", str(tmp_path)])
    compute = load_checkpoint(tmp_path / "micro.pt")[3]["compute"]
    assert set(compute["flops"]) == {"image tokenizer", "transformer"}
    assert compute["total_flops"] == sum(compute["flops"].values()) > 0
    assert all(compute["stages"][stage]["seconds"] > 0 for stage in compute["flops"])
    transformer = compute["stages"]["transformer"]
    assert transformer["steps"] == 3 and transformer["counted_steps"] == 1       # step 0 of 0, 1, 2


# ---- the command line ---------------------------------------------------------------------

def main_error(*args):
    """The one line train.main exits with."""
    with pytest.raises(SystemExit) as stop:
        train.main(["--preset", "micro", *map(str, args)])
    message = str(stop.value.code)
    assert message.startswith("error:") and "\n" not in message, message
    return message


def test_bad_input_is_one_clear_line(tmp_path):
    out = ["--out-dir", tmp_path]
    assert "expected a folder of images" in main_error(*out, "--data-dir", tmp_path / "missing")
    assert "not found" in main_error(*out, "--init", tmp_path / "missing.pt")
    assert "steps = 0: must be in [1, 100,000,000]" in main_error(*out, "--set", "steps=0")
    assert "batch_lm = -1: must be in [0, 100,000]" in main_error(*out, "--set", "batch_lm=-1")
    assert "expected float" in main_error(*out, "--set", "lr=fast")
    assert "NAME one of" in main_error(*out, "--set", "learning_rate=1")
    assert "nothing to resume" in main_error(*out, "--resume")
    (tmp_path / "file").write_text("")
    assert "is a file" in main_error("--out-dir", tmp_path / "file")
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in main_error(*out, "--device", "cuda")


def test_pictures_at_another_resolution_are_scored_at_32_px():
    """A released tokenizer decodes 256 px pictures; the scorer reads the shapes world at 32 px."""
    example = data.make_examples(1, seed=3)[0]
    large = np.array(Image.fromarray(example.image).resize((256, 256), Image.NEAREST))
    assert data.as_world_picture(large).shape == (32, 32, 3)
    assert data.matches(data.as_world_picture(large), example.caption)


def test_set_reads_each_field_as_its_type():
    tc = cli.override(PRESETS["micro"], ["steps=7", "lr=0.5", "vq_ch_mult=1,2", "mmu_answer_only=true"])
    assert (tc.steps, tc.lr, tc.vq_ch_mult, tc.mmu_answer_only) == (7, 0.5, (1, 2), True)


# ---- saving, resuming, reusing --------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--set", "mmu_features=contrastive", "--set", "contrastive_steps=3"],
                                   ["--set", "batch_story=2", "--set", "train_stories=8"]],
                         ids=["codes", "contrastive reader", "stories"])
def test_interrupted_and_resumed_run_equals_a_straight_run(tmp_path, monkeypatch, extra):
    """For every reader and row kind: the contrastive encoder is stored with the run, so a
    resumed run reads through the same one instead of training another."""
    recipe = ["--preset", "micro", "--set", "steps=8", "--set", "save_every=3", "--no-eval", *extra]
    train.main([*recipe, "--out-dir", str(tmp_path / "straight")])

    real_batch = MixedBatches.batch

    def ctrl_c_at_step_5(self, step):
        if step == 5:
            raise KeyboardInterrupt
        return real_batch(self, step)

    monkeypatch.setattr(MixedBatches, "batch", ctrl_c_at_step_5)
    with pytest.raises(SystemExit):
        train.main([*recipe, "--out-dir", str(tmp_path / "resumed")])
    stopped = load_checkpoint(tmp_path / "resumed" / "micro.pt")[3]
    assert stopped["train_state"]["step"] == 5 and len(stopped["loss_history"]) == 5
    monkeypatch.setattr(MixedBatches, "batch", real_batch)
    train.main(["--preset", "micro", "--resume", "--no-eval", "--out-dir", str(tmp_path / "resumed")])

    straight, resumed = (load_checkpoint(tmp_path / name / "micro.pt") for name in ("straight", "resumed"))
    for (name, a), b in zip(straight[0].state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), f"{name} differs between the straight and the resumed run"
    assert straight[3]["loss_history"] == resumed[3]["loss_history"]
    assert not list((tmp_path / "resumed").glob("*.tmp"))


def test_tokenizers_from_and_init_reuse_a_checkpoint(tmp_path):
    train.main(["--preset", "micro", "--steps", "2", "--no-eval", "--out-dir", str(tmp_path / "first")])
    first = load_checkpoint(tmp_path / "first" / "micro.pt")
    train.main(["--preset", "micro", "--steps", "2", "--no-eval", "--out-dir", str(tmp_path / "second"),
                "--tokenizers-from", str(tmp_path / "first" / "micro.pt")])
    second = load_checkpoint(tmp_path / "second" / "micro.pt")
    assert all(torch.equal(a, b) for a, b in zip(first[1].state_dict().values(), second[1].state_dict().values()))
    assert second[3]["compute"]["flops"]["image tokenizer"] == first[3]["compute"]["flops"]["image tokenizer"]
    train.main(["--preset", "micro", "--steps", "2", "--no-eval", "--out-dir", str(tmp_path / "third"),
                "--init", str(tmp_path / "first" / "micro.pt")])
    third = load_checkpoint(tmp_path / "third" / "micro.pt")
    changed = [not torch.equal(a, b) for a, b in zip(first[0].state_dict().values(), third[0].state_dict().values())]
    assert any(changed) and third[0].cfg == first[0].cfg


@pytest.mark.ddp
def test_two_process_ddp_on_gloo(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561"]
    result = subprocess.run(torchrun + [str(ROOT / "train.py"), "--preset", "micro", "--steps", "6",
                                        "--no-eval", "--device", "cpu", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=240, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    model, _, _, extra = load_checkpoint(tmp_path / "micro.pt")
    history = extra["loss_history"]
    assert len(history) == 6 and all(np.isfinite(list(h.values())).all() for h in history)
    assert result.stdout.count("samples.png") == 1    # only rank 0 writes


def test_caption_drop_out_rate_is_what_the_recipe_says(micro):
    """Over many rows, the share of t2i rows with an empty caption is caption_dropout (0.1)."""
    cfg, tc, batches = micro_batches(micro, batch_t2i=100)
    empty_caption_length = cfg.max_text_len + 1 - 3         # [PAD]s before <|t2i|> BOS EOS
    rows = torch.cat([batches.batch(step)["t2i"].ids for step in range(30)])
    dropped = ((rows[:, :cfg.max_text_len + 1] == cfg.pad_id).sum(1) == empty_caption_length).float().mean()
    assert 0.08 < dropped.item() < 0.12, f"{dropped.item():.1%} of captions dropped, expected {tc.caption_dropout:.0%}"


# ---- held-out scores ------------------------------------------------------------------------

class PictureTable(torch.nn.Module):
    """A stand-in image tokenizer: code 0 of a picture is its row in a table of pictures."""

    def __init__(self, pictures):
        super().__init__()
        self.cfg = type("Config", (), {"resolution": 32})
        self.pictures = list(pictures)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, pixels):
        rows = [self.pictures.index(data.tensor_to_image(p).tobytes()) for p in pixels]
        return torch.tensor(rows)[:, None].repeat(1, 4)

    def decode(self, codes):
        images = [np.frombuffer(self.pictures[i], np.uint8).reshape(32, 32, 3) for i in codes[:, 0].tolist()]
        return data.image_to_tensor(np.stack(images))


def test_scores_count_right_and_wrong_pictures_and_answers(micro, monkeypatch):
    """evaluate() with a stand-in model that gets every other picture and answer wrong: 50%."""
    model, _, text_tokenizer, _ = micro
    tc = replace(PRESETS["micro"], eval_draws=1, eval_prompts=6, eval_scenes=6)
    wrong_colour = {"red": "green", "green": "red", "blue": "white", "white": "blue",
                    "yellow": "purple", "purple": "yellow"}
    scenes = {}                                              # prompt -> (right, wrong) picture rows
    table = PictureTable([])

    def picture_row(objects):
        table.pictures.append(data.render(objects).tobytes())
        return len(table.pictures) - 1

    def draw(model, captions_ids, objective, settings, generator):
        rows = []
        for i, ids in enumerate(captions_ids):
            prompt = text_tokenizer.decode(ids)
            if prompt not in scenes:
                objects = [data.ShapeObject(c, s, p, *next(zip(*data.corner_range(p, 12))), 12)
                           for c, s, p in data.parse_caption(prompt)]
                twisted = [replace(o, colour=wrong_colour[o.colour]) for o in objects]
                scenes[prompt] = (picture_row(objects), picture_row(twisted))
            rows.append(scenes[prompt][i % 2])               # every other picture is wrong
        return torch.tensor(rows)[:, None].repeat(1, 4)

    shown = {}                                               # picture row -> its example

    def answer(model, codes, questions_ids, *args, **kwargs):
        answers = []
        for i, (row, question) in enumerate(zip(codes[:, 0].tolist(), questions_ids)):
            truth = dict(shown[row].qa)[text_tokenizer.decode(question)]
            answers.append(text_tokenizer.encode(" " + (truth if i % 2 == 0 else "no idea")))
        return answers

    real_make_examples = data.make_examples

    def remember(*args, **kwargs):
        made = real_make_examples(*args, **kwargs)
        for example in made:
            shown[len(table.pictures)] = example
            table.pictures.append(example.image.tobytes())
        return made

    monkeypatch.setattr(evaluate, "generate_pictures", draw)
    monkeypatch.setattr(evaluate, "answer_questions", answer)
    monkeypatch.setattr(data, "make_examples", remember)
    scores = evaluate.evaluate(model, table, text_tokenizer, commands.scoring(tc))
    assert scores["t2i_one"] == scores["t2i_two"] == scores["t2i_novel"] == 0.5
    assert scores["vqa"] == pytest.approx(0.5, abs=0.1) and scores["caption"] == pytest.approx(0.5, abs=0.2)


# ---- the autoregressive baseline (--image-objective ar) -------------------------------------

@pytest.mark.lesson8
def test_ar_rows_are_causal_over_the_picture_and_label_every_image_token(micro):
    cfg, _, batches = micro_batches(micro, image_objective="ar")
    t2i = batches.batch(0)["t2i"]
    n = cfg.num_vq_tokens
    assert (t2i.ids != cfg.mask_token_id).all()                         # nothing is masked
    span = slice(-(n + 2), None)                                         # <|soi|> img ... <|eoi|>
    picture_rows = t2i.allowed[:, span, span]
    assert torch.equal(picture_rows, picture_rows & torch.ones(n + 2, n + 2, dtype=torch.bool).tril())
    assert picture_rows.diagonal(dim1=1, dim2=2).all()
    assert torch.equal(t2i.labels[:, -(n + 1):-1], t2i.ids[:, -(n + 1):-1])


@pytest.mark.lesson8
def test_ar_loss_is_ntp_loss_on_the_image_tokens(micro):
    cfg, tc, batches = micro_batches(micro, image_objective="ar")
    model = Showo(cfg)
    parts = batches.batch(0)
    _, losses = mixed_loss(MixedForward(model), parts, tc, "cpu")
    t2i = parts["t2i"]
    with torch.no_grad():
        logits = model(t2i.ids, t2i.allowed, t2i.positions)
    assert losses["t2i"] == pytest.approx(ntp_loss(logits, t2i.labels).item(), rel=1e-5)


@pytest.mark.lesson8
def test_an_ar_checkpoint_is_drawn_token_by_token_without_a_flag(tmp_path, monkeypatch):
    import sampling
    train.main(["--preset", "micro", "--image-objective", "ar", "--steps", "2", "--no-eval",
                "--out-dir", str(tmp_path)])
    assert load_checkpoint(tmp_path / "micro.pt")[3]["image_objective"] == "ar"
    calls = []
    real = sampling.generate_image_codes_ar
    monkeypatch.setattr(sampling, "generate_image_codes_ar", lambda *a, **k: calls.append(1) or real(*a, **k))
    sampling.main(["--ckpt", str(tmp_path / "micro.pt"), "--prompt", "a red circle", "--out", str(tmp_path / "a.png")])
    assert calls == [1]
    with pytest.raises(SystemExit, match="need a MaskGIT"):
        sampling.main(["--ckpt", str(tmp_path / "micro.pt"), "--prompt", "a red circle", "--image",
                       str(tmp_path / "a.png"), "--extend", "left", "--out", str(tmp_path / "b.png")])
