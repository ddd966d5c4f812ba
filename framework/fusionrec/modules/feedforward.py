"""A plain feed-forward network (multi-layer perceptron), the block most components are built from."""

from __future__ import annotations

from torch import Tensor, nn


# N(0, 0.02^2) (BERT's and GPT-2's choice), smaller than nn.Linear's default (~1/sqrt(3 * fan_in), 0.03-0.06
# here): the network starts closer to constant and grows the directions the data supports. Measured:
# MovieLens PLE liked AUC 0.7175 vs 0.7134 with the default (2-3 seeds each); on the generated click
# log no change; the 200k-row quickstart needs ~5 epochs instead of 3 to reach the same test metrics.
WEIGHT_INIT_STD = 0.02


class FeedForward(nn.Sequential):
    """``[B, input_dim] -> [B, output_dim]`` through Linear-ReLU-Dropout per hidden width, weights
    drawn from ``N(0, WEIGHT_INIT_STD^2)``, biases zero.

    With no widths it is the identity and ``output_dim == input_dim``.
    """

    def __init__(self, input_dim: int, widths: list[int], dropout: float = 0.0):
        layers: list[nn.Module] = []
        for width in widths:
            linear = nn.Linear(input_dim, width)
            nn.init.normal_(linear.weight, std=WEIGHT_INIT_STD)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            input_dim = width
        super().__init__(*layers)
        self.output_dim = input_dim

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)
