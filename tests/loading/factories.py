"""Model factories that tests load by file path (`factories.py:NAME`), like a user's build script."""

from __future__ import annotations

import torch
from torch import nn


def build_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def build_mlp_with_example() -> tuple[nn.Module, torch.Tensor]:
    return build_mlp(), torch.ones(4, 8)


def build_with_kwargs_example() -> tuple[nn.Module, dict]:
    return build_mlp(), {"input": torch.ones(2, 8)}


def build_token_model() -> nn.Module:
    return nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(8 * 5, 4))


def build_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32)
    return GPT2LMHeadModel(config)


def build_raises() -> nn.Module:
    raise ValueError("the factory is broken")


def build_returns_int() -> int:
    return 3


def build_needs_argument(width: int) -> nn.Module:
    return nn.Linear(width, 1)


NOT_CALLABLE = 42


def build_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=3,
    )
    return BertForSequenceClassification(config)
