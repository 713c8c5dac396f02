"""EMA of the weights: the update formula, warm-up, checkpoints, exact resume, sampling switch."""
import json

import pytest
import torch

from labutils.config import ConfigError
from labutils.ema import EMA, load_for_sampling
from labutils.files import save_atomic
from labutils.tools.checkpoint import CheckpointDir
from labutils.tools.cli import main


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_update_is_the_moving_average_formula():
    net = _net()
    ema = EMA(net, decay=0.9, warmup=False)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net(torch.randn(5, 3))   # BatchNorm: running stats and the integer counter move
    ema.update(net)
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(ema.shadow[k], 0.9 * before[k] + 0.1 * v, atol=1e-6), k
        else:   # num_batches_tracked is copied, not averaged
            assert torch.equal(ema.shadow[k], v), k
    assert ema.updates == 1



def test_on_step_hook_updates_the_average_after_every_training_step():
    from labutils.training import train
    net = _net()
    ema = EMA(net, decay=0.5, warmup=False)
    loader = [(torch.randn(8, 3), torch.zeros(8)) for _ in range(3)]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    train(net, lambda model, x, y: model(x).pow(2).mean(), loader, opt, 2, progress=False,
          on_step=ema.on_step(net))
    assert ema.updates == 6
    weight = net.state_dict()["0.weight"]
    assert not torch.equal(ema.shadow["0.weight"], weight)   # an average, not a copy

def test_warm_up_follows_the_weights_early_and_caps_at_the_decay():
    ema = EMA(_net(), decay=0.99)
    first = ema.current_decay()
    assert first == pytest.approx(0.1)   # (1 + 0) / (10 + 0)
    ema.updates = 50
    assert first < ema.current_decay() < 0.99
    ema.updates = 10_000
    assert ema.current_decay() == 0.99
    assert EMA(_net(), decay=0.99, warmup=False).current_decay() == 0.99
    with pytest.raises(ValueError):
        EMA(_net(), decay=1.0)


def test_applied_swaps_in_the_average_and_restores_the_weights():
    net = _net()
    ema = EMA(net, decay=0.5, warmup=False)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    own = {k: v.clone() for k, v in net.state_dict().items()}
    ema.update(net)
    with ema.applied(net):
        assert torch.equal(net[0].weight, ema.shadow["0.weight"])
        assert not torch.equal(net[0].weight, own["0.weight"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, own[k]), k


def test_state_round_trips_through_a_weights_only_file(tmp_path):
    net = _net()
    ema = EMA(net, decay=0.95)
    for _ in range(3):
        with torch.no_grad():
            net[0].weight.mul_(1.1)
        ema.update(net)
    save_atomic({"ema": ema.state_dict()}, tmp_path / "e.pt")
    state = torch.load(tmp_path / "e.pt", weights_only=True)["ema"]
    other = EMA(_net(), decay=0.5)
    other.load_state_dict(state)
    assert (other.decay, other.updates, other.warmup) == (0.95, 3, True)
    assert all(torch.equal(other.shadow[k], v) for k, v in ema.shadow.items())
    with pytest.raises(ValueError, match="does not fit"):
        EMA(torch.nn.Linear(2, 2)).load_state_dict(state)


def test_load_for_sampling_prefers_ema_with_a_switch():
    net, other = _net(), _net()
    with torch.no_grad():
        other[0].weight.fill_(7.0)
    state = {"model": net.state_dict(), "ema": EMA(other).state_dict()}
    target = _net()
    assert load_for_sampling(target, state) == "ema"
    assert float(target[0].weight.detach()[0, 0]) == 7.0
    assert load_for_sampling(target, state, use_ema=False) == "raw"
    assert torch.equal(target[0].weight, net[0].weight)
    with pytest.raises(ConfigError, match="no EMA"):
        load_for_sampling(target, {"model": net.state_dict(), "ema": None}, use_ema=True)


def _train(run, epochs, *extra):
    return main(["train", "fmnist-ddpm", "--profile", "ci", "--out", str(run), "--epochs",
                 str(epochs), "--batch-size", "16", "--checkpoint-every", "0", "--sample-every",
                 "0", "--quiet", "--device", "cpu", *extra])


def test_a_resumed_run_ends_with_the_ema_of_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LABUTILS_BF16", "0")   # bitwise equality needs fp32 kernels
    assert _train(tmp_path / "straight", 2, "--ema-decay", "0.9") == 0
    assert _train(tmp_path / "split", 1, "--ema-decay", "0.9") == 0
    assert _train(tmp_path / "split", 2, "--resume") == 0
    _, a = CheckpointDir(tmp_path / "straight" / "checkpoints").latest()
    _, b = CheckpointDir(tmp_path / "split" / "checkpoints").latest()
    assert a["step"] == b["step"] == a["ema"]["updates"] == b["ema"]["updates"]
    assert a["ema"]["decay"] == 0.9
    for k, v in a["ema"]["shadow"].items():
        assert torch.equal(v, b["ema"]["shadow"][k]), k
    # ... and the average is not the raw weights (it really averages).
    assert any(not torch.equal(v, a["model"][k]) for k, v in a["ema"]["shadow"].items()
               if v.is_floating_point())
    # Another decay on resume would silently change the average: refused.
    assert _train(tmp_path / "split", 3, "--resume", "--ema-decay", "0.5") == 2


def test_ema_decay_zero_trains_without_ema_and_sample_says_so(tmp_path, capsys):
    assert _train(tmp_path / "r", 1, "--ema-decay", "0") == 0
    _, state = CheckpointDir(tmp_path / "r" / "checkpoints").latest()
    assert state["ema"] is None
    code = main(["sample", str(tmp_path / "r"), "--n", "2", "--steps", "2", "--ema",
                 "--out", str(tmp_path / "s.png")])
    assert code == 2 and "no EMA" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "r"), "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert "raw weights" in capsys.readouterr().out
