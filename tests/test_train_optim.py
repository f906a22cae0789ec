"""Optimisers and lr schedules; transformers' schedule functions are the oracle."""

import pytest
import torch
import transformers.optimization as hf

from wantune.errors import UserError
from wantune.train.config import OptimizerConfig, ScheduleConfig
from wantune.train.optim import build_optimizer, build_scheduler, param_groups, warmup_steps

TOTAL, WARMUP = 50, 5


def _lrs(scheduler, optimizer):
    out = []
    for _ in range(TOTAL):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


@pytest.mark.parametrize("name,oracle", [
    ("constant_with_warmup", lambda o: hf.get_constant_schedule_with_warmup(o, WARMUP)),
    ("linear", lambda o: hf.get_linear_schedule_with_warmup(o, WARMUP, TOTAL)),
    ("cosine", lambda o: hf.get_cosine_schedule_with_warmup(o, WARMUP, TOTAL)),
    ("cosine_with_restarts", lambda o: hf.get_cosine_with_hard_restarts_schedule_with_warmup(o, WARMUP, TOTAL, 3)),
    ("polynomial", lambda o: hf.get_polynomial_decay_schedule_with_warmup(o, WARMUP, TOTAL, lr_end=0.1, power=2.0)),
])
def test_schedules_match_transformers(name, oracle):
    ours_opt, ref_opt = _opt(), _opt()
    cfg = ScheduleConfig(name=name, warmup_steps=WARMUP, num_cycles=3, power=2.0,
                         min_lr_ratio=0.1 if name == "polynomial" else 0.0)
    ours = _lrs(build_scheduler(ours_opt, cfg, TOTAL), ours_opt)
    ref = _lrs(oracle(ref_opt), ref_opt)
    assert ours == pytest.approx(ref, abs=1e-9)


def test_constant_and_warmup_ratio():
    opt = _opt()
    assert set(_lrs(build_scheduler(opt, ScheduleConfig(name="constant"), TOTAL), opt)) == {1.0}
    assert warmup_steps(ScheduleConfig(warmup_ratio=0.1), 200) == 20
    assert warmup_steps(ScheduleConfig(warmup_ratio=0.1, warmup_steps=7), 200) == 7


def test_scheduler_resumes_exactly():
    opt = _opt()
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup_steps=3), TOTAL)
    for _ in range(10):
        opt.step(); sched.step()
    state = sched.state_dict()
    opt2 = _opt()
    sched2 = build_scheduler(opt2, ScheduleConfig(name="cosine", warmup_steps=3), TOTAL)
    sched2.load_state_dict(state)
    sched.step(); sched2.step()
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_loraplus_groups_scale_b_matrices():
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2, 2))
    named = [("blocks.0.self_attn.q.lora_A.weight", a), ("blocks.0.self_attn.q.lora_B.weight", b)]
    groups = param_groups(named, 1e-4, 16.0)
    assert groups[0]["params"] == [a] and groups[0]["lr"] == 1e-4
    assert groups[1]["params"] == [b] and groups[1]["lr"] == pytest.approx(1.6e-3)
    assert len(param_groups(named, 1e-4, 1.0)) == 1
    with pytest.raises(UserError, match="loraplus_lr_ratio"):
        param_groups([("blocks.0.ffn.0.weight", a)], 1e-4, 4.0)


@pytest.mark.parametrize("name", ["adamw", "adafactor", "prodigy"])
def test_optimisers_build_and_step(name):
    p = torch.nn.Parameter(torch.ones(4))
    opt = build_optimizer([{"params": [p], "lr": 1e-2 if name != "prodigy" else 1.0}],
                          OptimizerConfig(name=name, lr=1e-2, weight_decay=0.0), torch.device("cpu"))
    for _ in range(3):
        opt.zero_grad()
        (p ** 2).sum().backward()
        opt.step()
    assert (p.detach() < 1).all()


def test_adamw8bit_on_cpu_is_a_clear_error():
    p = torch.nn.Parameter(torch.ones(4))
    with pytest.raises(UserError, match="adamw8bit.*CUDA"):
        build_optimizer([{"params": [p], "lr": 1e-3}], OptimizerConfig(name="adamw8bit"), torch.device("cpu"))
