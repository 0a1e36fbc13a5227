"""The training engine and the GAN/autoencoder methods, at tiny sizes."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np

import pytest
import torch
import torch.multiprocessing as mp

from facefill.checkpoint import load_checkpoint, load_weights
from facefill.config import TrainConfig
from facefill.engine.train import export_checkpoint, train
from facefill.registry import create_method
from batches import centre_batch, four_faces, hole_l1_before_and_after

TINY = {
    "dense-gan": {"base_channels": 8, "growth": 4, "max_channels": 16, "disc_channels": 8},
    "autoencoder": {"base_channels": 8, "growth": 4, "max_channels": 16},
    "context-encoder": {"base_channels": 8, "disc_channels": 8},
}


def tiny_method(name, size=32, **extra):
    method = create_method(name, size=size, **TINY[name], **extra)
    method.configure_optimizers()
    return method


def batch(size=32, count=4):
    return centre_batch(size, count)


def config(data, out, method="dense-gan", **values):
    base = dict(method=method, data=str(data), out=str(out), batch_size=2, workers=0, val_every=1000,
                ckpt_every=1000, log_every=1, method_settings=tuple(TINY[method].items()))
    return TrainConfig(**{**base, **values})


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_keeps_shape_and_range(name):
    method = tiny_method(name).eval()
    data = batch()
    out = method.inpaint(data["image"], data["mask"])
    assert out.shape == data["image"].shape
    assert 0 <= out.min() and out.max() <= 1
    known = data["mask"].expand_as(out) == 0
    assert torch.equal(out[known], data["image"][known])


@pytest.mark.parametrize("name", sorted(TINY))
def test_training_step_updates_every_network_with_finite_losses(name):
    method = tiny_method(name).train()
    before = {k: v.clone() for k, v in method.state_dict().items() if v.dtype.is_floating_point}
    logs = method.training_step(batch(), 0)
    assert logs and all(torch.isfinite(torch.as_tensor(v)) for v in logs.values())
    after = method.state_dict()
    for network in ("generator", "discriminator"):
        keys = [k for k in before if k.startswith(network + ".") and "weight" in k]
        if hasattr(method, network):
            assert any(not torch.equal(before[k], after[k]) for k in keys), f"{network} did not change"


def test_dense_ablation_switches_change_the_model():
    dense = tiny_method("dense-gan")
    plain = tiny_method("dense-gan", dense=False)
    rec_only = tiny_method("dense-gan", losses="rec")
    assert not hasattr(rec_only, "discriminator") and "discriminator" not in rec_only.optimizers
    assert "d_loss" not in rec_only.training_step(batch(), 0)
    assert sum(p.numel() for p in dense.parameters()) != sum(p.numel() for p in plain.parameters())
    with pytest.raises(ValueError, match="losses"):
        create_method("dense-gan", losses="adv")


@pytest.mark.parametrize("name", sorted(TINY))
def test_export_and_load_round_trip_is_identical(tiny_dataset, tmp_path, name):
    summary = train(config(tiny_dataset, tmp_path / "run", method=name, steps=2))
    weights = tmp_path / f"{name}.pt"
    card = export_checkpoint(summary["checkpoint"], weights)
    payload = torch.load(weights, weights_only=True)
    assert set(payload) == {"format_version", "method", "config", "state_dict", "meta"}
    assert "discriminator" not in payload["state_dict"]
    assert json.loads(weights.with_suffix(".json").read_text())["steps"] == card["steps"] == 2

    assert all(v.dtype == torch.float16 for m in payload["state_dict"].values() for v in m.values()
               if v.is_floating_point())

    trained = create_method(name, **payload["config"])
    trained.load_state_dict(load_checkpoint(summary["checkpoint"])["model"])
    trained.eval()
    loaded, reloaded = load_weights(weights), load_weights(weights)
    data = batch()
    filled = loaded.inpaint(data["image"], data["mask"])
    assert torch.equal(filled, reloaded.inpaint(data["image"], data["mask"]))
    # float16 storage: within a grey level or two of the float32 network
    assert torch.allclose(trained.inpaint(data["image"], data["mask"]), filled, atol=2e-2)


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(tiny_dataset, tmp_path):
    whole = train(config(tiny_dataset, tmp_path / "whole", steps=6, ema=0.9))
    train(config(tiny_dataset, tmp_path / "parts", steps=4, ema=0.9))
    resumed = train(config(tiny_dataset, tmp_path / "parts", steps=6, ema=0.9, resume=True))
    assert resumed["steps"] == 6
    a, b = load_checkpoint(whole["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["generator"]:
        assert torch.equal(a["ema"]["generator"][key], b["ema"]["generator"][key]), key
    steps = [json.loads(line)["step"] for line in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def test_resume_with_a_new_learning_rate_uses_it(tiny_dataset, tmp_path):
    train(config(tiny_dataset, tmp_path / "run", steps=2))
    resumed = train(config(tiny_dataset, tmp_path / "run", steps=3, resume=True, lr=1e-5))
    optimizers = load_checkpoint(resumed["checkpoint"])["optimizers"]
    assert {group["lr"] for opt in optimizers.values() for group in opt["param_groups"]} == {1e-5}
    assert optimizers["generator"]["state"], "the saved Adam moments are kept"


def test_resume_refuses_another_methods_checkpoint_or_other_shapes_in_one_line(tiny_dataset, tmp_path):
    train(config(tiny_dataset, tmp_path / "run", method="autoencoder", steps=1))
    with pytest.raises(ValueError, match=r"ckpt-\d+\.pt: a 'autoencoder' checkpoint, not 'dense-gan'"):
        train(config(tiny_dataset, tmp_path / "run", steps=2, resume=True))
    train(config(tiny_dataset, tmp_path / "other", steps=1))
    wider = tuple({**TINY["dense-gan"], "base_channels": 16}.items())
    with pytest.raises(ValueError, match=r"ckpt-\d+\.pt: does not fit .*; resume without --set"):
        train(config(tiny_dataset, tmp_path / "other", steps=2, resume=True, method_settings=wider))


def test_run_folder_has_logs_samples_plots_and_bounded_checkpoints(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    summary = train(config(tiny_dataset, run, steps=6, val_every=2, ckpt_every=2, keep_last=2))
    assert sorted(p.name for p in run.glob("ckpt-*.pt")) == ["ckpt-0000004.pt", "ckpt-0000006.pt"]
    assert (run / "best.pt").exists() and (run / "config.json").exists()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert sum("val_psnr" in r for r in records) == 3
    assert len(list((run / "samples").glob("*.png"))) == 3
    assert (run / "losses.png").exists()
    assert summary["best_val_psnr"] == max(r["val_psnr"] for r in records if "val_psnr" in r)


@pytest.mark.parametrize("name", ["dense-gan", "autoencoder"])
def test_overfits_four_images(tiny_dataset, name):
    torch.manual_seed(0)
    data = four_faces(tiny_dataset)
    start, end = hole_l1_before_and_after(tiny_method(name, lr=2e-3).train(), data)
    assert end < 0.7 * start


def test_train_refuses_untrainable_methods_and_unknown_settings(tiny_dataset, tmp_path):
    from click.testing import CliRunner

    from facefill.cli import main

    result = CliRunner().invoke(main, ["train", "--method", "telea", "--data", str(tiny_dataset)])
    assert result.exit_code == 2 and "needs no training" in result.output
    result = CliRunner().invoke(main, ["train", "--method", "dense-gan", "--data", str(tiny_dataset),
                                       "--set", "wings=3", "--steps", "1"])
    assert result.exit_code == 2 and "wings" in result.output


def test_cli_train_with_set_and_export(tiny_dataset, tmp_path):
    from click.testing import CliRunner

    from facefill.cli import main

    weights = tmp_path / "w.pt"
    args = ["train", "--method", "autoencoder", "--data", str(tiny_dataset), "--steps", "2", "--batch-size", "2",
            "--workers", "0", "--out", str(tmp_path / "run"), "--export", str(weights)]
    for key, value in TINY["autoencoder"].items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert load_weights(weights).config.base_channels == 8


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _distributed_worker(rank, world, port, data, out, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from facefill.engine.train import Trainer

    trainer = Trainer(config(data, out, steps=3, batch_size=4, device="cpu"))
    try:
        trainer.fit()
    except Exception:  # noqa: BLE001 -- surface it to the parent
        import traceback

        traceback.print_exc()
        raise
    params = {k: v for k, v in trainer.method.generator.named_parameters()}
    torch.save(params, os.path.join(results, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_distributed_training_on_two_cpu_processes(tiny_dataset, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_distributed_worker, args=(2, _free_port(), str(tiny_dataset), str(tmp_path / "run"), str(results)),
             nprocs=2, join=True)
    rank0 = torch.load(results / "rank0.pt", weights_only=True)
    rank1 = torch.load(results / "rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.allclose(rank0[key], rank1[key], atol=1e-6), key
    assert [p.name for p in (tmp_path / "run").glob("ckpt-*.pt")] == ["ckpt-0000003.pt"]


def test_ema_warms_up_so_the_random_init_is_forgotten():
    from facefill.engine.train import EMA

    module = torch.nn.Linear(2, 2)
    ema = EMA({"g": module}, decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10 ** 6) == 0.999
    with torch.no_grad():
        module.weight.fill_(1.0)
    for step in range(200):
        ema.update({"g": module}, step)
    assert torch.allclose(ema.modules["g"].weight, torch.ones(2, 2), atol=1e-3)


def test_config_file_then_set_then_flags_take_precedence(tiny_dataset, tmp_path):
    from click.testing import CliRunner

    from facefill.cli import main

    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nsteps = 1\nbatch_size = 4\nworkers = 0\n\n'
                    '[method]\nbase_channels = 8\ngrowth = 4\nmax_channels = 16\nlosses = "rec"\n')
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--method", "dense-gan", "--data", str(tiny_dataset),
                                       "--config", str(toml), "--set", "growth=2", "--set", "batch_size=3",
                                       "--batch-size", "2", "--out", str(run)])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["steps"] == 1 and saved["train"]["batch_size"] == 2  # flag beats --set beats file
    assert saved["method"]["base_channels"] == 8 and saved["method"]["growth"] == 2  # --set beats file
    assert saved["method"]["losses"] == "rec"


def test_export_of_a_weights_file_keeps_its_record_and_measures_again(tiny_dataset, tmp_path):
    summary = train(config(tiny_dataset, tmp_path / "run", method="dense-gan", steps=2))
    first = tmp_path / "first.pt"
    export_checkpoint(summary["checkpoint"], first, notes=("trained elsewhere",))
    second = tmp_path / "second.pt"
    card = export_checkpoint(first, second, data=str(tiny_dataset), mask_kinds=("center",), notes=("re-measured",))
    written = json.loads(second.with_suffix(".json").read_text())
    assert written["steps"] == card["steps"] == 2
    assert written["notes"] == ["trained elsewhere", "re-measured"]
    assert 0 < written["metrics"]["center"]["psnr"] < 100
    a, b = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert all(torch.equal(a["state_dict"][m][k], b["state_dict"][m][k])
               for m in a["state_dict"] for k in a["state_dict"][m])


def test_int8_storage_is_a_quarter_of_float32_and_fills_within_a_grey_level(tmp_path):
    from facefill.checkpoint import export_weights, quantize_int8, stored_state

    method = create_method("dense-gan", size=32, base_channels=16, growth=8, max_channels=32).eval()
    float16, int8 = tmp_path / "f16.pt", tmp_path / "i8.pt"
    export_weights(method, float16, {"size": 32})
    export_weights(method, int8, {"size": 32}, storage="int8")
    payload = torch.load(int8, weights_only=True)
    assert payload["format_version"] == 2 and payload["meta"]["storage"] == "int8"
    assert json.loads(int8.with_suffix(".json").read_text())["storage"] == "int8"
    assert int8.stat().st_size < 0.6 * float16.stat().st_size
    state = method.export_state()["generator"]
    restored = stored_state(payload)["generator"]
    for key, value in state.items():
        if value.is_floating_point() and value.dim() >= 2 and value.numel() >= 256:
            assert payload["state_dict"]["generator"][key].dtype == torch.int8
            step = value.abs().flatten(1).amax(1).view(-1, *[1] * (value.dim() - 1)) / 127
            assert ((restored[key] - value).abs() <= step / 2 + 1e-3 * step + 1e-8).all()  # half a step, fp16 scale
    data = batch()
    exact = method.inpaint(data["image"], data["mask"])
    assert (load_weights(int8).inpaint(data["image"], data["mask"]) - exact).abs().mean() < 1 / 255
    stored, scales = quantize_int8({"m": {"zero": torch.zeros(4, 64), "bias": torch.ones(4)}})
    assert torch.equal(stored_state({"state_dict": stored, "scales": scales})["m"]["zero"], torch.zeros(4, 64))
    assert "bias" not in scales["m"] and stored["m"]["bias"].dtype == torch.float16


def test_export_cli_storage_keeps_a_weights_file_int8_when_recarded(tiny_dataset, tmp_path):
    from click.testing import CliRunner

    from facefill.cli import main
    from facefill.checkpoint import export_weights

    export_weights(tiny_method("dense-gan").eval(), tmp_path / "a.pt", {"size": 32, "steps": 1})
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--storage", "int8"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["export", str(tmp_path / "b.pt"), str(tmp_path / "c.pt"),
                                  "--data", str(tiny_dataset), "--masks", "center"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "c.json").read_text())
    assert card["storage"] == "int8" and card["steps"] == 1 and 0 < card["metrics"]["center"]["psnr"] < 100
    result = runner.invoke(main, ["export", str(tmp_path / "b.pt"), str(tmp_path / "d.pt"), "--storage", "int4"])
    assert result.exit_code == 2 and "int4" in result.output


def test_several_data_sets_with_weights(tiny_dataset, tmp_path):
    from facefill.data.dataset import epoch_order, parse_data_spec

    assert parse_data_spec("crops128:2") == ("crops128", 2.0) and parse_data_spec("data128") == ("data128", 1.0)
    weights = np.array([1.0] * 10 + [3.0] * 10)
    order = epoch_order(weights, seed=0, epoch=0, count=20000)
    assert 2.7 < np.mean(order >= 10) / np.mean(order < 10) < 3.3
    second = tmp_path / "second"
    shutil.copytree(tiny_dataset, second)
    two_sets = dataclasses.replace(config(tiny_dataset, tmp_path / "run", steps=2),
                                   data=(str(tiny_dataset), f"{second}:2"))
    summary = train(two_sets)
    state = load_checkpoint(summary["checkpoint"])
    sets = state["data"]["sets"]
    assert [s["weight"] for s in sets] == [1.0, 2.0]
    assert sets[0]["val_images"] == 1 and sets[1]["val_images"] == 0  # validation from the first set only
    assert state["data"]["train_images"] == 7 + 8


def test_checkpoint_parts_round_trip(tiny_dataset, tmp_path):
    from facefill.checkpoint import save_checkpoint

    summary = train(config(tiny_dataset, tmp_path / "run", steps=2, ckpt_every=1, keep_last=1, part_mib=0.05))
    path = Path(summary["checkpoint"])
    parts = sorted(path.parent.glob(path.name + ".part-*"))
    assert len(parts) > 1 and all(p.stat().st_size <= 0.05 * 1024 * 1024 for p in parts)
    assert not list(path.parent.glob("ckpt-0000001.pt*"))  # older checkpoints go with their parts
    state = load_checkpoint(path)
    assert state["step"] == 2
    save_checkpoint(tmp_path / "whole.pt", state)
    whole = load_checkpoint(tmp_path / "whole.pt")
    assert all(torch.equal(whole["model"][k], state["model"][k]) for k in state["model"])
    resumed = train(config(tiny_dataset, tmp_path / "run", steps=3, resume=True, part_mib=0.05))
    assert resumed["steps"] == 3
    parts[0].write_bytes(parts[0].read_bytes()[:-10])
    with pytest.raises(ValueError, match="part"):
        load_checkpoint(path)


def test_init_from_weights_starts_from_the_generator_with_fresh_optimisers(tiny_dataset, tmp_path):
    first = train(config(tiny_dataset, tmp_path / "a", steps=2))
    weights = tmp_path / "w.pt"
    export_checkpoint(first["checkpoint"], weights)
    from facefill.engine.train import Trainer

    trainer = Trainer(config(tiny_dataset, tmp_path / "b", steps=1, init_from=str(weights)))
    shipped = load_weights(weights).generator.state_dict()
    for key, value in trainer.method.generator.state_dict().items():
        assert torch.allclose(value.float(), shipped[key].float()), key
    assert all(not o.state for o in trainer.optimizers.values())
    assert trainer.step == 0
    with pytest.raises(ValueError, match="does not fit"):
        Trainer(config(tiny_dataset, tmp_path / "c", steps=1, init_from=str(weights),
                       method_settings=tuple({**TINY["dense-gan"], "base_channels": 16}.items())))


def test_init_from_a_run_checkpoint_keeps_its_discriminator_with_fresh_optimisers(tiny_dataset, tmp_path):
    first = train(config(tiny_dataset, tmp_path / "a", steps=2, ema=0.9))
    state = load_checkpoint(first["checkpoint"])
    from facefill.engine.train import Trainer

    trainer = Trainer(config(tiny_dataset, tmp_path / "b", steps=1, init_from=first["checkpoint"]))
    for key, value in trainer.method.discriminator.state_dict().items():
        assert torch.equal(value, state["model"]["discriminator." + key]), key
    for key, value in trainer.method.generator.state_dict().items():
        assert torch.equal(value, state["ema"]["generator"][key]), key      # the averaged generator
    assert all(not o.state for o in trainer.optimizers.values())
    assert trainer.step == 0
    with pytest.raises(ValueError, match="does not fit"):
        Trainer(config(tiny_dataset, tmp_path / "c", steps=1, init_from=first["checkpoint"],
                       method_settings=tuple({**TINY["dense-gan"], "base_channels": 16}.items())))
    other = train(config(tiny_dataset, tmp_path / "d", method="autoencoder", steps=1))
    with pytest.raises(ValueError, match=r"ckpt-\d+\.pt: a 'autoencoder' checkpoint, not 'dense-gan'"):
        Trainer(config(tiny_dataset, tmp_path / "e", steps=1, init_from=other["checkpoint"]))


def test_resume_is_exact_with_device_side_masks_and_augmentation(tiny_dataset, tmp_path):
    values = dict(masks="mix", augment=True, steps=6)
    whole = train(config(tiny_dataset, tmp_path / "whole", **values))
    train(config(tiny_dataset, tmp_path / "parts", **{**values, "steps": 3}))
    resumed = train(config(tiny_dataset, tmp_path / "parts", resume=True, **values))
    a, b = load_checkpoint(whole["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert torch.equal(a["batches"]["generator"], b["batches"]["generator"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_recalibrated_batch_norm_statistics_are_the_average_over_the_batches():
    from facefill.nn.blocks import recalibrate_batch_norms
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Dropout(0.5)).eval()
    batches = [torch.randn(4, 2, 5, 5) * (1 + k) + k for k in range(3)]
    features = [net[0](b).detach() for b in batches]
    assert recalibrate_batch_norms([net], net, iter(batches)) == 1
    norm = net[1]
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
    expected_var = torch.stack([f.transpose(0, 1).flatten(1).var(1) for f in features]).mean(0)  # unbiased, as BN
    assert torch.allclose(norm.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(norm.running_var, expected_var, atol=1e-4)
    assert norm.momentum == 0.1 and not norm.training and not net[2].training
    before = norm.running_mean.clone()
    assert recalibrate_batch_norms([net], net, iter([])) == 0  # no batches: the statistics stay
    assert torch.equal(norm.running_mean, before)


@pytest.mark.parametrize("data_on", ["device", "workers"])
def test_ema_batch_norms_are_recalibrated_and_the_training_batches_stay_the_same(tiny_dataset, tmp_path, data_on):
    values = dict(masks="mix", augment=True, steps=4, ema=0.9, data_on=data_on)
    copied = load_checkpoint(train(config(tiny_dataset, tmp_path / "copied", ema_bn_batches=0, **values))["checkpoint"])
    calibrated = load_checkpoint(train(config(tiny_dataset, tmp_path / "calib", ema_bn_batches=3, **values))["checkpoint"])
    for key, value in copied["model"].items():  # the calibration batches come from generators of their own
        assert torch.equal(value, calibrated["model"][key]), key
    stats = [key for key in copied["ema"]["generator"] if key.endswith("running_mean")]
    assert stats
    live = {key[len("generator."):]: value for key, value in copied["model"].items() if key.startswith("generator.")}
    assert all(torch.equal(copied["ema"]["generator"][key], live[key]) for key in stats)
    assert not any(torch.equal(calibrated["ema"]["generator"][key], live[key]) for key in stats)
