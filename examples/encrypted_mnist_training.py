"""Train an MNIST network on secret-shared data and weights (see docs/tutorial_mnist.md).

Thin wrapper around :func:`smpc.demo.main` (also installed as ``smpc-mnist``)::

    python examples/encrypted_mnist_training.py                 # MLP, cross-entropy, 2 parties
    python examples/encrypted_mnist_training.py --model cnn --loss mse --parties 3
    python examples/encrypted_mnist_training.py --distributed   # one OS process per party
"""

from __future__ import annotations

import sys

from smpc.demo import main

if __name__ == "__main__":
    sys.exit(main())
