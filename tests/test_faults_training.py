"""Training faults (issue 14): one-line errors for bad settings, resume that takes the run's own
settings, survives a damaged or missing checkpoint and says so, and is exact with loader workers."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from click.testing import CliRunner

from facefill.checkpoint import load_checkpoint
from facefill.cli import main
from facefill.config import TrainConfig
from facefill.engine.train import train

TINY = ["--set", "base_channels=8", "--set", "growth=4", "--set", "max_channels=16", "--set", "disc_channels=8"]


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def cli_train(data, out, *extra):
    return run_cli("train", "--method", "dense-gan", "--data", data, "--out", out, "--batch-size", 2,
                   "--val-every", 1000, *extra)


def one_line_usage_error(result, *words):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]


def tiny_config(data, out, **values):
    base = dict(method="dense-gan", data=(str(data),), out=str(out), batch_size=2, workers=0, val_every=1000,
                ckpt_every=1000, log_every=1, method_settings=(("base_channels", 8), ("disc_channels", 8),
                                                               ("growth", 4), ("max_channels", 16)))
    return TrainConfig(**{**base, **values})


@pytest.mark.parametrize("option", ["--ckpt-every", "--val-every"])
def test_zero_checkpoint_or_validation_interval_is_a_one_line_error(tiny_dataset, tmp_path, option):
    result = cli_train(tiny_dataset, tmp_path / "run", "--steps", 2, option, 0, *TINY)
    one_line_usage_error(result, option)
    assert not (tmp_path / "run").exists()


def test_resume_without_the_original_set_values_takes_them_from_the_checkpoint(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert cli_train(tiny_dataset, run, "--steps", 2, "--ckpt-every", 1, *TINY).exit_code == 0
    result = run_cli("train", "--resume", "--out", run, "--data", tiny_dataset, "--steps", 3)
    assert result.exit_code == 0, result.output
    state = load_checkpoint(run / "ckpt-0000003.pt")
    assert state["step"] == 3 and state["config"]["base_channels"] == 8
    assert state["train_config"]["batch_size"] == 2  # not the default 64: taken from the checkpoint


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one_and_says_so(tiny_dataset, tmp_path, caplog):
    run = tmp_path / "run"
    train(tiny_config(tiny_dataset, run, steps=4, ckpt_every=2, keep_last=3))
    newest = run / "ckpt-0000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        summary = train(tiny_config(tiny_dataset, run, steps=5, ckpt_every=2, keep_last=3, resume=True))
    assert summary["steps"] == 5
    assert "ckpt-0000004.pt" in caplog.text and "previous checkpoint" in caplog.text
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r][-3:] == [3, 4, 5]  # went on from step 2, the newest readable checkpoint


def test_kill_during_the_first_checkpoint_write_is_reported_on_resume(tiny_dataset, tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    leftover = run / ".ckpt-0000002.pt.k1ll3d.tmp.pt"  # what atomic_path leaves when killed mid-write
    leftover.write_bytes(b"PK\x03\x04 partial")
    with caplog.at_level(logging.WARNING):
        summary = train(tiny_config(tiny_dataset, run, steps=1, resume=True))
    assert "no complete checkpoint" in caplog.text and leftover.name in caplog.text
    assert "step 0" in caplog.text
    assert summary["steps"] == 1 and not leftover.exists()


@pytest.mark.parametrize("option, value", [("--steps", -5), ("--batch-size", 0)])
def test_negative_steps_and_zero_batch_size_are_rejected_before_anything_is_written(tiny_dataset, tmp_path,
                                                                                     option, value):
    result = run_cli("train", "--method", "dense-gan", "--data", tiny_dataset, "--out", tmp_path / "run",
                     "--steps", 2, "--batch-size", 2, option, value, *TINY)
    one_line_usage_error(result, option)
    assert not (tmp_path / "run").exists()


def test_bogus_device_is_a_one_line_error(tiny_dataset, tmp_path):
    result = cli_train(tiny_dataset, tmp_path / "run", "--steps", 1, "--device", "bogus", *TINY)
    one_line_usage_error(result, "bogus")


def test_resume_is_exact_with_data_loader_workers(tiny_dataset, tmp_path):
    values = dict(data_on="workers", workers=2, masks="mix", ema=0.9)
    whole = train(tiny_config(tiny_dataset, tmp_path / "whole", steps=6, **values))
    train(tiny_config(tiny_dataset, tmp_path / "parts", steps=3, **values))
    resumed = train(tiny_config(tiny_dataset, tmp_path / "parts", steps=6, resume=True, **values))
    a, b = load_checkpoint(whole["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
