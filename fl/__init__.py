"""Federated learning on top of ``smpc``: the top layer of the stack.

Public API (see ``docs/fl.md``): partitions, clients and a server loop,
strategies (FedAvg, FedProx, FedAvgM; the adaptive server optimisers FedAdagrad,
FedAdam, FedYogi; FedAMP, personalised), pluggable aggregators (plain, secret
sharing over ``smpc``, pairwise masking with dropout recovery), differential
privacy, federated evaluation, Paillier aggregation (the server holds no key),
vertical partitions (features split among parties, trained on their
secret-shared join), and a networked runtime over ``torch.distributed``.
Importing ``fl`` has no side effects; ``smpc`` is imported only when a
:class:`SecretSharingAggregator` round starts.
"""

from fl.aggregate import fedavg_weights, weighted_mean, weighted_sum
from fl.aggregators import Aggregator, PlainAggregator, SecretSharingAggregator, Stage
from fl.client import Client, evaluate_model
from fl.clipping import Quantizer, clip_by_l2_norm
from fl.dp import DifferentialPrivacy, RdpAccountant, calibrate_noise_multiplier, compute_epsilon
from fl.encrypted import TrainingReport, encrypted_inference, encrypted_training
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
from fl.evaluation import FederatedEvaluation, FederatedMetrics
from fl.fedamp import FedAMP
from fl.paillier import PaillierAggregator, PaillierKeyHolder
from fl.partition import Partition, Scheme, partition
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
