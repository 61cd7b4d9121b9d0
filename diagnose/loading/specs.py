"""What a loader learned about a model's inputs (shape, dtype, token vocabulary, keyword or positional)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class InputSpec:
    """One input as the model declares it; unknown parts are None.

    `shape` has None for a dynamic (symbolic) dimension; `vocab_size` is set when the input feeds
    an embedding table, so synthetic inputs must be token ids in [0, vocab_size). A `keyword` input
    is passed by its name (a Hugging Face model's `input_ids`, `decoder_input_ids`, `pixel_values`);
    the others are positional, in order.
    """

    name: str
    shape: tuple[int | None, ...] | None = None
    dtype: str | None = None  # torch dtype name without the "torch." prefix, e.g. "float32", "int64"
    vocab_size: int | None = None
    keyword: bool = False

    @property
    def integer(self) -> bool:
        return self.dtype is not None and ("int" in self.dtype or self.dtype == "bool")
