"""Two data owners train a regression MLP on Boston housing; models averaged by secret sharing.

The classic tutorial: Alice and Bob each hold half of the Boston housing table
(506 rows, 13 features, shipped with mlxtend). Each round both train the MLP
13-32-24-1 locally, then secret-share their (weighted) updates between two
aggregation parties through ``smpc``; a third party is the session's crypto
provider. Only the average is revealed. The run is repeated with plain
averaging: both end with the same model up to fixed-point precision.

    python examples/secure_aggregation_boston.py [--rounds 30]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fl
from smpc.data import load_boston


def mlp() -> nn.Module:
    """The regression MLP 13-32-24-1 (seeded)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 1)
    )


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error on flattened outputs."""
    return nn.functional.mse_loss(out.reshape(-1), target.reshape(-1))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train with secret sharing and with plain averaging; return test losses."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)

    features, target = load_boston()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(features.shape[0], generator=g)
    train, test = order[:404], order[404:]
    mean, std = features[train].mean(0), features[train].std(0)
    x = (features - mean) / std  # standardised with training statistics only
    y = target / 10.0  # in units of $10k
    alice = fl.Client(0, x[train[:202]], y[train[:202]], loss_fn=mse)
    bob = fl.Client(1, x[train[202:]], y[train[202:]], loss_fn=mse)
    strategy = fl.FedAvg(epochs=1, batch_size=16, lr=0.02)

    results: dict[str, float] = {}
    models: dict[str, nn.Module] = {}
    for name, agg in {
        "secret sharing": fl.SecretSharingAggregator(parties=("alice", "bob"), frac_bits=24),
        "plain": fl.PlainAggregator(),
    }.items():
        model = mlp()
        history = fl.run_simulation(
            model,
            [alice, bob],
            num_rounds=args.rounds,
            strategy=strategy,
            aggregator=agg,
            test_data=(x[test], y[test]),
            loss_fn=mse,
        )
        models[name] = model
        results[name] = history.loss[-1]
        rmse = (history.loss[-1] ** 0.5) * 10
        print(
            f"{name:15s} test MSE {history.loss[-1]:.4f} (RMSE ${rmse:.2f}k) "
            f"after {args.rounds} rounds"
        )
    a = torch.nn.utils.parameters_to_vector(models["secret sharing"].parameters()).detach()
    b = torch.nn.utils.parameters_to_vector(models["plain"].parameters()).detach()
    results["max_weight_difference"] = float((a - b).abs().max())
    print(
        "largest weight difference, secret sharing vs plain: "
        f"{results['max_weight_difference']:.2e}"
    )
    return results


if __name__ == "__main__":
    main()
