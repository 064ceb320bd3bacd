"""ConvLSTM encoder–forecaster (Shi et al., NeurIPS 2015) for video prediction.

The baseline of Su et al., NeurIPS 2020, Sec. 6 / Table 3 ("Conv-LSTM"): a stack of
ConvLSTM cells, grouped in blocks with skip connections between blocks, reads the
input frames and then forecasts by feeding back its own predictions (one shared
stack encodes and forecasts). ARMA-LSTM is this network passed through
:func:`arma_plugin.armafy`, which turns every cell's gate convolution into an ARMA
layer; the 1x1 output head is not spatial and stays a plain conv.

With the defaults (4 blocks of 3 cells, 32 hidden channels, skip stride 2) the
network has the paper's sizes: 0.887M parameters with 3x3 gate convs, 2.462M
with 5x5, and 6,144 more (12 gate convs x 128 channels x 4 AR taps) after
``armafy`` with a 3x3 AR filter (the paper prints 0.893M).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..validation import check_positive_int


class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell: a single ``gates`` conv on ``[x, h]`` gives the i, f, o, g gates.

    ``c' = f * c + i * g``, ``h' = o * tanh(c')`` (Shi et al. 2015, eq. 3, without peepholes).
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3,
                 dilation: int = 1, bias: bool = True) -> None:
        super().__init__()
        if check_positive_int("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1 (1, 3, 5, ...), got {kernel_size!r}")
        check_positive_int("dilation", dilation)
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                               padding=dilation * (kernel_size - 1) // 2, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, C_in, H, W]``; ``state`` ``(h, c)`` or ``None`` (zeros) → new ``(h, c)``."""
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[-2:])
            state = (zeros, zeros)
        h, c = state
        i, f, o, g = self.gates(torch.cat((x, h), dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTMNet(nn.Module):
    """Stacked ConvLSTM that reads ``T_in`` frames and predicts the following ones.

    Args:
        in_channels: channels of a frame (1 for Moving-MNIST).
        hidden_channels: hidden channels of each block's cells.
        layers_per_block: number of cells in each block (same length as ``hidden_channels``).
        skip_stride: block ``b`` also receives the output of block ``b - 1 - skip_stride``
            (and the head that of the block ``skip_stride`` before the last); ``None``: no skips.
        kernel_size, dilation: of every gate conv (Table 3: 3, 5, or 3 with dilation 2).
        output_sigmoid: squash predictions into ``(0, 1)``.
    """

    def __init__(self, in_channels: int = 1, hidden_channels: Sequence[int] = (32, 32, 32, 32),
                 layers_per_block: Sequence[int] = (3, 3, 3, 3), skip_stride: int | None = 2,
                 kernel_size: int = 3, dilation: int = 1, output_sigmoid: bool = False) -> None:
        super().__init__()
        hidden_channels, layers_per_block = list(hidden_channels), list(layers_per_block)
        if not hidden_channels or len(hidden_channels) != len(layers_per_block):
            raise ValueError(f"hidden_channels and layers_per_block must be non-empty and of equal length, "
                             f"got {hidden_channels} and {layers_per_block}")
        if min(hidden_channels) < 1 or min(layers_per_block) < 1:
            raise ValueError(f"hidden_channels and layers_per_block must be positive, "
                             f"got {hidden_channels} and {layers_per_block}")
        if skip_stride is not None and skip_stride < 1:
            raise ValueError(f"skip_stride must be None or an integer >= 1, got {skip_stride!r}")
        self.hidden_channels, self.layers_per_block = hidden_channels, layers_per_block
        self.skip_stride = skip_stride
        self.output_sigmoid = output_sigmoid
        self.blocks = nn.ModuleList()
        for b, (hidden, depth) in enumerate(zip(hidden_channels, layers_per_block)):
            channels = in_channels if b == 0 else self._merged_channels(b - 1)
            cells = []
            for _ in range(depth):
                cells.append(ConvLSTMCell(channels, hidden, kernel_size, dilation))
                channels = hidden
            self.blocks.append(nn.ModuleList(cells))
        self.head = nn.Conv2d(self._merged_channels(len(hidden_channels) - 1), in_channels, 1)

    def _skip_source(self, b: int) -> int | None:
        """Index of the block whose output is concatenated to block ``b``'s output, if any."""
        if self.skip_stride is None or b - self.skip_stride < 0:
            return None
        return b - self.skip_stride

    def _merged_channels(self, b: int) -> int:
        skip = self._skip_source(b)
        return self.hidden_channels[b] + (0 if skip is None else self.hidden_channels[skip])

    def step(self, frame: torch.Tensor, states: list | None) -> tuple[torch.Tensor, list]:
        """One time step: ``frame`` ``[B, C, H, W]`` → (prediction of the next frame, new states)."""
        states = states if states is not None else [[None] * len(cells) for cells in self.blocks]
        outputs, x = [], frame
        for b, cells in enumerate(self.blocks):
            for layer, cell in enumerate(cells):
                states[b][layer] = cell(x, states[b][layer])
                x = states[b][layer][0]
            outputs.append(x)
            skip = self._skip_source(b)
            if skip is not None:
                x = torch.cat((x, outputs[skip]), dim=1)
        prediction = self.head(x)
        return (torch.sigmoid(prediction) if self.output_sigmoid else prediction), states

    def forward(self, inputs: torch.Tensor, future_frames: int = 10,
                output_frames: int | None = None) -> torch.Tensor:
        """Predict ``future_frames`` frames after ``inputs`` ``[B, T_in, C, H, W]``.

        While forecasting, each step's input is the previous prediction. Returns the last
        ``output_frames`` one-step predictions ``[B, output_frames, C, H, W]``: by default the
        ``future_frames`` forecasts; up to ``T_in - 1 + future_frames`` to include the
        next-frame predictions made while reading the inputs (the paper trains on all 19).
        """
        if inputs.dim() != 5:
            raise ValueError(f"inputs must be [B, T_in, C, H, W], got shape {tuple(inputs.shape)}")
        total = inputs.shape[1] - 1 + future_frames
        output_frames = future_frames if output_frames is None else output_frames
        if future_frames < 1 or not 1 <= output_frames <= total:
            raise ValueError(f"need future_frames >= 1 and 1 <= output_frames <= T_in - 1 + future_frames "
                             f"= {total}, got future_frames={future_frames}, output_frames={output_frames}")
        predictions, states = [], None
        for t in range(total):
            frame = inputs[:, t] if t < inputs.shape[1] else predictions[-1]
            prediction, states = self.step(frame, states)
            predictions.append(prediction)
        return torch.stack(predictions[-output_frames:], dim=1)
