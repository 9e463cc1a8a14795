"""encrypt -> decrypt round trips, forward equivalence, and clear errors."""

from __future__ import annotations

import pytest
import torch

import smpc
import smpc.nn as snn

ULP = 2.0**-16


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, tol: float = ULP) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k].float(), sb[k].float(), atol=tol, rtol=0, msg=k)


def _lenet() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 1 * 1, 10),
    )


class Net(torch.nn.Module):
    """A plain Module with a custom forward (traced with torch.fx)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.relu(self.fc1(x.view(-1, 12)))
        return self.fc2(h) + 0.5 * h.sum(1, keepdim=True)


@pytest.mark.parametrize("world_size", [2, 3])
def test_round_trip_is_exact_up_to_encoding(world_size: int) -> None:
    torch.manual_seed(0)
    for model in (
        torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
        _lenet(),
        Net(),
    ):
        with smpc.Session(world_size) as sess:
            back = snn.encrypt(model, sess).decrypt()
        assert type(back) is type(model)
        _same_weights(back, model, tol=ULP / 2)


def test_forward_matches_torch() -> None:
    torch.manual_seed(1)
    cases = [
        (_lenet(), torch.rand(2, 1, 12, 12)),
        (Net(), torch.randn(3, 3, 4)),
        (
            torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Dropout(0.3), torch.nn.ReLU()),
            torch.randn(4, 6),
        ),
    ]
    for model, x in cases:
        model.eval()
        with smpc.Session(2) as sess:
            enc = snn.encrypt(model, sess)
            got = enc(sess.share(x)).reveal()
        with torch.no_grad():
            want = model(x)
        torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-3)


def test_batchnorm_folds_and_standalone() -> None:
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.BatchNorm1d(3 * 4 * 4),
        torch.nn.Linear(48, 2),
    )
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(2, 2, 6, 6)
    with smpc.Session(2) as sess:
        enc = snn.encrypt(model, sess)
        assert isinstance(enc[1], snn.Identity)  # folded into the conv
        assert isinstance(enc[4], snn.BatchNorm)  # nothing to fold into
        got = enc(sess.share(x)).reveal()
        back = enc.decrypt()
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), atol=5e-3, rtol=1e-3)
        torch.testing.assert_close(back.eval()(x), model(x), atol=5e-3, rtol=1e-3)


def test_unsupported_layer_is_named() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.LSTM(4, 4), torch.nn.Sequential(torch.nn.GELU())
    )
    with smpc.Session(2) as sess, pytest.raises(smpc.UnsupportedModuleError) as err:
        snn.encrypt(model, sess)
    msg = str(err.value)
    assert "1 (LSTM)" in msg and "2.0 (GELU)" in msg and "Linear" in msg


def test_unsupported_function_in_forward_is_named() -> None:
    class Bad(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.gelu(self.fc(x))

    with smpc.Session(2) as sess, pytest.raises(smpc.UnsupportedModuleError, match="gelu"):
        snn.encrypt(Bad(), sess)


def test_unsupported_configuration() -> None:
    with smpc.Session(2) as sess, pytest.raises(smpc.UnsupportedModuleError, match="padding"):
        snn.encrypt(torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding_mode="circular")), sess)


def test_wrong_input_shape() -> None:
    with smpc.Session(2) as sess:
        enc = snn.encrypt(torch.nn.Sequential(torch.nn.Linear(5, 2)), sess)
        with pytest.raises(smpc.ShapeError, match=r"\(\.\.\., 5\)"):
            enc(sess.share(torch.ones(3, 4)))
        conv = snn.encrypt(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)), sess)
        with pytest.raises(smpc.ShapeError, match="Conv2d"):
            conv(sess.share(torch.ones(1, 1, 5, 5)))


def test_bad_arguments() -> None:
    with smpc.Session(2) as sess:
        with pytest.raises(TypeError, match="torch.nn.Module"):
            snn.encrypt("not a model", sess)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Session"):
            snn.encrypt(torch.nn.Linear(2, 2), None)  # type: ignore[arg-type]


def test_module_api() -> None:
    with smpc.Session(2) as sess:
        enc = snn.encrypt(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()), sess)
        names = [n for n, _ in enc.named_parameters()]
        assert names == ["0.weight", "0.bias"]
        assert all(p.requires_grad for p in enc.parameters())
        assert "Linear(in_features=3" in repr(enc)
        assert not enc.eval().training and enc.train().training
        lin = snn.Linear(3, 2, session=sess)
        assert tuple(lin.weight.shape) == (2, 3)


def test_train_mode_batchnorm_is_converted_not_folded() -> None:
    """A train-mode BatchNorm (torch's default) trains with batch statistics: it is
    converted to smpc.nn.BatchNorm (never folded, which would freeze it) and, like
    torch's, uses batch statistics and updates its running ones."""
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU())
    x = torch.randn(8, 3)
    with smpc.Session(2) as sess:
        enc = snn.encrypt(model, sess)
        assert isinstance(enc[1], snn.BatchNorm) and enc[1].training
        got = enc(sess.share(x)).reveal()
        want = model(x).detach()  # also updates torch's running statistics
        torch.testing.assert_close(got, want, atol=5e-3, rtol=0)
        back = enc.decrypt()
    assert back.training
    torch.testing.assert_close(back[1].running_mean, model[1].running_mean, atol=1e-3, rtol=0)
    torch.testing.assert_close(back[1].running_var, model[1].running_var, atol=1e-3, rtol=0)


def test_frozen_batchnorm_keeps_its_eval_mode_when_the_model_trains() -> None:
    """A standalone eval-mode BatchNorm inside a train-mode model (a frozen batch
    norm, as when fine-tuning) stays in eval mode, as in torch; switched to train
    mode, it uses batch statistics as torch does."""
    torch.manual_seed(5)
    bn = torch.nn.BatchNorm1d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    model = torch.nn.Sequential(torch.nn.ReLU(), bn.eval(), torch.nn.Linear(4, 2))
    x = torch.randn(6, 4)
    with smpc.Session(2) as sess:
        enc = snn.encrypt(model, sess)
        assert enc.training and not enc[1].training
        got = enc(sess.share(x)).reveal()
        torch.testing.assert_close(got, model(x).detach(), atol=2e-3, rtol=1e-3)
        enc[1].train()
        bn.train()
        got = enc(sess.share(x)).reveal()
        torch.testing.assert_close(got, model(x).detach(), atol=5e-3, rtol=1e-3)
