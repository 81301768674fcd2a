"""Typed options and the command line derived from them."""

import dataclasses
import json

import pytest
import yaml

from modalities.pointcloud.data import PointCloudOptions
from modalities.ultrasound.data import UltrasoundOptions
from modalities.volume.data import VolumeOptions
from tasks.options import RunOptions, build_parser, parse


def test_parse__every_field_has_its_flag_and_one_default():
    opts = parse("volumes", "", VolumeOptions, argv=[])
    assert opts.domain == VolumeOptions() and opts.run == RunOptions(out="runs/volumes")
    flags = {s for a in build_parser("volumes", "", VolumeOptions)._actions for s in a.option_strings}
    for group in (opts.source, opts.run, opts.pretrain, opts.finetune, opts.domain):
        for f in dataclasses.fields(group):
            assert f"--{f.name.replace('_', '-')}" in flags, f.name


def test_parse__flags_types_booleans_aliases_and_recipe_defaults():
    argv = ["--roi", "96,96,32", "--patch", "16", "--no-crop-foreground", "--samples", "4", "--volume-4d", "stack"]
    opts = parse("volumes", "", VolumeOptions, {"batch_size": 16}, argv=argv + ["--resume"])
    d = opts.domain
    assert (d.roi, d.patch, d.crop_foreground, d.crops, d.volume_4d) == ((96, 96, 32), (16, 16, 16), False, 4, "stack")
    assert opts.run.batch_size == 16 and opts.run.resume is True
    assert parse("volumes", "", VolumeOptions, argv=["--volume-4d", "2"]).domain.volume_4d == 2


def test_parse__config_file_then_flags_and_a_runs_config_yaml_round_trips(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"points": 512, "max_steps": 7, "votes": 3}))
    opts = parse("pointcloud", "", PointCloudOptions, argv=["--config", str(tmp_path / "c.yaml"), "--votes", "2"])
    assert (opts.domain.points, opts.pretrain.max_steps, opts.domain.votes) == (512, 7, 2)
    saved = {**opts.flat(), "adapter": {"name": "pointcloud"}, "model": {}}  # what run() writes
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert parse("pointcloud", "", PointCloudOptions, argv=["--config", str(tmp_path / "config.yaml")]) == opts


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--image-size", "100"], "multiple of patch"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--stage", "train"], "--stage train: choose all or from pretrain,probe,finetune,prune,extract"),
        (["--stage", "pretrain,all"], "--stage pretrain,all: choose"),
        (["--workers", "many"], "argument --workers: expected auto or a count, got 'many'"),
        (["--predict-ratio", "most"], "argument --predict-ratio: expected a fraction or all, got 'most'"),
        (["--predict-ratio", "1.5"], "--predict-ratio must be in (0, 1), got 1.5"),
    ],
)
def test_parse__bad_values_stop_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse("ultrasound", "", UltrasoundOptions, argv=argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_parse__predict_ratio_all_is_every_hidden_token_and_survives_a_runs_config_yaml(tmp_path):
    assert parse("ultrasound", "", UltrasoundOptions, argv=[]).pretrain.predict_ratio == 0.25  # CrossMAE's
    opts = parse("ultrasound", "", UltrasoundOptions, argv=["--predict-ratio", "all", "--decoder", "self"])
    assert (opts.pretrain.predict_ratio, opts.pretrain.decoder) == (None, "self")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(opts.flat()))  # None, not the default 0.25
    assert parse("ultrasound", "", UltrasoundOptions, argv=["--config", str(tmp_path / "config.yaml")]) == opts


def test_parse__stages_run_in_their_order_whatever_the_order_named():
    stages = {
        a: parse("ultrasound", "", UltrasoundOptions, argv=["--stage", a]).run.stages for a in ("all", "probe,pretrain")
    }
    assert stages == {"all": ("pretrain", "probe", "finetune"), "probe,pretrain": ("pretrain", "probe")}


def test_parse__workers_auto_are_a_share_of_this_process_s_cores():
    import os

    cores = len(os.sched_getaffinity(0))
    run = parse("ultrasound", "", UltrasoundOptions, argv=[]).run
    assert run.workers == "auto" and run.data_workers(1, gpu=False) == cores // 4
    assert run.data_workers(1, gpu=True) == min(8, cores - 1) and run.data_workers(cores, gpu=True) == 0
    assert parse("ultrasound", "", UltrasoundOptions, argv=["--workers", "3"]).run.data_workers(2, gpu=False) == 3


def test_parse__unknown_config_option_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("pointnet_width: 64\n")
    with pytest.raises(SystemExit):
        parse("ultrasound", "", UltrasoundOptions, argv=["--config", str(tmp_path / "c.yaml")])


@pytest.mark.parametrize(
    "config,message",
    [
        ("stage: bogus\n", "--stage bogus: choose all or from"),
        ("batch_size: -4\n", "--batch-size must be >= 1"),
        ("max_steps: many\n", "argument --max-steps: invalid int value: 'many'"),
        ("resume: maybe\n", "argument --resume"),
    ],
)
def test_parse__config_values_pass_the_flags_checks(tmp_path, config, message, capsys):
    (tmp_path / "c.yaml").write_text(config)
    with pytest.raises(SystemExit) as e:
        parse("ultrasound", "", UltrasoundOptions, argv=["--config", str(tmp_path / "c.yaml")])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_parse__a_volume_runs_config_yaml_round_trips_with_tuples_and_booleans(tmp_path):
    opts = parse("volumes", "", VolumeOptions, argv=["--roi", "96,96,32", "--no-crop-foreground", "--volume-4d", "2"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(opts.flat()))))  # as run() writes it
    assert parse("volumes", "", VolumeOptions, argv=["--config", str(tmp_path / "config.yaml")]) == opts
