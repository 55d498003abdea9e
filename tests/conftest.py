"""Shared fixtures: a micro Show-o (random weights) with a small trained BPE."""

import pytest
import torch

import data
from checkpoint import save_checkpoint
from model import Showo
from tokenizer import ImageTokenizer, TextTokenizer
from train import PRESETS, image_tokenizer_config, model_config


@pytest.fixture(scope="session")
def micro(tmp_path_factory):
    """(model, vq, text_tokenizer, checkpoint path) at the 'micro' preset's sizes, untrained."""
    torch.manual_seed(0)
    tc = PRESETS["micro"]
    text_tokenizer = TextTokenizer.train(data.text_corpus(300, seed=0), tc.bpe_vocab_size)
    vq = ImageTokenizer(image_tokenizer_config(tc, data.IMAGE_SIZE)).eval()
    model = Showo(model_config(tc, text_tokenizer, vq)).eval()
    path = tmp_path_factory.mktemp("micro") / "micro.pt"
    save_checkpoint(path, model, vq, text_tokenizer)
    return model, vq, text_tokenizer, path
