import dataclasses
import json
import time

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from foundations.checkpoint import CheckpointError
from foundations.train import (
    NonFiniteLossError,
    Seeded,
    TrainConfig,
    checkpoints,
    compile_quietly,
    cosine_schedule,
    fit,
    make_accelerator,
    native_bf16,
    resolve_precision,
)
from tests.conftest import assert_no_pickle


def problem(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    return TensorDataset(x, y)


def model(dropout=0.0):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(16, 1)
    )


class Noisy(torch.utils.data.Dataset):
    """Items augmented with fresh noise from the global generators, as image and cloud transforms are."""

    def __init__(self):
        self.data = problem()

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return {"x": x + 0.1 * torch.randn(8), "y": y}


def mse(m, batch):
    return torch.nn.functional.mse_loss(m(batch[0]), batch[1])


CFG = TrainConfig(max_steps=20, batch_size=32, base_lr=0.8, warmup_steps=2, checkpoint_every=10, log_every=5)


def loader(seed=0):
    return DataLoader(problem(seed=seed), batch_size=32, shuffle=True, drop_last=True)


def test_fit__loss_falls_and_logs(tmp_path):
    res = fit(model(), loader(), mse, CFG, make_accelerator("no"), tmp_path, "toy")
    assert res.steps == 20 and res.last_loss < 0.3 * res.first_loss
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert records[-1]["loss"] == pytest.approx(res.last_loss)
    assert [p.name for p in checkpoints(tmp_path / "checkpoints" / "toy")] == ["step_0000010", "step_0000020"]


@pytest.mark.parametrize("workers", [0, 2])
def test_fit__resume_after_a_crash_is_bit_identical_to_an_uninterrupted_run(tmp_path, workers):
    """Augmented items, dropout and a mid-epoch crash (8 batches per epoch, checkpoint at step 10)."""
    data = lambda: DataLoader(Seeded(Noisy(), seed=3), 32, shuffle=True, drop_last=True, num_workers=workers)  # noqa: E731
    noisy_mse = lambda m, b: torch.nn.functional.mse_loss(m(b["x"]), b["y"])  # noqa: E731
    cfg = TrainConfig(**{**CFG.__dict__, "seed": 3})
    straight = model(dropout=0.2)
    fit(straight, data(), noisy_mse, cfg, make_accelerator("no", seed=1), tmp_path / "a", "toy")

    def crash(step, _):
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model(0.2), data(), noisy_mse, cfg, make_accelerator("no", seed=1), tmp_path / "b", "toy", on_step=crash)
    torch.manual_seed(1234)  # whatever the generators hold now, the resumed run draws as the first one did
    resumed = model(dropout=0.2)
    torch.nn.init.normal_(resumed[0].weight)  # only the checkpoint can bring the weights back
    calls = []
    counted = lambda m, b: calls.append(1) or noisy_mse(m, b)  # noqa: E731
    res = fit(resumed, data(), counted, cfg, make_accelerator("no", seed=1), tmp_path / "b", "toy", resume=True)
    assert res.steps == 20 and len(calls) == 10  # from the step-10 checkpoint, not from scratch
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fit__a_stage_resumes_alone_after_other_stages_shared_the_accelerator(tmp_path):
    acc = make_accelerator("no", seed=1)
    fit(model(), loader(), mse, CFG, acc, tmp_path, "first")  # e.g. pretraining, same process

    def crash(step, _):
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model(), loader(), mse, CFG, acc, tmp_path, "second", on_step=crash)
    saved = checkpoints(tmp_path / "checkpoints" / "second")[-1]
    assert sorted(p.name for p in saved.iterdir()) == ["model.safetensors", "optimizer.safetensors", "trainer.json"]
    resumed = model()
    res = fit(resumed, loader(), mse, CFG, make_accelerator("no", seed=1), tmp_path, "second", resume=True)
    state = json.loads((checkpoints(tmp_path / "checkpoints" / "second")[-1] / "trainer.json").read_text())
    assert res.steps == 20 and state["scheduler"]["last_epoch"] == 20


def test_fit__non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def exploding(m, batch):
        calls["n"] += 1
        loss = mse(m, batch)
        return loss * float("nan") if calls["n"] > 12 else loss

    net = model()
    with pytest.raises(NonFiniteLossError, match=r"step 12.*last good checkpoint: .*step_0000010"):
        fit(net, loader(), exploding, CFG, make_accelerator("no"), tmp_path, "toy")
    assert all(torch.isfinite(p).all() for p in net.parameters())  # no NaN update was applied
    saved = load_file(checkpoints(tmp_path / "checkpoints" / "toy")[-1] / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_fit__gradient_accumulation_counts_optimizer_steps(tmp_path):
    acc = make_accelerator("no", grad_accum=2)
    cfg = TrainConfig(max_steps=6, batch_size=32, base_lr=0.1, warmup_steps=1, checkpoint_every=100, log_every=3)
    res = fit(model(), loader(), mse, cfg, acc, tmp_path, "toy")
    assert res.steps == 6
    state = json.loads((checkpoints(tmp_path / "checkpoints" / "toy")[-1] / "trainer.json").read_text())
    assert state["step"] == 6


def test_cosine_schedule__warmup_then_decay():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    values = [cosine_schedule(s, cfg) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:], strict=False))
    assert values[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("kwargs,match", [({"max_steps": 0}, "max_steps"), ({"base_lr": 0}, "base_lr")])
def test_train_config__bad_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_fit__non_finite_gradient_with_a_finite_loss_stops_before_the_update(tmp_path):
    def kinked(m, batch):  # sqrt(|w - w|) is 0 but its gradient is not finite
        w = m[0].weight
        return mse(m, batch) + ((w - w.detach()).abs().sqrt().sum() if m.training and step["n"] >= 12 else 0)

    step = {"n": 0}
    net = model()
    on_step = lambda s, _: step.update(n=s)  # noqa: E731
    with pytest.raises(NonFiniteLossError, match=r"gradient is not finite at step 12.*step_0000010"):
        fit(net, loader(), kinked, CFG, make_accelerator("no"), tmp_path, "toy", on_step=on_step)
    assert all(torch.isfinite(p).all() for p in net.parameters())  # no update with that gradient


def crash_at(n):
    def on_step(step, _):
        if step == n:
            raise KeyboardInterrupt

    return on_step


LONG = TrainConfig(**{**CFG.__dict__, "max_steps": 30})


@pytest.mark.parametrize("damage", ["trainer.json", "model.safetensors", "optimizer.safetensors", "both checkpoints"])
def test_fit__resume_skips_a_damaged_latest_checkpoint(tmp_path, damage, capsys):
    with pytest.raises(KeyboardInterrupt):  # checkpoints at 10 and 20 of 30 steps
        fit(model(), loader(), mse, LONG, make_accelerator("no", seed=1), tmp_path, "toy", on_step=crash_at(23))
    first, latest = checkpoints(tmp_path / "checkpoints" / "toy")
    for ckpt in (first, latest) if damage == "both checkpoints" else (latest,):
        name = "model.safetensors" if damage == "both checkpoints" else damage
        (ckpt / name).write_bytes((ckpt / name).read_bytes()[:20])  # cut short, as a full disk leaves it
    calls = []
    counted = lambda m, b: calls.append(1) or mse(m, b)  # noqa: E731
    if damage == "both checkpoints":
        with pytest.raises(CheckpointError, match="no checkpoint of 2 loads; run without --resume"):
            fit(model(), loader(), mse, LONG, make_accelerator("no", seed=1), tmp_path, "toy", resume=True)
        return
    res = fit(model(), loader(), counted, LONG, make_accelerator("no", seed=1), tmp_path, "toy", resume=True)
    assert res.steps == 30 and len(calls) == 20  # resumed from step 10, the one before the damaged step 20
    assert f"checkpoint {latest} is unreadable" in capsys.readouterr().out


def test_fit__a_checkpoint_without_its_marker_is_not_resumed(tmp_path):
    """A kill while a checkpoint is written leaves its folder without trainer.json, written last."""
    with pytest.raises(KeyboardInterrupt):
        fit(model(), loader(), mse, LONG, make_accelerator("no", seed=1), tmp_path, "toy", on_step=crash_at(23))
    latest = checkpoints(tmp_path / "checkpoints" / "toy")[-1]
    (latest / "trainer.json").unlink()
    assert [p.name for p in checkpoints(tmp_path / "checkpoints" / "toy")] == ["step_0000010"]
    calls = []
    counted = lambda m, b: calls.append(1) or mse(m, b)  # noqa: E731
    fit(model(), loader(), counted, LONG, make_accelerator("no", seed=1), tmp_path, "toy", resume=True)
    assert len(calls) == 20


@pytest.mark.parametrize(
    "change,seen", [({"max_steps": 40}, "max_steps 30 -> 40"), ({"seed": 5}, "seed 0 -> 5"), ({"batch_size": 16}, "")]
)
def test_fit__a_resume_that_changes_the_schedule_stops(tmp_path, change, seen):
    with pytest.raises(KeyboardInterrupt):
        fit(model(), loader(), mse, LONG, make_accelerator("no", seed=1), tmp_path, "toy", on_step=crash_at(13))
    other = TrainConfig(**{**LONG.__dict__, **change})
    batches = DataLoader(problem(), batch_size=other.batch_size, shuffle=True, drop_last=True)
    with pytest.raises(CheckpointError, match=f"changes what the checkpoint was trained with .*{seen}"):
        fit(model(), batches, mse, other, make_accelerator("no", seed=1), tmp_path, "toy", resume=True)


def test_fit__a_fresh_run_over_an_earlier_runs_checkpoints_stops_unless_overwrite(tmp_path):
    fit(model(), loader(), mse, CFG, make_accelerator("no", seed=1), tmp_path, "toy")
    with pytest.raises(CheckpointError, match="holds checkpoints of an earlier run; --resume .* --overwrite"):
        fit(model(), loader(), mse, CFG, make_accelerator("no", seed=1), tmp_path, "toy")
    calls = []
    counted = lambda m, b: calls.append(1) or mse(m, b)  # noqa: E731
    fit(model(), loader(), counted, CFG, make_accelerator("no", seed=1), tmp_path, "toy", overwrite=True)
    assert len(calls) == 20  # from scratch
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]  # the earlier run's records are gone


def test_fit__checkpoints_are_safetensors_and_json_only(tmp_path):
    fit(model(), loader(), mse, CFG, make_accelerator("no", seed=1), tmp_path, "toy")
    assert_no_pickle(tmp_path)


def test_fit__a_resume_logs_each_step_once(tmp_path):
    def crash(step, _):
        if step == 16:  # past the step-10 checkpoint and the step-15 log record
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model(), loader(), mse, CFG, make_accelerator("no", seed=1), tmp_path, "toy", on_step=crash)
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"stage": "toy", "st')  # a record cut short by the kill
    fit(model(), loader(), mse, CFG, make_accelerator("no", seed=1), tmp_path, "toy", resume=True)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]


class Slow(torch.utils.data.Dataset):
    def __init__(self, delay):
        self.data, self.delay = problem(), delay

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if self.delay:
            time.sleep(self.delay)
        return self.data[i]


def test_fit__the_log_records_the_share_of_time_spent_waiting_for_data(tmp_path, caplog):
    cfg = TrainConfig(max_steps=4, batch_size=32, warmup_steps=1, checkpoint_every=100, log_every=2)
    shares, warnings = [], []
    for delay in (0.0, 0.02):  # a step takes 10 ms; batches take next to nothing, then 0.64 s
        caplog.clear()
        out = tmp_path / str(delay)
        fit(
            model(),
            DataLoader(Slow(delay), 32, shuffle=True, drop_last=True),
            mse,
            cfg,
            make_accelerator("no"),
            out,
            "t",
        )
        shares.append(max(json.loads(line)["data_wait"] for line in (out / "log.jsonl").read_text().splitlines()))
        warnings.append([r.message for r in caplog.records if "waiting for data" in r.message])
    print(f"data_wait without and with a slow loader: {shares}")
    assert shares[0] < 0.4 and 0.75 < shares[1] <= 1.0
    assert len(warnings[1]) == 1 and "more --workers" in warnings[1][0]  # said once, not at every record
    assert warnings[0] == [] or shares[0] > 0.2


def test_fit__waiting_for_data_is_not_worth_a_warning_when_it_is_a_fraction_of_a_second(tmp_path, caplog):
    cfg = TrainConfig(max_steps=4, batch_size=32, warmup_steps=1, checkpoint_every=100, log_every=2)
    loader = DataLoader(Slow(0.002), 32, shuffle=True, drop_last=True)  # 64 ms a batch, most of a 74 ms step
    fit(model(), loader, mse, cfg, make_accelerator("no"), tmp_path, "t")
    assert max(json.loads(line)["data_wait"] for line in (tmp_path / "log.jsonl").read_text().splitlines()) > 0.5
    assert not [r for r in caplog.records if "waiting for data" in r.message]


def test_compile_quietly__a_graph_that_cannot_compile_runs_eagerly():
    def broken(graph, example_inputs):  # a compiler backend that fails, as a missing C++ toolchain does
        raise RuntimeError("no compiler here")

    x = torch.randn(4, 8)
    eager = model()(x)
    compiled = compile_quietly(model(), backend=broken)
    assert torch.equal(compiled(x), eager)  # ran eagerly, no error
    assert list(compiled.state_dict()) == list(model().state_dict())  # compiled in place: names unchanged
    traced = compile_quietly(model(), backend="eager")  # TorchDynamo traces, nothing is generated
    torch.testing.assert_close(traced(x), eager)


def test_fit__with_compile_trains_as_without(tmp_path):
    cfg = TrainConfig(max_steps=4, batch_size=32, warmup_steps=1, checkpoint_every=100)
    results, models = [], [model(), model()]
    for backend, m in zip((None, "eager"), models, strict=True):  # "eager": TorchDynamo captures, no code generation
        run = dataclasses.replace(cfg, compile=backend)
        results.append(
            fit(m, DataLoader(problem(), 32), mse, run, make_accelerator("no"), tmp_path / str(backend), "t")
        )
    assert models[0]._compiled_call_impl is None and models[1]._compiled_call_impl is not None  # compiled in place
    assert abs(results[0].last_loss - results[1].last_loss) < 1e-4 * abs(results[0].last_loss), results


def test_native_bf16__read_from_the_cpu_flags(tmp_path):
    (tmp_path / "amx").write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    (tmp_path / "avx2").write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert native_bf16(tmp_path / "amx") and not native_bf16(tmp_path / "avx2")
    assert not native_bf16(tmp_path / "missing")  # no such file (not Linux): fp32


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, auto follows the GPU")
def test_resolve_precision__auto_is_bf16_only_on_a_cpu_with_native_bf16(tmp_path):
    (tmp_path / "amx").write_text("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    (tmp_path / "avx2").write_text("flags\t\t: fpu avx2 fma\n")
    assert resolve_precision("auto", tmp_path / "amx") == "bf16"
    assert resolve_precision("auto", tmp_path / "avx2") == "no"
    assert resolve_precision("no", tmp_path / "amx") == "no"  # asked for, kept
    assert resolve_precision("bf16", tmp_path / "avx2") == "bf16"
