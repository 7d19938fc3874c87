"""The training plumbing (eqvae_lib.training): EMA against its closed form, the checkpointer's round trip and
atomicity, the JSONL logger, the lr schedules against their formula (and across a resume), the gradient mean over
two gloo processes, and the data-order rule."""

import json
import math
import os
import pathlib

import pytest
import torch

from eqvae_lib import rng, training
from eqvae_lib.training import (EMA, Checkpointer, CheckpointFormatError, JsonlLogger, load_checkpoint, lr_factor,
                                lr_scheduler, update_ema)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)


def _set(model, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


# ------------------------------------------------------------------------------------------------------------- EMA
def test_ema_equals_its_closed_form():
    torch.manual_seed(0)
    model = _Net().double()
    decay = 0.8
    thetas = [torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])]  # θ_0
    ema = EMA(model, decay)
    for k in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        thetas.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
        ema.update(model)
    t = len(thetas) - 1
    want = decay ** t * thetas[0] + sum((1 - decay) * decay ** (t - k) * thetas[k] for k in range(1, t + 1))
    got = torch.cat([p.reshape(-1) for p in ema.module.parameters()])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_ema_extremes_buffers_and_bad_decay():
    model = _Net()
    _set(model, 1.0)
    keep, follow = EMA(model, 1.0), EMA(model, 0.0)
    _set(model, 3.0)
    with torch.no_grad():
        model.bn.running_mean.fill_(7.0)
    keep.update(model)
    follow.update(model)
    assert all(torch.equal(p, torch.ones_like(p)) for p in keep.module.parameters())  # decay 1: θ_0 exactly
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in follow.module.parameters())  # decay 0: θ_t exactly
    assert torch.equal(keep.module.bn.running_mean, torch.full((2,), 7.0))  # buffers are copied, not averaged
    # the state dict is the plain model's: it loads into a fresh model
    fresh = _Net()
    fresh.load_state_dict(follow.state_dict())
    assert torch.equal(fresh.lin.weight, model.lin.weight)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.5)
    with pytest.raises(ValueError):
        update_ema(keep.module, torch.nn.Linear(3, 2), 0.5)  # not the same architecture


def test_update_ema_agrees_with_the_mul_add_form():
    torch.manual_seed(1)
    a, b = _Net(), _Net()
    ref = [p.detach().clone() for p in a.parameters()]
    update_ema(a, b, 0.999)
    for r, p, q in zip(ref, a.parameters(), b.parameters()):
        torch.testing.assert_close(p, r * 0.999 + q.detach() * 0.001, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_checkpointer_round_trip_envelope_and_latest(tmp_path):
    ck = Checkpointer(tmp_path / "ckpts", "test-v1")
    w = torch.randn(3, 4)
    for step in (5, 10, 20):
        path = ck.save(step, {"w": w * step, "note": "x"}, world=2)
        assert path == tmp_path / "ckpts" / f"step_{step:07d}.pt"
    assert ck.steps() == [5, 10, 20]
    assert ck.latest() == ck.path(20) and ck.latest(max_step=19) == ck.path(10) and ck.latest(max_step=4) is None
    got = ck.load(ck.path(10))
    assert torch.equal(got["w"], w * 10) and got["note"] == "x"
    assert got["format"] == "test-v1" and got["step"] == 10 and got["world_size"] == 2
    assert got["rng_rule"] == rng.RNG_RULE and isinstance(got["git"], str)
    assert ck.load()["step"] == 20  # default: the latest
    # another loop's format, or another world size, is refused with a message naming the file
    with pytest.raises(CheckpointFormatError, match=r"step_0000010\.pt.*delete"):
        load_checkpoint(ck.path(10), "other-v1")
    with pytest.raises(ValueError, match="2 process"):
        ck.load(ck.path(10), world=1)
    torch.save({"w": w}, tmp_path / "old.pt")  # an older kit version's file: no format
    with pytest.raises(CheckpointFormatError, match="older kit"):
        load_checkpoint(tmp_path / "old.pt", "test-v1")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", "test-v1")
    # only rank 0 writes
    assert Checkpointer(tmp_path / "r1", "test-v1", rank=1).save(1, {"w": w}) is None
    assert not (tmp_path / "r1").exists()
    assert Checkpointer(tmp_path / "none", "test-v1").load() is None


def test_checkpointer_single_file_layout_is_replaced(tmp_path):
    ck = Checkpointer(tmp_path, "test-v1", name="checkpoint.pt")
    assert not ck.per_step and ck.latest() is None
    ck.save(1, {"x": torch.tensor(1)})
    ck.save(2, {"x": torch.tensor(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    got = ck.load()
    assert got["step"] == 2 and int(got["x"]) == 2


def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path, "test-v1", name="checkpoint.pt")
    ck.save(1, {"x": torch.arange(1000)})
    real = pathlib.Path.write_bytes

    def killed_half_way(self, data):  # the process dies after writing half of the new file
        real(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_bytes", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        ck.save(2, {"x": torch.arange(1000) * 2})
    monkeypatch.undo()
    got = ck.load()
    assert got["step"] == 1 and torch.equal(got["x"], torch.arange(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


# ------------------------------------------------------------------------------------------------------------ logs
def test_jsonl_logger_lines_truncate_and_rank(tmp_path):
    log = JsonlLogger(tmp_path / "run" / "log.jsonl")
    rec = log.log("train", 1, loss=0.5)
    assert rec == {"kind": "train", "step": 1, "loss": 0.5}
    log.log("eval", 2, eval={"fid": 3.0})
    log.log("train", 3, loss=0.25, partial=True)
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [rec, {"kind": "eval", "step": 2, "eval": {"fid": 3.0}},
                                              {"kind": "train", "step": 3, "loss": 0.25, "partial": True}]
    assert log.read() == [json.loads(x) for x in lines]
    log.truncate(lambda r: r["step"] <= 2)  # a resume from step 2
    log.log("train", 3, loss=0.125)
    log.close()
    assert [(r["step"], r.get("loss")) for r in log.read()] == [(1, 0.5), (2, None), (3, 0.125)]
    # rank > 0 and no path: nothing is written, the record is still returned
    quiet = JsonlLogger(tmp_path / "quiet.jsonl", enabled=False)
    assert quiet.log("train", 1, loss=1.0)["loss"] == 1.0
    quiet.truncate(lambda r: False)
    assert not (tmp_path / "quiet.jsonl").exists()
    assert JsonlLogger(None).log("event", 0, event="start")["event"] == "start"


# --------------------------------------------------------------------------------------------------- lr schedules
def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind,warmup", [("constant", 0), ("constant", 4), ("cosine", 0), ("cosine", 3)])
def test_lr_scheduler_follows_the_formula(kind, warmup):
    total, base = 12, 0.2
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    got = _lrs(lr_scheduler(opt, kind, warmup, total), opt, total + 2)
    for s, lr in enumerate(got):
        if warmup and s < warmup:
            want = base * (s + 1) / warmup
        elif kind == "cosine":
            want = base * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / (total - warmup))))
        else:
            want = base
        assert lr == pytest.approx(want, rel=1e-12, abs=1e-15), (s, lr, want)
    if kind == "cosine":
        assert got[total] == pytest.approx(0.0, abs=1e-15) and got[warmup] == pytest.approx(base)
    assert lr_factor(0, "constant") == 1.0


def test_lr_scheduler_resumes_exactly_and_rejects_bad_input():
    def make():
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
        return opt, lr_scheduler(opt, "cosine", 2, 10)

    opt, sched = make()
    full = _lrs(sched, opt, 10)
    opt, sched = make()
    first = _lrs(sched, opt, 4)
    state = {"opt": opt.state_dict(), "sched": sched.state_dict()}
    opt2, sched2 = make()
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert first + _lrs(sched2, opt2, 6) == full
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_scheduler(opt, "linear")
    with pytest.raises(ValueError, match="total_steps"):
        lr_scheduler(opt, "cosine", 2)


# ------------------------------------------------------------------------------------------ processes, randomness
def test_single_process_defaults():
    with training.process_group("cpu") as pg:
        assert (pg.rank, pg.world, pg.local_rank, pg.created, pg.is_main) == (0, 1, 0, False, True)
    m = torch.nn.Linear(2, 2)
    assert training.wrap_ddp(m, torch.device("cpu"), 1) is m
    m.weight.grad = torch.ones_like(m.weight)
    training.all_reduce_gradients(m.parameters(), 1)  # one process: unchanged
    assert torch.equal(m.weight.grad, torch.ones_like(m.weight))
    assert training.resolve_device("cpu") == torch.device("cpu")


def _worker(out):
    with training.process_group("cpu") as pg:  # spawn_processes set torchrun's environment
        rank = pg.rank
        m = torch.nn.Linear(2, 3)
        with torch.no_grad():
            m.weight.fill_(float(rank))  # rank 1 starts elsewhere: the broadcast gives it rank 0's weights
        m.weight.grad = torch.full_like(m.weight, rank + 1.0)
        m.bias.grad = torch.full_like(m.bias, 10.0 * (rank + 1))
        training.all_reduce_gradients(m.parameters(), pg.world)
        training.broadcast_state(m.state_dict().values(), pg.world)
        mean = training.mean_over_processes(torch.tensor([float(rank)], dtype=torch.float64), pg.world)
        torch.save({"w": m.weight.grad, "b": m.bias.grad, "weight": m.weight.detach(), "mean": mean,
                    "created": pg.created, "world": pg.world, "env": int(os.environ["LOCAL_RANK"])},
                   f"{out}/rank{rank}.pt")


def test_two_gloo_processes_average_gradients_and_share_rank_0_state(tmp_path):
    training.spawn_processes(_worker, 2, str(tmp_path))
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert got["world"] == 2 and got["env"] == r
        assert torch.equal(got["w"], torch.full((3, 2), 1.5)) and torch.equal(got["b"], torch.full((3,), 15.0))
        assert torch.equal(got["weight"], torch.zeros(3, 2)) and float(got["mean"]) == 0.5 and got["created"]


def test_epoch_permutation_is_the_data_stream_of_the_rng_rule():
    p = rng.epoch_permutation(50, 3, 2)
    assert torch.equal(p.sort().values, torch.arange(50))
    assert torch.equal(p, torch.randperm(50, generator=rng.generator(3, "data", 2)))
    assert torch.equal(p, rng.epoch_permutation(50, 3, 2)) and not torch.equal(p, rng.epoch_permutation(50, 3, 3))
