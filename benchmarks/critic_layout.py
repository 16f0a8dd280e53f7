"""Twin-critic layouts on this device: one batched ``baddbmm`` against per-member matrix products.

The twin critic (``networks.EnsembleCritic``) stores E members' weights as ``(E, in, out)``
tensors. This script times forward + backward of one critic evaluation, with the same
parameters, through each way of computing it:

``bmm``     ``torch.baddbmm(bias, x, W)`` on the ``(E, N, in)`` input (the original layout)
``split``   E separate ``torch.addmm(bias[e], x[e], W[e])`` calls, one per member
``split1``  as ``split``, but the first layer's input, which every member shares (the
            state-action pairs), goes through ONE ``mm`` against the members' first-layer
            weights side by side (``(N, in) @ (in, E*out)``), then splits

Shapes: IQL's critic batch (256 rows, 2x256) and CQL's (256 states x 31 actions = 7936
rows, 3x256), halfcheetah sizes (17 + 6 inputs). Each layout runs ``--repeats`` blocks of
``--steps`` forward+backward passes after a warm-up, interleaved (so drifting machine speed
hits all layouts alike); the table gives medians and the ratio to ``bmm``.

    python benchmarks/critic_layout.py --threads 2
    python benchmarks/critic_layout.py --threads 1

Measure on an idle machine.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

LAYOUTS = ("bmm", "split", "split1")


def make_parameters(in_dim: int, hidden: list[int], ensemble: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dims = [in_dim, *hidden, 1]
    layers = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        weight = (torch.randn(ensemble, d_in, d_out, generator=generator) / d_in ** 0.5).requires_grad_()
        bias = torch.zeros(ensemble, 1, d_out).requires_grad_()
        layers.append((weight, bias))
    return layers


def forward(layout: str, layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """(N, in) shared input -> (E, N) outputs through the given layout."""
    ensemble = layers[0][0].shape[0]
    last = len(layers) - 1
    if layout == "bmm":
        h = x.unsqueeze(0).expand(ensemble, *x.shape)
        for index, (weight, bias) in enumerate(layers):
            h = torch.baddbmm(bias, h, weight)
            if index < last:
                h = torch.relu(h)
        return h.squeeze(-1)
    if layout == "split":
        outs = []
        for member in range(ensemble):
            h = x
            for index, (weight, bias) in enumerate(layers):
                h = torch.addmm(bias[member], h, weight[member])
                if index < last:
                    h = torch.relu(h)
            outs.append(h.squeeze(-1))
        return torch.stack(outs)
    if layout == "split1":
        weight0, bias0 = layers[0]
        width = weight0.shape[-1]
        wide = torch.addmm(bias0.permute(1, 0, 2).reshape(1, -1), x, weight0.permute(1, 0, 2).reshape(weight0.shape[1], -1))
        outs = []
        for member in range(ensemble):
            h = torch.relu(wide[:, member * width:(member + 1) * width])
            for index, (weight, bias) in enumerate(layers[1:], start=1):
                h = torch.addmm(bias[member], h, weight[member])
                if index < last:
                    h = torch.relu(h)
            outs.append(h.squeeze(-1))
        return torch.stack(outs)
    raise ValueError(layout)


def time_block(fn: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    cases = {"IQL critic (256 rows, 2x256)": (256, [256, 256]), "CQL critic (7936 rows, 3x256)": (7936, [256, 256, 256])}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| case | layout | passes/s (median) | x bmm | max abs diff vs bmm (forward) |")
    print("|---|---|---|---|---|")
    for name, (rows, hidden) in cases.items():
        layers = make_parameters(23, hidden, 2, generator)
        x = torch.randn(rows, 23, generator=generator)
        reference = forward("bmm", layers, x).detach()

        def step(layout: str) -> Callable[[], None]:
            def run() -> None:
                out = forward(layout, layers, x)
                out.square().mean().backward()
                for weight, bias in layers:
                    weight.grad = bias.grad = None
            return run

        steps = max(2, args.steps if rows < 1000 else args.steps // 4)
        rates: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        for layout in LAYOUTS:
            time_block(step(layout), 2)
        for _ in range(args.repeats):
            for layout in LAYOUTS:
                rates[layout].append(time_block(step(layout), steps))
        base = statistics.median(rates["bmm"])
        for layout in LAYOUTS:
            diff = (forward(layout, layers, x).detach() - reference).abs().max().item()
            rate = statistics.median(rates[layout])
            print(f"| {name} | {layout} | {rate:.1f} | {rate / base:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
