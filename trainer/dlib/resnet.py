"""dlib's face-recognition ResNet (``anet_type``) rebuilt as a ``torch.nn.Module``.

The weights come from :mod:`trainer.dlib.format`; the topology is the template in
dlib's ``dnn_face_recognition_ex.cpp``, because the file does not store tag ids nor
tell tags from skips.  Records are matched against that template:

* stem: ``con 7x7/2 -> affine -> relu -> max_pool 3x3/2``
* residual block: ``tag1, con, affine, relu, con, affine`` then either ``add_prev1``
  (identity shortcut) or ``tag2, skip1, avg_pool 2x2/2, add_prev2`` (down-sampling
  shortcut: the block input is average-pooled and added to the block output), then relu
* head: ``avg_pool_everything -> fc_no_bias 128``

dlib's ``add_prev`` adds tensors of different sizes: the output takes the larger size
in every dimension and missing values count as zero (top-left aligned).  It happens
here twice: on the shortcut the block input has fewer channels than the block output,
and at 8x8 -> (3x3 conv path, 4x4 pooled path) and 4x4 -> (1x1, 2x2) the spatial sizes
differ because strided convs use no padding ("0 when stride != 1").
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from trainer.dlib.format import (
    AddPrev,
    Affine,
    AvgPool,
    Conv,
    DlibNetwork,
    Fc,
    Layer,
    MaxPool,
    Relu,
    TagOrSkip,
    read_dat,
)
from trainer.errors import DlibFormatError

__all__ = ["DlibResNet"]

_L = TypeVar("_L", bound=Layer)


def _conv(rec: Conv) -> nn.Conv2d:
    out_ch, in_ch, kh, kw = rec.weight.shape
    conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride=rec.stride, padding=rec.padding)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(rec.weight))
        conv.bias.copy_(torch.from_numpy(rec.bias))
    return conv


class _ChannelAffine(nn.Module):
    """dlib ``affine_`` in conv mode: ``x * gamma[c] + beta[c]`` (batch norm, frozen)."""

    def __init__(self, rec: Affine) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.from_numpy(rec.gamma.copy()).view(1, -1, 1, 1))
        self.beta = nn.Parameter(torch.from_numpy(rec.beta.copy()).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


def _out_hw(hw: tuple[int, int], window: tuple[int, ...], stride: tuple[int, int],
            padding: tuple[int, int]) -> tuple[int, int]:
    """Output (H, W) of a conv or pooling window: ``1 + (n + 2p - k) // s``, as in dlib."""
    h, w = (1 + (n + 2 * p - k) // s
            for n, k, s, p in zip(hw, window, stride, padding, strict=True))
    return h, w


def _zero_pads(shape: tuple[int, int, int], target: tuple[int, int, int]) -> tuple[int, ...]:
    """``F.pad`` amounts that grow a (C, H, W) tensor to ``target`` at the far ends."""
    (c, h, w), (tc, th, tw) = shape, target
    return (0, tw - w, 0, th - h, 0, tc - c)


class _ResidualBlock(nn.Module):
    """``relu(add_prev(block(x), x or avg_pool(x)))`` as in dlib's ``ares``/``ares_down``.

    dlib's ``add_prev`` sums tensors of different (C, H, W) by zero-filling the smaller
    one up to the larger size; the pads are computed once for the fixed input size.
    """

    def __init__(self, convs: tuple[Conv, Conv], affines: tuple[Affine, Affine],
                 shortcut_pool: AvgPool | None, in_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv(convs[0]), _conv(convs[1])
        self.affine1, self.affine2 = _ChannelAffine(affines[0]), _ChannelAffine(affines[1])
        self.shortcut_pool = None if shortcut_pool is None else _avg_pool(shortcut_pool)
        hw = in_shape[1:]
        for conv in convs:
            hw = _out_hw(hw, conv.weight.shape[2:], conv.stride, conv.padding)
        main = (convs[1].weight.shape[0], *hw)
        short = in_shape
        if shortcut_pool is not None:
            short = (in_shape[0], *_out_hw(in_shape[1:], shortcut_pool.window,
                                           shortcut_pool.stride, shortcut_pool.padding))
        c, h, w = (max(a, b) for a, b in zip(main, short, strict=True))
        self.out_shape = (c, h, w)
        self.pad_main = _zero_pads(main, self.out_shape)
        self.pad_shortcut = _zero_pads(short, self.out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = x if self.shortcut_pool is None else self.shortcut_pool(x)
        if any(self.pad_main):
            y = F.pad(y, self.pad_main)
        if any(self.pad_shortcut):
            shortcut = F.pad(shortcut, self.pad_shortcut)
        return F.relu(y + shortcut)


def _avg_pool(rec: AvgPool) -> nn.AvgPool2d:
    # dlib averages only the in-image part of a window (subm_clipped).
    return nn.AvgPool2d(rec.window, rec.stride, rec.padding, count_include_pad=False)


class _Records:
    """Consumes layer records in order and checks them against the expected template."""

    def __init__(self, layers: tuple[Layer, ...]) -> None:
        self.layers, self.index = layers, 0

    def peek(self) -> Layer | None:
        return self.layers[self.index] if self.index < len(self.layers) else None

    def take(self, kind: type[_L]) -> _L:
        rec = self.peek()
        if not isinstance(rec, kind):
            found = type(rec).__name__ if rec is not None else "end of network"
            raise DlibFormatError(
                f"layer record {self.index}: expected {kind.__name__}, found {found}")
        self.index += 1
        return rec


class DlibResNet(nn.Module):
    """dlib's 29-conv metric ResNet: ``[N,3,150,150]`` normalised RGB -> raw ``[N,128]``.

    Input is ``(pixel - input_mean_rgb) * input_scale`` in RGB order, NCHW, float32;
    the output is the un-normalised descriptor exactly as dlib computes it.
    """

    input_size: int = 150

    def __init__(self, network: DlibNetwork) -> None:
        super().__init__()
        recs = _Records(network.layers)
        stem_conv = recs.take(Conv)
        stem_affine = recs.take(Affine)
        recs.take(Relu)
        pool = recs.take(MaxPool)
        if not stem_affine.per_channel:
            raise DlibFormatError("layer record 1: affine_ is not in conv mode")
        self.stem = nn.Sequential(
            _conv(stem_conv), _ChannelAffine(stem_affine), nn.ReLU(),
            nn.MaxPool2d(pool.window, pool.stride, pool.padding),
        )
        hw = _out_hw((network.input.rows, network.input.cols), stem_conv.weight.shape[2:],
                     stem_conv.stride, stem_conv.padding)
        hw = _out_hw(hw, pool.window, pool.stride, pool.padding)
        self.blocks = nn.Sequential(*self._blocks(recs, (stem_conv.weight.shape[0], *hw)))
        head_pool = recs.take(AvgPool)
        fc = recs.take(Fc)
        if head_pool.window != (0, 0) or recs.peek() is not None:
            raise DlibFormatError(
                f"layer record {recs.index}: expected avg_pool_everything, then the end")
        self.fc = nn.Linear(fc.weight.shape[1], fc.weight.shape[0], bias=fc.bias is not None)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(fc.weight))
            if fc.bias is not None:
                self.fc.bias.copy_(torch.from_numpy(fc.bias))
        self.input_mean_rgb: tuple[float, float, float] = network.input.mean_rgb
        self.input_scale: float = 1.0 / 256.0
        self.input_size = network.input.rows
        self.distance_threshold: float = network.loss.distance_threshold
        self.embedding_dim: int = fc.weight.shape[0]

    @staticmethod
    def _blocks(recs: _Records, shape: tuple[int, int, int]) -> list[_ResidualBlock]:
        blocks: list[_ResidualBlock] = []
        while isinstance(recs.peek(), TagOrSkip):
            recs.take(TagOrSkip)  # tag1: the block input
            c1, a1 = recs.take(Conv), recs.take(Affine)
            recs.take(Relu)
            c2, a2 = recs.take(Conv), recs.take(Affine)
            shortcut_pool = None
            if isinstance(recs.peek(), TagOrSkip):  # tag2 on the block output, skip1 to its input
                recs.take(TagOrSkip)
                recs.take(TagOrSkip)
                shortcut_pool = recs.take(AvgPool)
            recs.take(AddPrev)
            recs.take(Relu)
            if not (a1.per_channel and a2.per_channel):
                raise DlibFormatError(f"layer record {recs.index}: affine_ is not in conv mode")
            blocks.append(_ResidualBlock((c1, c2), (a1, a2), shortcut_pool, shape))
            shape = blocks[-1].out_shape
        return blocks

    @classmethod
    def from_dat(cls, path: Path | str) -> DlibResNet:
        """Build the network from ``dlib_face_recognition_resnet_model_v1.dat``."""
        return cls(read_dat(path)).eval()

    def normalise(self, chips_rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
        """``[N,H,W,3]`` uint8 RGB chips -> ``[N,3,H,W]`` float32, as dlib's input layer."""
        mean = np.asarray(self.input_mean_rgb, dtype=np.float32)
        x = (chips_rgb.astype(np.float32) - mean) * np.float32(self.input_scale)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(chips))
        return self.fc(x.mean(dim=(2, 3)))
