"""T5 text encoder for SAM Audio descriptions (reference ``sam_audio/model/text_encoder.py``).

Tokenisation and the encoder are plain ``transformers`` (``AutoTokenizer`` +
``T5EncoderModel``); the output is the last hidden state and a bool mask (True = real token).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model.sam_audio.config import T5EncoderConfig
from model.sam_audio.errors import SAMAudioLoadError


class T5TextEncoder(nn.Module):
    """Descriptions -> (features [B, L, d_model], mask [B, L] bool)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        max_length: int | None = 512,
        pad_mode: str = "longest",
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_mode = pad_mode

    @classmethod
    def from_pretrained(cls, folder: str | Path, cfg: T5EncoderConfig) -> T5TextEncoder:
        """Load tokenizer and encoder from a local folder (float32, eval mode)."""
        import transformers

        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True
            )
            model = transformers.T5EncoderModel.from_pretrained(
                str(folder), local_files_only=True, dtype=torch.float32
            )
        except Exception as err:
            raise SAMAudioLoadError(
                f"cannot load the T5 text encoder from {folder}: {err}"
            ) from err
        hidden = model.config.d_model
        if hidden != cfg.dim:
            raise SAMAudioLoadError(
                f"T5 at {folder} has d_model {hidden} but config text_encoder.dim is {cfg.dim}"
            )
        model.eval()
        return cls(model, tokenizer, max_length=cfg.max_length, pad_mode=cfg.pad_mode)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask exactly as the reference calls the tokenizer."""
        return self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            padding=self.pad_mode,
            return_tensors="pt",
        )

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        encoded = self.tokenize(texts)
        input_ids = encoded["input_ids"].to(device)
        attention_mask = encoded["attention_mask"].to(device)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, attention_mask.bool()
