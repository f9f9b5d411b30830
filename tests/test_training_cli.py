"""Command lines generated from the config classes: every field a flag with its docstring as
help, the old spellings kept as aliases, and a config's flags parse back to the config."""

from __future__ import annotations

import dataclasses

import pytest

from model.finetune import build_arg_parser as finetune_parser
from model.finetune import config_from_namespace, task_first
from model.pretrain import build_arg_parser as pretrain_parser
from model.tasks import FINETUNE_TASKS, TASKS, make_config, task_class
from model.tasks.pretrain import PretrainConfig
from model.training.cli import config_argv, config_from_args, field_docs, flag_message

BASE = ["--store", "g.zarr", "--out", "run"]


def _finetune(argv):
    return config_from_namespace(finetune_parser().parse_args(task_first(argv)))


def _pretrain(argv):
    return config_from_args(PretrainConfig, pretrain_parser().parse_args(argv))


@pytest.mark.parametrize("name", list(TASKS))
def test_every_field_of_every_task_parses_back_from_its_flags(name):
    config_class = task_class(name).config_class
    changed = {
        "preset": "tiny", "resolution": 64, "model_overrides": {"mask_ratio": 0.5},
        "scenes": ["a", "b"], "alpha_step": 0.02, "epochs": 3, "batch_size": 4,
        "grad_accum_steps": 2, "lr": 5e-4,
        "weight_decay": 0.0, "pct_start": 0.2, "clip_grad_norm": 1.0, "val_fraction": 0.1,
        "val_scenes": ["c"], "crop": "random", "augment": name != "pretrain",
        "num_workers": 0, "log_every": 2, "eval_every": 3, "checkpoint_every": 4,
        "keep_checkpoints": 0, "max_steps": 9, "seed": 7, "device": "cpu", "amp": "off",
        "resume": True, "check_memory": False, "memory_limit_gb": 3.5,
    }  # fmt: skip
    if name != "pretrain":
        changed.update(pretrained="c.pt", allow_resolution_change=True, train_scenes=["a"],
                       label_fraction=0.5, freeze_pretrained=True, carried_lr_scale=0.1,
                       frozen_warmup=0.2, window_overlap=0.25, carried_stages=2,
                       carried_share=0.5)  # fmt: skip
    else:
        changed.update(objective="paper", rgb_schedule="cosine", rgb_ramp=0.5,
                       shuffle_targets=True)  # fmt: skip
    changed.update({"semantics": {"num_classes": 5, "network": "encoder_path"},
                    "superres": {"target_store_url": "t.zarr"},
                    "detect": {"num_classes": 3, "detector_overrides": {"channels": 16},
                               "scale_size_ranges": True}}
                   .get(name, {}))  # fmt: skip
    fields = {f.name for f in dataclasses.fields(config_class)}
    # every field but the run's place (and scratch, the alternative to pretrained) differs
    assert fields - {"store_url", "out_dir", "scratch"} == set(changed), "a field left out"
    config = make_config(name, store_url="s3://b/g.zarr", out_dir="/r", **changed)
    argv = config_argv(config)
    parsed = _pretrain(argv) if name == "pretrain" else _finetune([name, *argv])
    assert parsed == config


def test_fields_the_hand_written_command_lines_could_not_reach_are_flags_with_help():
    help_text = finetune_parser()._subparsers._group_actions[0].choices["detect"].format_help()
    for flag in ("--freeze-pretrained", "--grad-accum-steps", "--crop", "--pct-start",
                 "--clip-grad-norm", "--keep-checkpoints", "--model-overrides", "--scenes",
                 "--detector-overrides"):  # fmt: skip
        assert flag in help_text, flag
    docs = field_docs(task_class("detect").config_class)
    assert docs["label_fraction"].startswith("Share of the training scenes")
    assert "Share of the training scenes" in help_text  # the help is the field's docstring
    assert "(default: 3e-4)" in help_text.replace("0.0003", "3e-4")  # fine-tuning's lr


def test_old_spellings_still_work():
    grad = [BASE + ["--grad-accum", "2"], BASE + ["--grad-accum-steps", "2"]]
    assert {_pretrain(argv).grad_accum_steps for argv in grad} == {2}
    tuned = [["semantics", *argv, "--scratch"] for argv in grad]
    assert {_finetune(argv).grad_accum_steps for argv in tuned} == {2}
    sr = _finetune(["superres", *BASE, "--scratch", "--target-store", "t.zarr"])
    assert sr.target_store_url == "t.zarr"
    detect = _finetune(["--task", "detect", *BASE, "--pretrained", "c.pt", "--fpn-channels", "32",
                        "--num-classes", "4", "--augment", "--allow-resolution-change"])
    assert detect.detector_overrides == {"channels": 32} and detect.num_classes == 4
    assert detect.augment and detect.allow_resolution_change and detect.pretrained == "c.pt"
    semantics = _finetune(["semantics", *BASE, "--scratch", "--train-scenes", "a", "b",
                           "--label-fraction", "0.5", "--val-scenes", "c", "--no-augment",
                           "--max-steps", "3", "--resume", "--amp", "off"])  # fmt: skip
    assert semantics.train_scenes == ["a", "b"] and semantics.val_scenes == ["c"]
    assert semantics.max_steps == 3 and semantics.resume and semantics.amp == "off"


def test_flags_left_out_keep_each_tasks_defaults_and_bad_values_are_refused():
    assert _pretrain(BASE) == PretrainConfig(store_url="g.zarr", out_dir="run")
    for name in FINETUNE_TASKS:
        extra = ["--target-store", "t"] if name == "superres" else []
        config = _finetune([name, *BASE, "--scratch", *extra])
        assert config.lr == 3e-4 and config.batch_size == 8 and config.task == name
    with pytest.raises(SystemExit):
        _pretrain([*BASE, "--amp", "fp16"])  # not a choice
    with pytest.raises(SystemExit):
        _finetune(["semantics", *BASE, "--scratch", "--fpn-channels", "8"])  # detect's only
    with pytest.raises(ValueError, match=r"PretrainConfig\.weight_decay"):
        PretrainConfig(store_url="s", out_dir="o", weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"PretrainConfig\.clip_grad_norm"):
        PretrainConfig(store_url="s", out_dir="o", clip_grad_norm=0.0)


def test_command_lines_name_the_flag_and_the_python_api_the_field(tmp_path, capsys):
    from model.finetune import main as finetune_main
    from model.pretrain import main as pretrain_main

    out = str(tmp_path / "run")
    assert finetune_main(["detect", "--store", "g.zarr", "--out", out, "--scratch",
                          "--epochs", "0"]) == 2  # fmt: skip
    assert "error: --epochs: must be >= 1, got 0\n" in capsys.readouterr().err
    assert pretrain_main(["--store", "", "--out", out]) == 2  # an alias: the flag typed
    assert "error: --store: must name a grid store, got ''\n" in capsys.readouterr().err
    assert flag_message(PretrainConfig, "PretrainConfig: rgb_schedule: 'x' is not one of") == (
        "--rgb-schedule: 'x' is not one of")
    for untouched in ("g.zarr: scenes: ['x'] are not complete scenes", "Other.lr: bad",
                      "no_such_field: bad"):  # fmt: skip
        assert flag_message(PretrainConfig, untouched) == untouched
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"^PretrainConfig\.epochs: must be >= 1"):
        PretrainConfig(store_url="s", out_dir="o", epochs=0)
