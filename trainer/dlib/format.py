"""Read dlib's ``serialize()`` format and the metric-learning ResNet stored in it.

The face-recognition weights (``dlib_face_recognition_resnet_model_v1.dat``) are a dlib
``anet_type`` written with ``serialize()``.  This module turns such a file into plain,
typed records so the network can be rebuilt without dlib.  Layout of the file:

* ``add_loss_layer``: int version 1, the loss details, then the whole sub-network.
* Each ``add_layer`` writes its version, then *its sub-network*, then its own details
  and a trailer (3 bools, 3 tensors, and for version 3 an ``unsigned`` sample expansion
  factor).  So all versions come first, outermost first, then the input layer, then
  the layer details from the input side up.  ``add_tag_layer`` / ``add_skip_layer``
  write only ``int 1`` and their sub-network: the file does not say which of the two
  it is, nor the tag id (``add_prev_`` stores no id either).  Those are kept here as
  :class:`TagOrSkip` markers; the network template resolves them.

Primitives: integers are one control byte (byte count, ``0x80`` if negative) plus that
many little-endian bytes; floats and doubles are an int64 mantissa and an int16
exponent (``mantissa * 2**exponent``; exponent 32000/32001/32002 mean inf/-inf/nan);
strings are a length then the bytes; bools are the ASCII bytes ``'1'``/``'0'``;
tensors are ``int 2, n, k, nr, nc`` then raw little-endian float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trainer.errors import DlibFormatError

__all__ = [
    "AddPrev", "Affine", "AvgPool", "Conv", "DlibNetwork", "DlibReader", "Fc",
    "InputRGB", "Layer", "LossMetric", "MaxPool", "Relu", "TagOrSkip",
    "parse_dat", "read_dat",
]

Float32Array = NDArray[np.float32]


@dataclass(frozen=True)
class InputRGB:
    """``input_rgb_image_sized``: dlib feeds ``(pixel - mean) / 256`` per RGB channel."""

    mean_rgb: tuple[float, float, float]
    rows: int
    cols: int


@dataclass(frozen=True)
class Conv:
    """``con_``: cross-correlation, weight ``[out, in, kh, kw]``, (y, x) stride/padding."""

    weight: Float32Array
    bias: Float32Array
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Affine:
    """``affine_``: ``x * gamma + beta``; per channel when dlib's mode is CONV_MODE."""

    gamma: Float32Array
    beta: Float32Array
    per_channel: bool


@dataclass(frozen=True)
class Relu:
    """``relu_``."""


@dataclass(frozen=True)
class _Pool:
    """A pooling window, stride and padding, each as (y, x)."""

    window: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


class MaxPool(_Pool):
    """``max_pool_``."""


class AvgPool(_Pool):
    """``avg_pool_``: a window of (0, 0) means the whole input (``avg_pool_everything``)."""


@dataclass(frozen=True)
class AddPrev:
    """``add_prev_``: sum with a tagged earlier output (tag id is not stored)."""


@dataclass(frozen=True)
class TagOrSkip:
    """An ``add_tag_layer`` or ``add_skip_layer``; the file does not say which."""


@dataclass(frozen=True)
class Fc:
    """``fc_``: ``y = x @ weight.T (+ bias)``, weight ``[out, in]``."""

    weight: Float32Array
    bias: Float32Array | None


@dataclass(frozen=True)
class LossMetric:
    """``loss_metric_``: training margin and the same-person distance threshold."""

    margin: float
    distance_threshold: float


Layer = Conv | Affine | Relu | MaxPool | AvgPool | AddPrev | TagOrSkip | Fc


@dataclass(frozen=True)
class DlibNetwork:
    """A parsed network: ``layers`` run from the input side to the output."""

    loss: LossMetric
    input: InputRGB
    layers: tuple[Layer, ...]


class DlibReader:
    """Reads dlib serialization primitives from bytes; errors name the byte offset."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def error(self, message: str, at: int | None = None) -> DlibFormatError:
        return DlibFormatError(f"{message} at byte offset {self.pos if at is None else at}")

    def take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            left = len(self.data) - self.pos
            raise self.error(f"truncated file: need {count} bytes, {left} left")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def read_int(self, max_bytes: int = 8, *, signed: bool = True) -> int:
        at = self.pos
        head = self.take(1)[0]
        size, negative = head & 0x0F, bool(head & 0x80)
        if head & 0x70 or size == 0 or size > max_bytes or (negative and not signed):
            raise self.error(f"bad integer control byte 0x{head:02x}", at)
        value = int.from_bytes(self.take(size), "little")
        return -value if negative else value

    def read_uint(self, max_bytes: int = 8) -> int:
        return self.read_int(max_bytes, signed=False)

    def read_float(self) -> float:
        """A float or double: ``mantissa * 2**exponent`` (special exponents: inf/nan)."""
        mantissa = self.read_int(8)
        exponent = self.read_int(2)
        if exponent == 32000:  # float_details::is_inf
            return math.inf
        if exponent == 32001:  # is_ninf
            return -math.inf
        if exponent >= 32002:  # is_nan
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def read_string(self) -> str:
        at = self.pos
        raw = self.take(self.read_uint())
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error("string is not ASCII", at) from None

    def read_bool(self) -> bool:
        at = self.pos
        value = self.take(1)
        if value not in (b"0", b"1"):
            raise self.error(f"bad bool byte {value!r}", at)
        return value == b"1"

    def read_shape(self) -> tuple[int, int, int, int]:
        at = self.pos
        n, k, nr, nc = (self.read_int() for _ in range(4))
        if min(n, k, nr, nc) < 0:
            raise self.error(f"negative tensor dimension in {(n, k, nr, nc)}", at)
        return n, k, nr, nc

    def read_tensor(self) -> Float32Array:
        """A ``resizable_tensor`` (version 2) as a float32 array ``[n, k, nr, nc]``."""
        self.expect_version(2, "tensor")
        shape = self.read_shape()
        raw = self.take(4 * math.prod(shape))
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def read_alias_shape(self) -> tuple[int, int, int, int]:
        """An ``alias_tensor`` (version 1): only its shape is stored."""
        self.expect_version(1, "alias_tensor")
        return self.read_shape()

    def expect_version(self, expected: int, what: str) -> None:
        at = self.pos
        found = self.read_int(4)
        if found != expected:
            raise self.error(f"{what}: version {found}, expected {expected}", at)


def _read_conv(r: DlibReader) -> Conv:
    at = r.pos
    params = r.read_tensor().reshape(-1)
    num_filters, rows, cols = r.read_int(), r.read_int(), r.read_int()
    stride = (r.read_int(4), r.read_int(4))
    padding = (r.read_int(4), r.read_int(4))
    filters, biases = r.read_alias_shape(), r.read_alias_shape()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.read_float()
    n_w, n_b = math.prod(filters), math.prod(biases)
    if filters[0] != num_filters or filters[2:] != (rows, cols) or n_b != num_filters \
            or params.size != n_w + n_b or min(stride) < 1:
        raise r.error(f"inconsistent con_ record (filters {filters}, {params.size} params)", at)
    return Conv(params[:n_w].reshape(filters), params[n_w:].copy(), stride, padding)


def _read_affine(r: DlibReader) -> Affine:
    at = r.pos
    params = r.read_tensor().reshape(-1)
    gamma, beta = r.read_alias_shape(), r.read_alias_shape()
    mode = r.read_int(4)
    n = math.prod(gamma)
    if gamma != beta or params.size != 2 * n or mode not in (0, 1):
        raise r.error(f"inconsistent affine_ record (gamma {gamma}, mode {mode})", at)
    shape = gamma[1:2] if mode == 0 else gamma[1:]
    return Affine(params[:n].reshape(shape), params[n:].reshape(shape), per_channel=mode == 0)


def _read_fc(r: DlibReader) -> Fc:
    at = r.pos
    num_outputs, num_inputs = r.read_uint(), r.read_uint()
    params = r.read_tensor().reshape(-1)
    weights, _biases = r.read_alias_shape(), r.read_alias_shape()
    bias_mode = r.read_int(4)  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
    for _ in range(4):
        r.read_float()
    n_w = num_inputs * num_outputs
    expected = n_w + (num_outputs if bias_mode == 0 else 0)
    if weights[:2] != (num_inputs, num_outputs) or bias_mode not in (0, 1) \
            or params.size != expected:
        raise r.error(f"inconsistent fc_ record (weights {weights}, bias mode {bias_mode})", at)
    bias = params[n_w:].copy() if bias_mode == 0 else None
    return Fc(np.ascontiguousarray(params[:n_w].reshape(num_inputs, num_outputs).T), bias)


def _read_pool(r: DlibReader, cls: type[_Pool]) -> _Pool:
    window = (r.read_int(), r.read_int())
    stride = (r.read_int(4), r.read_int(4))
    padding = (r.read_int(4), r.read_int(4))
    return cls(window, stride, padding)


def _read_details(r: DlibReader) -> Layer:
    at = r.pos
    name = r.read_string()
    if name == "con_4":
        return _read_conv(r)
    if name == "affine_":
        return _read_affine(r)
    if name == "relu_":
        return Relu()
    if name == "add_prev_":
        return AddPrev()
    if name == "max_pool_2":
        return _read_pool(r, MaxPool)
    if name == "avg_pool_2":
        return _read_pool(r, AvgPool)
    if name == "fc_2":
        return _read_fc(r)
    raise r.error(f"unsupported layer record {name!r}", at)


def _read_layer(r: DlibReader, version: int) -> Layer:
    """Details plus the ``add_layer`` trailer (setup flags and cached tensors)."""
    layer = _read_details(r)
    for _ in range(3):
        r.read_bool()
    for _ in range(3):  # x_grad, cached_output, params_grad/grad_final: unused
        r.read_tensor()
    if version == 3:
        r.read_uint(4)  # sample expansion factor
    return layer


def _read_input(r: DlibReader) -> InputRGB:
    at = r.pos
    name = r.read_string()
    if name != "input_rgb_image_sized":
        raise r.error(f"unsupported input layer {name!r}", at)
    mean = (r.read_float(), r.read_float(), r.read_float())
    return InputRGB(mean, r.read_uint(), r.read_uint())


def _read_loss(r: DlibReader) -> LossMetric:
    at = r.pos
    name = r.read_string()
    if name != "loss_metric_2":
        raise r.error(f"unsupported loss layer {name!r}", at)
    return LossMetric(margin=r.read_float(), distance_threshold=r.read_float())


def parse_dat(data: bytes) -> DlibNetwork:
    """Parse a serialized ``loss_metric`` network (bytes of a ``.dat`` file)."""
    r = DlibReader(data)
    r.expect_version(1, "add_loss_layer")
    loss = _read_loss(r)
    wrappers: list[int] = []  # add_layer/tag/skip versions, outermost first
    while True:
        at = r.pos
        version = r.read_int(4)
        saved = r.pos
        next_is_version = r.read_int(8, signed=False) in (1, 2, 3)
        r.pos = saved
        if next_is_version and version in (1, 2):
            wrappers.append(version)
        elif not next_is_version and version in (2, 3):
            break  # the add_layer whose sub-network is the input layer
        else:
            raise r.error(f"unexpected layer version {version}", at)
    input_layer = _read_input(r)
    layers = [_read_layer(r, version)]
    for wrapper in reversed(wrappers):
        layers.append(TagOrSkip() if wrapper == 1 else _read_layer(r, wrapper))
    if r.pos != len(data):
        raise r.error(f"{len(data) - r.pos} unexpected trailing bytes")
    return DlibNetwork(loss, input_layer, tuple(layers))


def read_dat(path: Path | str) -> DlibNetwork:
    """Read and parse a dlib ``.dat`` network file."""
    return parse_dat(Path(path).read_bytes())
