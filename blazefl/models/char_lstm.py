"""A character-level LSTM for next-character prediction (LEAF's Shakespeare model).

LEAF's reference model (``models/shakespeare/stacked_lstm.py``): an 8-wide character
embedding, two stacked LSTM layers of 256 units, and a linear layer over the output at the
last position giving one logit per character. Its accuracy is next-character accuracy (the
share of sequences whose following character is the arg-max), which is what the built-in
evaluation's accuracy over ``[N]`` labels computes.

Example:
    >>> model = char_lstm(num_classes=81, input_shape=(80,), input_dtype=torch.int64, dropout=0.0)
    >>> model(torch.zeros(2, 80, dtype=torch.int64)).shape
    torch.Size([2, 81])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CharLSTM", "char_lstm"]


class CharLSTM(nn.Module):
    """embedding -> stacked LSTM -> linear head on the last position.

    Args:
        vocab_size: number of character ids the input may hold (ids lie in ``[0, vocab_size)``).
        num_classes: number of output logits (the characters that may come next).
        embedding_dim: width of the character embedding (LEAF: 8).
        hidden_size: LSTM units per layer (LEAF: 256).
        num_layers: stacked LSTM layers (LEAF: 2).

    Example:
        >>> CharLSTM(81, 81, hidden_size=16)(torch.zeros(4, 10, dtype=torch.int64)).shape
        torch.Size([4, 81])
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embedding_dim: int = 8,
        hidden_size: int = 256,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("num_classes", num_classes),
            ("embedding_dim", embedding_dim),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"char_lstm: {name} must be an int >= 1, got {value!r}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map int64 ids ``[B, L]`` to ``[B, num_classes]`` logits for the character after."""
        out, _ = self.lstm(self.embedding(x))
        return self.head(out[:, -1, :])


def char_lstm(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    input_dtype: torch.dtype,
    dropout: float,
    vocab_size: int | None = None,
    embedding_dim: int = 8,
    hidden_size: int = 256,
    num_layers: int = 2,
) -> CharLSTM:
    """The `model.name: char_lstm` factory: LEAF's Shakespeare LSTM for int64 sequences.

    For next-character prediction the characters that come in are the characters that may
    come next, so the vocabulary is ``num_classes`` unless `vocab_size` says otherwise.
    Smaller models for quick experiments come from a factory of one's own that calls this one
    (``model.name: mypkg.nets:tiny_lstm`` with ``return char_lstm(**kw, hidden_size=32)``).

    Args:
        num_classes: number of logits (Shakespeare: 81).
        input_shape: per-sample shape, ``(L,)``.
        input_dtype: must be ``torch.int64`` (character ids).
        dropout: must be 0 (LEAF's model has none).
        vocab_size: number of input ids (default ``num_classes``).
        embedding_dim / hidden_size / num_layers: see `CharLSTM`.

    Returns:
        The model (weights as PyTorch initialises them; `build_model` redraws them from its
        generator).

    Raises:
        ValueError: input that is not one sequence of int64 ids per sample (an image, for
            instance), or dropout; one line.

    Example:
        >>> char_lstm(num_classes=81, input_shape=(80,), input_dtype=torch.int64, dropout=0.0)
        CharLSTM(...)
    """
    shape = tuple(input_shape)
    if input_dtype != torch.int64 or len(shape) != 1:
        what = f"{shape} {str(input_dtype).removeprefix('torch.')}"
        raise ValueError(
            f"model 'char_lstm' takes int64 character ids [L] (e.g. data.dataset: shakespeare), "
            f"but the data's samples are {what}: for images use model.name: cnn"
        )
    if dropout:
        raise ValueError(f"model 'char_lstm' has no dropout; set model.dropout: 0 (got {dropout})")
    return CharLSTM(
        num_classes if vocab_size is None else vocab_size,
        num_classes,
        embedding_dim=embedding_dim,
        hidden_size=hidden_size,
        num_layers=num_layers,
    )
