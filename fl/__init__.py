"""Federated learning on top of ``smpc``: the top layer of the stack.

Public API (see ``docs/fl.md``): partitions, clients and a server loop,
strategies (FedAvg, FedProx, FedAvgM; the adaptive server optimisers FedAdagrad,
FedAdam, FedYogi; FedAMP, personalised), pluggable aggregators (plain, secret
sharing over ``smpc``, pairwise masking with dropout recovery), differential
privacy, federated evaluation, Paillier aggregation (the server holds no key),
vertical partitions (features split among parties, trained on their
secret-shared join), and a networked runtime over ``torch.distributed``.

Importing ``fl`` has no side effects and loads only :mod:`fl.errors` and
:mod:`fl.partition` (torch and numpy, not ``smpc``): every other public name,
and every submodule (``fl.dp``, ``fl.network``...), is imported on first use
(PEP 562). ``smpc`` is loaded by the first name whose module needs it: DP
(its noise generator is smpc's AES-CTR PRG), hence every aggregator, the server
and simulation loop and federated evaluation; encrypted inference and training,
vertical FL and the networked runtime. Strategies (FedAMP included), clients,
partitions, clipping and quantisation, the record types and the errors do not.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from fl.errors import (
    AggregationError,
    CheckpointError,
    ConfigError,
    FlError,
    InsufficientClientsError,
    NetworkError,
    PrivacyError,
    ProtocolError,
    QuantizationRangeError,
)

# `fl.partition` is both a submodule and a function: imported here, so that a later
# import of the submodule (by fl.client, say) cannot rebind the package's attribute.
from fl.partition import Partition, Scheme, partition

if TYPE_CHECKING:
    from fl.aggregate import fedavg_weights, weighted_mean, weighted_sum
    from fl.aggregators import Aggregator, PlainAggregator, SecretSharingAggregator, Stage
    from fl.client import Client, evaluate_model
    from fl.clipping import Quantizer, clip_by_l2_norm
    from fl.dp import (
        DifferentialPrivacy,
        RdpAccountant,
        calibrate_noise_multiplier,
        compute_epsilon,
    )
    from fl.encrypted import TrainingReport, encrypted_inference, encrypted_training
    from fl.evaluation import FederatedEvaluation, FederatedMetrics
    from fl.fedamp import FedAMP
    from fl.paillier import PaillierAggregator, PaillierKeyHolder
    from fl.secure_aggregation import MaskingAggregator
    from fl.server import DropoutModel, FailurePolicy, Server
    from fl.simulation import make_clients, run_simulation
    from fl.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy
    from fl.types import (
        AggregateResult,
        ClientMetrics,
        ClientUpdate,
        FitConfig,
        History,
        RoundResult,
        plot_histories,
    )
    from fl.vertical import FeaturePartition, partition_features, share_features, vertical_training

# Public name -> the module that defines it, imported on first access.
_LAZY: dict[str, str] = {
    "fedavg_weights": "fl.aggregate",
    "weighted_mean": "fl.aggregate",
    "weighted_sum": "fl.aggregate",
    "Aggregator": "fl.aggregators",
    "PlainAggregator": "fl.aggregators",
    "SecretSharingAggregator": "fl.aggregators",
    "Stage": "fl.aggregators",
    "Client": "fl.client",
    "evaluate_model": "fl.client",
    "Quantizer": "fl.clipping",
    "clip_by_l2_norm": "fl.clipping",
    "DifferentialPrivacy": "fl.dp",
    "RdpAccountant": "fl.dp",
    "calibrate_noise_multiplier": "fl.dp",
    "compute_epsilon": "fl.dp",
    "TrainingReport": "fl.encrypted",
    "encrypted_inference": "fl.encrypted",
    "encrypted_training": "fl.encrypted",
    "FederatedEvaluation": "fl.evaluation",
    "FederatedMetrics": "fl.evaluation",
    "FedAMP": "fl.fedamp",
    "PaillierAggregator": "fl.paillier",
    "PaillierKeyHolder": "fl.paillier",
    "MaskingAggregator": "fl.secure_aggregation",
    "DropoutModel": "fl.server",
    "FailurePolicy": "fl.server",
    "Server": "fl.server",
    "make_clients": "fl.simulation",
    "run_simulation": "fl.simulation",
    "FedAdagrad": "fl.strategy",
    "FedAdam": "fl.strategy",
    "FedAvg": "fl.strategy",
    "FedAvgM": "fl.strategy",
    "FedProx": "fl.strategy",
    "FedYogi": "fl.strategy",
    "Strategy": "fl.strategy",
    "AggregateResult": "fl.types",
    "ClientMetrics": "fl.types",
    "ClientUpdate": "fl.types",
    "FitConfig": "fl.types",
    "History": "fl.types",
    "RoundResult": "fl.types",
    "plot_histories": "fl.types",
    "FeaturePartition": "fl.vertical",
    "partition_features": "fl.vertical",
    "share_features": "fl.vertical",
    "vertical_training": "fl.vertical",
}

__all__ = [
    "encrypted_inference",
    "encrypted_training",
    "TrainingReport",
    "AggregateResult",
    "AggregationError",
    "Aggregator",
    "CheckpointError",
    "Client",
    "ClientMetrics",
    "ClientUpdate",
    "ConfigError",
    "DifferentialPrivacy",
    "DropoutModel",
    "FailurePolicy",
    "FedAMP",
    "FeaturePartition",
    "FederatedEvaluation",
    "FederatedMetrics",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "FitConfig",
    "FlError",
    "History",
    "InsufficientClientsError",
    "MaskingAggregator",
    "NetworkError",
    "PaillierAggregator",
    "PaillierKeyHolder",
    "Partition",
    "PlainAggregator",
    "PrivacyError",
    "ProtocolError",
    "Quantizer",
    "QuantizationRangeError",
    "RdpAccountant",
    "RoundResult",
    "Scheme",
    "SecretSharingAggregator",
    "Server",
    "Stage",
    "Strategy",
    "calibrate_noise_multiplier",
    "clip_by_l2_norm",
    "compute_epsilon",
    "evaluate_model",
    "fedavg_weights",
    "make_clients",
    "partition",
    "partition_features",
    "plot_histories",
    "run_simulation",
    "share_features",
    "vertical_training",
    "weighted_mean",
    "weighted_sum",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module (or a submodule) on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
