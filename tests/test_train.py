"""Training: the mixed-batch layout, the objective falling, and two-process DDP."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import train
from model import IGNORE, Showo, load_checkpoint, mtp_loss, ntp_loss
from train import (PRESETS, Distributed, MixedBatches, learning_rate, mixed_loss, model_config,
                   train_transformer)

ROOT = Path(__file__).resolve().parent.parent


def micro_batches(micro, scenes=64, seed=0):
    _, vq, text_tokenizer, _ = micro
    tc = PRESETS["micro"]
    examples = data.make_examples(scenes, seed=seed)
    codes = vq.encode(data.image_to_tensor(np.stack([e.image for e in examples])))
    cfg = model_config(tc, text_tokenizer, vq)
    enc = text_tokenizer.encode
    return cfg, MixedBatches(cfg, tc, codes, [enc(e.caption) for e in examples],
                             [[(enc(q), enc(" " + a)) for q, a in e.qa] for e in examples],
                             [enc(e.caption) for e in examples], seed=seed)


def test_mixed_batch_layout_and_labels(micro):
    cfg, batches = micro_batches(micro)
    ids, labels, allowed, (n_t2i, n_lm, n_mmu) = batches.next()
    tc = PRESETS["micro"]
    assert (n_t2i, n_lm, n_mmu) == (tc.batch_t2i, tc.batch_lm, tc.batch_mmu)
    assert ids.shape[0] == labels.shape[0] == allowed.shape[0] == n_t2i + n_lm + n_mmu
    t2i_ids, t2i_labels = ids[:n_t2i], labels[:n_t2i]
    # MTP labels sit exactly on [MASK] positions and hold image tokens.
    assert torch.equal(t2i_labels != IGNORE, t2i_ids == cfg.mask_token_id)
    assert ((t2i_labels[t2i_labels != IGNORE] >= cfg.image_offset)).all()
    # NTP labels never cover padding or image tokens; every row still sees itself.
    text_labels = labels[n_t2i:]
    assert (text_labels[text_labels != IGNORE] < cfg.llm_vocab_size + 10).all()
    assert allowed.diagonal(dim1=1, dim2=2).all()


def test_mixed_loss_equals_the_per_task_losses(micro):
    cfg, batches = micro_batches(micro)
    model = Showo(cfg)
    batch = batches.next()
    ids, labels, allowed, (n_t2i, n_lm, _) = batch
    _, parts = mixed_loss(model, batch, PRESETS["micro"], "cpu")
    with torch.no_grad():
        logits = model(ids, allowed)
    assert parts["t2i"] == pytest.approx(mtp_loss(logits[:n_t2i], labels[:n_t2i]).item(), rel=1e-5)
    lm = slice(n_t2i, n_t2i + n_lm)
    assert parts["lm"] == pytest.approx(ntp_loss(logits[lm], labels[lm]).item(), rel=1e-5)
    assert parts["mmu"] == pytest.approx(ntp_loss(logits[n_t2i + n_lm:], labels[n_t2i + n_lm:]).item(), rel=1e-5)


def test_learning_rate_warms_up_then_decays():
    rates = [learning_rate(s, 100, 1.0, 0.1, 10) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and rates[-1] >= 0.1


def test_training_loss_falls(micro):
    torch.manual_seed(0)
    cfg, batches = micro_batches(micro)
    model = Showo(cfg)
    tc = replace(PRESETS["micro"], steps=40, lr=3e-3, warmup=5)
    _, history = train_transformer(model, batches, tc, Distributed("cpu"))
    first = np.mean([sum(h.values()) for h in history[:5]])
    last = np.mean([sum(h.values()) for h in history[-5:]])
    assert last < 0.7 * first, f"loss {first:.2f} -> {last:.2f}"


def test_bad_input_is_one_clear_line(tmp_path):
    def message(*args):
        with pytest.raises(SystemExit) as stop:
            train.main(["--preset", "micro", "--out-dir", str(tmp_path), *args])
        return str(stop.value.code)
    assert "expected a folder of images" in message("--data-dir", str(tmp_path / "missing"))
    assert "not found" in message("--init", str(tmp_path / "missing.pt"))
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in message("--device", "cuda")


@pytest.mark.ddp
def test_two_process_ddp_on_gloo(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561"]
    result = subprocess.run(torchrun + [str(ROOT / "train.py"), "--preset", "micro", "--steps", "6",
                                        "--no-eval", "--device", "cpu", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=240, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    model, _, _, extra = load_checkpoint(tmp_path / "tiny.pt")
    history = extra["loss_history"]
    assert len(history) == 6 and all(np.isfinite(list(h.values())).all() for h in history)
    assert result.stdout.count("wrote") == 1          # only rank 0 writes
