"""The LSTM cell that links the stages of Lin et al., "Face Image Inpainting with Generative
Adversarial Network" (stepwise completion), equations 1-7:

    i = sigmoid(W_i x + U_i h + b_i)        input gate
    f = sigmoid(W_f x + U_f h + b_f)        forget gate
    o = sigmoid(W_o x + U_o h + b_o)        output gate
    g = tanh(W_g x + U_g h + b_g)           cell candidate
    c' = f * c + i * g                      new cell state
    h' = o * tanh(c')                       new hidden state

Explicit weights (one Linear over [x, h] for the four gates) so the gates are readable; the
arithmetic is that of ``torch.nn.LSTMCell`` (tests check equality after copying weights), which
orders its gates i, f, g, o.
"""
from __future__ import annotations

import torch
from torch import nn

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c)


class LSTMCell(nn.Module):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.gates = nn.Linear(input_size + hidden_size, 4 * hidden_size)
        bound = hidden_size ** -0.5  # nn.LSTMCell's initialisation
        nn.init.uniform_(self.gates.weight, -bound, bound)
        nn.init.uniform_(self.gates.bias, -bound, bound)

    def zero_state(self, x: torch.Tensor) -> LSTMState:
        zeros = x.new_zeros(x.shape[0], self.hidden_size)
        return zeros, zeros

    def forward(self, x: torch.Tensor, state: LSTMState | None = None) -> LSTMState:
        h, c = self.zero_state(x) if state is None else state
        input_gate, forget_gate, candidate, output_gate = self.gates(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(candidate)
        h = torch.sigmoid(output_gate) * torch.tanh(c)
        return h, c

    def load_from_torch(self, cell: nn.LSTMCell) -> None:
        """Copy an ``nn.LSTMCell``'s weights (same gate order i, f, g, o)."""
        with torch.no_grad():
            self.gates.weight.copy_(torch.cat([cell.weight_ih, cell.weight_hh], 1))
            self.gates.bias.copy_(cell.bias_ih + cell.bias_hh)
