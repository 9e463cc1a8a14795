"""Client: local training, evaluation with any loss form, input validation."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fl

_CE_FORMS: dict[str, Callable[[], fl.client.LossFn]] = {
    "function": lambda: nn.functional.cross_entropy,
    "module": lambda: nn.CrossEntropyLoss(),
    "lambda": lambda: lambda out, y: nn.functional.cross_entropy(out, y),
}


@settings(max_examples=10)
@given(
    st.sampled_from(sorted(_CE_FORMS)),
    st.integers(1, 40),
    st.integers(2, 5),
    st.integers(1, 16),
    st.integers(0, 10_000),
)
def test_evaluate_reports_accuracy_for_every_loss_form(
    form: str, n: int, classes: int, batch_size: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(3, classes)
    loss, acc = fl.evaluate_model(model, x, y, _CE_FORMS[form](), batch_size=batch_size)
    with torch.no_grad():
        out = model(x)
    assert acc == pytest.approx(float((out.argmax(1) == y).double().mean()))
    assert loss == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-5)


def test_nll_loss_module_and_custom_losses_report_accuracy() -> None:
    x, y = torch.randn(30, 4), torch.randint(3, (30,))
    model = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=1))
    _, a = fl.evaluate_model(model, x, y, nn.NLLLoss())
    _, b = fl.evaluate_model(model, x, y, nn.functional.nll_loss)
    assert not math.isnan(a) and a == b
    # regression targets: accuracy is undefined (NaN), the loss is not
    loss, acc = fl.evaluate_model(nn.Linear(4, 1), x, torch.randn(30, 1), nn.MSELoss())
    assert math.isfinite(loss) and math.isnan(acc)


def test_server_with_a_loss_module_reports_finite_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(1)
    part = fl.partition(y[:90], 3, seed=0)
    ce = nn.CrossEntropyLoss()
    clients = fl.make_clients(part, x[:90], y[:90], loss_fn=ce)
    torch.manual_seed(0)
    h = fl.run_simulation(
        nn.Linear(5, 3),
        clients,
        num_rounds=3,
        loss_fn=ce,
        test_data=(x[90:], y[90:]),
        strategy=fl.FedAvg(lr=0.2),
    )
    assert all(math.isfinite(a) for a in h.accuracy) and h.accuracy[-1] > 0.5
    assert all(math.isfinite(c.evaluate(nn.Linear(5, 3))[1]) for c in clients)


def test_evaluate_restores_the_training_mode() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.eval()
    fl.evaluate_model(model, torch.randn(4, 2), torch.randint(2, (4,)))
    assert not model.training
    model.train()
    fl.evaluate_model(model, torch.randn(4, 2), torch.randint(2, (4,)))
    assert model.training


def test_client_id_must_be_an_int() -> None:
    x, y = torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)
    for bad in (2.5, True, -1, "0"):
        with pytest.raises(fl.ConfigError, match="`client_id` must be an int >= 0"):
            fl.Client(bad, x, y)  # type: ignore[arg-type]
    assert fl.Client(np.int64(3), x, y).client_id == 3
