"""Discrete or continuous features for understanding (train.py `mmu_features`; the paper's
ablation on vision encoders and representations): the readers, the contrastive encoder,
training and answering through a projector, and the command lines' refusals."""

import random

import numpy as np
import pytest
import torch

import data
import readers
import sampling
import train
from model import Showo, ShowoConfig
from readers import ContrastiveEncoder

pytestmark = pytest.mark.lesson10


def test_lfq_features_are_what_the_codes_quantize(micro):
    """The continuous LFQ features are the encoder's output before quantization: their
    signs, read as bits, are exactly the codes (MAGVIT-v2 §3.1, lookup-free quantization)."""
    _, vq, _, _ = micro
    images = np.stack([e.image for e in data.make_examples(4, seed=0)])
    features = readers.picture_features(vq.encoder, images, "cpu")                     # (B, N, C)
    codes = data.encode_pictures(vq, images, "cpu")                                  # (B, N)
    assert features.shape == (*codes.shape, vq.cfg.z_channels)
    bits = (features > 0).long()                                                     # the first channel is the top bit
    assert torch.equal((bits * 2 ** torch.arange(vq.cfg.z_channels - 1, -1, -1)).sum(-1), codes)


def test_the_contrastive_encoder_learns_to_match_pictures_and_captions():
    torch.manual_seed(0)
    examples = data.make_examples(256, seed=1, num_objects=1)
    vocabulary = sorted({word for e in examples for word in e.caption.split()})
    ids = [[vocabulary.index(word) for word in e.caption.split()] for e in examples]
    pixels = data.image_to_tensor(np.stack([e.image for e in examples]))
    encoder = ContrastiveEncoder(len(vocabulary), width=32, embedding=32)
    opt = torch.optim.AdamW(encoder.parameters(), lr=3e-3)

    def matched(batch):
        """How often a picture's nearest caption in the batch is its own caption's text."""
        with torch.no_grad():
            chosen = (encoder.embed_pictures(pixels[batch]) @ captions(batch).T).argmax(1)
        return np.mean([examples[batch[c]].caption == examples[b].caption for c, b in zip(chosen.tolist(), batch)])

    def captions(batch):
        picked = [ids[i] for i in batch]
        offsets = torch.tensor([0, *np.cumsum([len(c) for c in picked])[:-1]])
        return encoder.embed_captions(torch.tensor([t for c in picked for t in c]), offsets)

    held_out = list(range(192, 256))
    before = matched(held_out)
    for step in range(150):
        batch = random.Random(step).sample(range(192), 64)
        picked = [ids[i] for i in batch]
        offsets = torch.tensor([0, *np.cumsum([len(c) for c in picked])[:-1]])
        loss = encoder.contrastive_loss(pixels[batch], torch.tensor([t for c in picked for t in c]), offsets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before < 0.2 and matched(held_out) > 0.5, (before, matched(held_out))


CFG = ShowoConfig(llm_vocab_size=30, codebook_size=16, vocab_size=30 + 10 + 16 + 1, bos_token_id=0, eos_token_id=0,
                  num_vq_tokens=4, max_text_len=6, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                  clip_width=5)


@pytest.mark.parametrize("naive", [False, True])
def test_answers_from_features_equal_a_sequence_of_embeddings(naive):
    """answer_from_features on (B, N, C) features = the full network on embeddings with the
    projected features in the picture's places, token by token."""
    torch.manual_seed(0)
    model = Showo(CFG).eval()
    features = torch.randn(2, 4, 5)
    answers = readers.answer_from_features(model, features, [[5, 6], [7]], max_new_tokens=4, naive=naive)
    for row, question, answer in zip(features, [[5, 6], [7]], answers):
        ids = [CFG.mmu_id, CFG.soi_id, *[CFG.mask_token_id] * 4, CFG.eoi_id, CFG.bos_token_id, *question]
        for token in answer:
            tensor = torch.tensor([ids])
            with torch.no_grad():
                inputs = readers.embed_with_features(model, tensor, model.mm_projector(row[None]))
                logits = model(inputs, sampling.understanding_mask_of(CFG)(tensor))[0, -1, :CFG.llm_vocab_size]
            assert logits.argmax().item() == token
            ids.append(token)


def test_a_feature_run_trains_its_projector_and_keeps_its_features_choice(tmp_path):
    """--set mmu_features=lfq_continuous: the model gains an mm_projector from the LFQ's z
    channels, the understanding loss falls, and the checkpoint says what it reads."""
    from checkpoint import load_checkpoint

    train.main(["--preset", "micro", "--steps", "25", "--no-eval", "--set", "mmu_features=lfq_continuous",
                "--set", "batch_t2i=0", "--out-dir", str(tmp_path)])
    model, vq, _, extra = load_checkpoint(tmp_path / "micro.pt")
    assert extra["mmu_features"] == "lfq_continuous"
    assert model.mm_projector[0].in_features == vq.cfg.z_channels
    history = extra["loss_history"]
    assert "t2i" not in history[0]                                      # understanding alone: no t2i rows
    assert np.mean([h["mmu"] for h in history[-5:]]) < 0.8 * np.mean([h["mmu"] for h in history[:5]])
