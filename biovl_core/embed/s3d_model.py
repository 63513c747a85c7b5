"""S3D-G video tower and word-embedding text tower of the MIL-NCE HowTo100M model.

Architecture of Miech et al., "End-to-End Learning of Visual Representations from
Uncurated Instructional Videos" (CVPR 2020), as published in PyTorch by
antoine77340/S3D_HowTo100M (``s3dg.py``). Module and parameter names match that code, so
its checkpoint ``s3d_howto100m.pth`` loads with ``load_state_dict`` as is. Tokenisation
(word list from ``s3d_dict.npy``) lives in ``S3DTokenizer``, outside the modules, so a
model can be built without the dictionary file.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PUBLISHED_VOCAB_SIZE = 66250
WORD_DIM = 300
MAX_WORDS = 16
TEXT_HIDDEN = 2048

_WORD_RE = re.compile(r"[\w']+")


class SelfGating(nn.Module):
    """Feature gating of S3D-G: channels scaled by a sigmoid of their space-time mean."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(input_dim, input_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``x`` [B, C, T, H, W] channel-wise."""
        weights = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))
        return weights[:, :, None, None, None] * x


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    t, h, w = value
    return (t, h, w)


class STConv3D(nn.Module):
    """Conv3d + BatchNorm + ReLU; ``separable`` splits a k x k x k kernel into 1 x k x k then k x 1 x 1."""

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        kernel_size: Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.separable = separable
        kt, kh, kw = _triple(kernel_size)
        st, sh, sw = _triple(stride)
        pt, ph, pw = _triple(padding)
        if separable:
            self.conv1 = nn.Conv3d(
                input_dim, output_dim, (1, kh, kw), (1, sh, sw), (0, ph, pw), bias=False
            )
            self.bn1 = nn.BatchNorm3d(output_dim)
            self.conv2 = nn.Conv3d(
                output_dim, output_dim, (kt, 1, 1), (st, 1, 1), (pt, 0, 0), bias=False
            )
            self.bn2 = nn.BatchNorm3d(output_dim)
        else:
            self.conv1 = nn.Conv3d(
                input_dim, output_dim, (kt, kh, kw), (st, sh, sw), (pt, ph, pw), bias=False
            )
            self.bn1 = nn.BatchNorm3d(output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the (separable) convolution."""
        x = F.relu(self.bn1(self.conv1(x)))
        if self.separable:
            x = F.relu(self.bn2(self.conv2(x)))
        return x


class MaxPool3dTFPadding(nn.Module):
    """3D max pooling with TensorFlow 'SAME' padding (zero padding; inputs are post-ReLU)."""

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        pads: list[int] = []
        for k, s in zip(reversed(tuple(kernel_size)), reversed(tuple(stride)), strict=True):
            along = max(k - s, 0)
            pads += [along // 2, along - along // 2]
        self.pad = nn.ConstantPad3d(tuple(pads), 0.0)
        self.pool = nn.MaxPool3d(tuple(kernel_size), tuple(stride), ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad like TensorFlow, then pool."""
        return self.pool(self.pad(x))


class InceptionBlock(nn.Module):
    """S3D-G inception block: four branches (1x1, 1x1->3x3x3, 1x1->3x3x3, pool->1x1), each gated."""

    def __init__(
        self,
        input_dim: int,
        num_outputs_0_0a: int,
        num_outputs_1_0a: int,
        num_outputs_1_0b: int,
        num_outputs_2_0a: int,
        num_outputs_2_0b: int,
        num_outputs_3_0b: int,
    ) -> None:
        super().__init__()
        self.conv_b0 = STConv3D(input_dim, num_outputs_0_0a, [1, 1, 1])
        self.conv_b1_a = STConv3D(input_dim, num_outputs_1_0a, [1, 1, 1])
        self.conv_b1_b = STConv3D(
            num_outputs_1_0a, num_outputs_1_0b, [3, 3, 3], padding=1, separable=True
        )
        self.conv_b2_a = STConv3D(input_dim, num_outputs_2_0a, [1, 1, 1])
        self.conv_b2_b = STConv3D(
            num_outputs_2_0a, num_outputs_2_0b, [3, 3, 3], padding=1, separable=True
        )
        self.maxpool_b3 = nn.MaxPool3d((3, 3, 3), stride=1, padding=1)
        self.conv_b3_b = STConv3D(input_dim, num_outputs_3_0b, [1, 1, 1])
        self.gating_b0 = SelfGating(num_outputs_0_0a)
        self.gating_b1 = SelfGating(num_outputs_1_0b)
        self.gating_b2 = SelfGating(num_outputs_2_0b)
        self.gating_b3 = SelfGating(num_outputs_3_0b)
        self.output_dim = num_outputs_0_0a + num_outputs_1_0b + num_outputs_2_0b + num_outputs_3_0b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the four gated branches along channels."""
        b0 = self.gating_b0(self.conv_b0(x))
        b1 = self.gating_b1(self.conv_b1_b(self.conv_b1_a(x)))
        b2 = self.gating_b2(self.conv_b2_b(self.conv_b2_a(x)))
        b3 = self.gating_b3(self.conv_b3_b(self.maxpool_b3(x)))
        return torch.cat((b0, b1, b2, b3), dim=1)


class SentenceEmbedding(nn.Module):
    """Text tower: word embeddings -> FC(2048) + ReLU -> max over words -> FC(embed_dim)."""

    def __init__(
        self,
        embd_dim: int = 512,
        num_embeddings: int = PUBLISHED_VOCAB_SIZE,
        word_embedding_dim: int = WORD_DIM,
        output_dim: int = TEXT_HIDDEN,
    ) -> None:
        super().__init__()
        self.word_embd = nn.Embedding(num_embeddings, word_embedding_dim)
        self.fc1 = nn.Linear(word_embedding_dim, output_dim)
        self.fc2 = nn.Linear(output_dim, embd_dim)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Embed token ids [B, max_words] (0 = padding) to [B, embd_dim]."""
        x = F.relu(self.fc1(self.word_embd(token_ids)))
        return self.fc2(x.max(dim=1).values)


class S3D(nn.Module):
    """S3D-G video tower (space-to-depth stem, mixed_3b..5c, FC to the joint space) plus text tower."""

    def __init__(self, num_classes: int = 512, vocab_size: int = PUBLISHED_VOCAB_SIZE) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = STConv3D(24, 64, [2, 4, 4], stride=1, padding=(1, 2, 2))
        self.conv_2b = STConv3D(64, 64, [1, 1, 1])
        self.conv_2c = STConv3D(64, 192, [3, 3, 3], padding=1, separable=True)
        self.gating = SelfGating(192)
        self.maxpool_2a = MaxPool3dTFPadding((1, 3, 3), (1, 2, 2))
        self.maxpool_3a = MaxPool3dTFPadding((1, 3, 3), (1, 2, 2))
        self.mixed_3b = InceptionBlock(192, 64, 96, 128, 16, 32, 32)
        self.mixed_3c = InceptionBlock(self.mixed_3b.output_dim, 128, 128, 192, 32, 96, 64)
        self.maxpool_4a = MaxPool3dTFPadding((3, 3, 3), (2, 2, 2))
        self.mixed_4b = InceptionBlock(self.mixed_3c.output_dim, 192, 96, 208, 16, 48, 64)
        self.mixed_4c = InceptionBlock(self.mixed_4b.output_dim, 160, 112, 224, 24, 64, 64)
        self.mixed_4d = InceptionBlock(self.mixed_4c.output_dim, 128, 128, 256, 24, 64, 64)
        self.mixed_4e = InceptionBlock(self.mixed_4d.output_dim, 112, 144, 288, 32, 64, 64)
        self.mixed_4f = InceptionBlock(self.mixed_4e.output_dim, 256, 160, 320, 32, 128, 128)
        self.maxpool_5a = MaxPool3dTFPadding((2, 2, 2), (2, 2, 2))
        self.mixed_5b = InceptionBlock(self.mixed_4f.output_dim, 256, 160, 320, 32, 128, 128)
        self.mixed_5c = InceptionBlock(self.mixed_5b.output_dim, 384, 192, 384, 48, 128, 128)
        self.fc = nn.Linear(self.mixed_5c.output_dim, num_classes)
        self.text_module = SentenceEmbedding(num_classes, num_embeddings=vocab_size)

    @staticmethod
    def _space_to_depth(x: torch.Tensor) -> torch.Tensor:
        """Fold 2x2x2 space-time blocks into channels: [B, C, T, H, W] -> [B, 8C, T/2, H/2, W/2]."""
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // 2, 2, h // 2, 2, w // 2, 2)
        x = x.permute(0, 3, 5, 7, 1, 2, 4, 6)
        return x.contiguous().view(b, 8 * c, t // 2, h // 2, w // 2)

    def forward_video(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [0, 1] (T, H, W even) -> joint-space embedding [B, num_classes]."""
        _, _, t, h, w = video.shape
        if t % 2 or h % 2 or w % 2:
            raise ValueError(
                f"S3D needs an even number of frames, height and width; got {t}x{h}x{w}"
            )
        net = self.conv1(self._space_to_depth(video))
        net = net[:, :, 1:, 1:, 1:]
        net = self.maxpool_2a(net)
        net = self.conv_2b(net)
        net = self.conv_2c(net)
        net = self.gating(net)
        net = self.maxpool_3a(net)
        net = self.mixed_3c(self.mixed_3b(net))
        net = self.maxpool_4a(net)
        for block in (self.mixed_4b, self.mixed_4c, self.mixed_4d, self.mixed_4e, self.mixed_4f):
            net = block(net)
        net = self.maxpool_5a(net)
        net = self.mixed_5c(self.mixed_5b(net))
        return self.fc(net.mean(dim=(2, 3, 4)))

    def forward_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, max_words] -> joint-space embedding [B, num_classes]."""
        return self.text_module(token_ids)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Same as ``forward_video``."""
        return self.forward_video(video)


def demo_init_(model: S3D) -> S3D:
    """Re-initialise ``model`` in place so random weights give input-dependent embeddings.

    PyTorch's default init shrinks activations layer by layer, so a fresh S3D maps every clip
    to ``fc.bias``; He-normal convolutions and a zero output bias keep the input's signal.
    Used for random demo weights and generated test checkpoints only.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(model.fc.bias)
    return model


class S3DTokenizer:
    """Words -> token ids as the reference does: lower-case, ``[\\w']+`` words, dictionary index + 1.

    Unknown words are skipped; sentences are cut or zero-padded to ``max_words``. Without a
    dictionary (random demo weights only), words are hashed into the vocabulary instead.
    """

    def __init__(
        self, words: Sequence[str] | None, vocab_size: int, max_words: int = MAX_WORDS
    ) -> None:
        self.vocab_size = vocab_size
        self.max_words = max_words
        self.word_to_token: dict[str, int] | None = None
        if words is not None:
            if len(words) + 1 > vocab_size:
                raise ValueError(
                    f"the S3D dictionary has {len(words)} words but the model's word embedding "
                    f"has only {vocab_size} rows; the dictionary and checkpoint do not belong together"
                )
            self.word_to_token = {str(w): i + 1 for i, w in enumerate(words)}

    def _token(self, word: str) -> int | None:
        if self.word_to_token is None:
            return 1 + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - 1)
        return self.word_to_token.get(word)

    def __call__(self, sentences: Sequence[str]) -> torch.Tensor:
        """Token ids [len(sentences), max_words] (int64, 0 = padding)."""
        ids = torch.zeros((len(sentences), self.max_words), dtype=torch.long)
        for row, sentence in enumerate(sentences):
            tokens = [t for w in _WORD_RE.findall(str(sentence).lower()) if (t := self._token(w))]
            tokens = tokens[: self.max_words]
            if tokens:
                ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids


def load_s3d_dictionary(path: str | Path) -> list[str]:
    """Word list of ``s3d_dict.npy`` (a 1-D array of words; token id = position + 1)."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError:
        # Object arrays need pickle; the dictionary is a local file the operator configured.
        array = np.load(path, allow_pickle=True)
    if array.ndim != 1:
        raise ValueError(f"{path}: expected a 1-D array of words, got shape {array.shape}")
    return [str(w) for w in array.tolist()]
