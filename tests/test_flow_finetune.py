"""The ``finetune-nerfmae`` flow on a three-room store of exact synthetic grids (32 voxels,
with semantic labels and boxes): a two-step ``tiny`` pretraining gives the checkpoint, then
one fine-tuning epoch (semantics, detection). The figures are about what the flow runs and
reports, not about quality.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

# Prefect's private home and settings: tests/conftest.py (read before any import).
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RES = 32
SCENES = ["room_0", "room_1", "room_2"]
VAL = ["room_2"]
FAST = {"num_workers": 0, "val_scenes": VAL, "device": "cpu"}


@pytest.fixture(scope="module")
def labelled_store(tmp_path_factory) -> str:
    """Three rooms' exact grids, with ``semantic`` labels, ``semantic_classes`` and boxes."""
    from grid_store import GridStore
    from pipeline.synthetic.ground_truth import sample_ground_truth
    from pipeline.synthetic.room import make_room

    url = str(tmp_path_factory.mktemp("finetune") / "grids.zarr")
    store = GridStore(url)
    for seed, scene in enumerate(SCENES):
        store.write_grid(scene, sample_ground_truth(make_room(seed), RES).with_empty_space(0.01))
    return url


@pytest.fixture(scope="module")
def checkpoint(labelled_store, tmp_path_factory) -> str:
    """A one-step ``tiny`` pretraining run's checkpoint on ``labelled_store``."""
    from model.tasks.pretrain import PretrainConfig, pretrain

    summary = pretrain(
        PretrainConfig(
            store_url=labelled_store,
            out_dir=str(tmp_path_factory.mktemp("mae") / "run"),
            preset="tiny",
            resolution=RES,
            epochs=1,
            batch_size=2,
            num_workers=0,
            val_scenes=VAL,
            device="cpu",
        )
    )
    assert Path(summary["checkpoint"]).is_file()
    return summary["checkpoint"]


def run_artifact(state, kind: str):
    """The one artifact of type ``kind`` of the flow run that ended in ``state``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    (art,) = [a for a in arts if a.type == kind]
    return art


# ----------------------------------------------------------------- plain functions
def test_command_line_is_what_model_finetune_parses_back():
    import dataclasses

    from flows.finetune import TASKS
    from flows.training_runs import torchrun_command
    from model.finetune import build_arg_parser, config_from_namespace
    from model.tasks import FINETUNE_TASKS, make_config

    assert TASKS == FINETUNE_TASKS
    config = make_config(
        "superres",
        store_url="s3://b/g.zarr",
        out_dir="/tmp/run",
        pretrained="/tmp/mae/checkpoints/latest.pt",
        target_store_url="s3://b/g384.zarr",
        train_scenes=["a", "b"],
        label_fraction=0.5,
        allow_resolution_change=True,
        preset="tiny",
        max_steps=3,
    )
    command = torchrun_command(config, 2)
    assert command[1:7] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "model.finetune"
    ]  # fmt: skip
    assert config_from_namespace(build_arg_parser().parse_args(command[7:])) == config
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "target_store_url"}
    detect = make_config("detect", **fields, detector_overrides={"channels": 16})
    command = torchrun_command(detect, 1)
    assert config_from_namespace(build_arg_parser().parse_args(command[7:])) == detect


def test_markdown_reports_each_task_in_per_cent_with_embedded_pictures(tmp_path):
    import base64
    import json

    from PIL import Image

    from flows.training_runs import PICTURE_MAX_EDGE, report_markdown

    def metrics_markdown(summary, store):
        return report_markdown(summary, store, f"NeRF-MAE fine-tuning: {summary['task']}")

    picture = tmp_path / "boxes" / "step_000004.png"
    picture.parent.mkdir()
    Image.new("RGB", (3000, 600), "white").save(picture)
    config = tmp_path / "config.json"
    val = [f"room_{i:03d}" for i in range(25)]
    config.write_text(json.dumps({"resolved": {"val_scenes": val}}))
    common = {"steps": 4, "init": "scratch", "transfer": None, "train_loss": 0.5,
              "val_loss": 0.25, "run_dir": "/r", "checkpoint": "/r/c.pt"}  # fmt: skip
    semantics = metrics_markdown(
        {**common, "task": "semantics", "val_miou": 0.125, "val_macc": 0.5, "val_allacc": 0.75,
         "val_per_class_iou": {"wall|floor": 0.25}, "val_per_class_acc": {"wall|floor": 1.0}},
        "s.zarr",
    )  # fmt: skip
    assert "| val mIoU (%) | 12.5 |" in semantics and "| val allAcc (%) | 75 |" in semantics
    assert "| class | IoU (%) | accuracy (%) |" in semantics
    assert "| wall\\|floor | 25 | 100 |" in semantics and "| val loss | 0.25 |" in semantics
    assert "| transfer | none (from scratch) |" in semantics and "PSNR" not in semantics
    assert "- validation pictures: none" in semantics and "Validation scenes" not in semantics
    superres = metrics_markdown(
        {**common, "task": "superres", "val_psnr": 21.5, "val_mean_batch_psnr": 20.25,
         "val_mse": 0.007},
        "s.zarr",
    )  # fmt: skip
    assert "| val PSNR, pooled (dB) | 21.5 |" in superres
    assert "| val PSNR, mean of batches (dB) | 20.25 |" in superres
    assert "| val MSE | 0.007 |" in superres and "mIoU" not in superres and "%" not in superres
    transfer = {"summary": "a long line of modules", "loaded": 1234, "pretrain_step": 500,
                "pretrain_epoch": 7, "fresh": ["h.w"] * 12, "dropped": ["d.w"] * 3}  # fmt: skip
    detect = metrics_markdown(
        {**common, "task": "detect", "init": "pretrained", "transfer": transfer,
         "config_path": str(config), "val_ap25": 0.5, "val_ap50": 0.25,
         "val_recall50@300": 0.75, "val_recall50@1000": 0.875, "val_recall50@2500": 1.0,
         "val_num_gt": 8, "val_num_detections": 40, "val_loss_cls": 0.125,
         "val_loss_reg": 0.0625, "val_loss_ctr": 0.0625, "detector": {"channels": 16},
         "boxes_png": str(picture), "val_per_class_ap25": {"chair": 0.5, "bed": 0.25},
         "val_per_class_ap50": {"chair": None, "bed": 0.125}},
        "s.zarr",
    )  # fmt: skip
    assert "| transfer | 1234 tensors from step 500; 12 fresh, 3 dropped |" in detect
    assert f"- tensors loaded, fresh and dropped: `{config}`" in detect
    assert "| val AP25 (%) | 50 |" in detect and "| val AP50 (%) | 25 |" in detect
    assert "| val recall50@300 (%) | 75 |" in detect and "| val recall50@2500 (%) | 100 |" in detect
    assert "| val GT boxes / detections | 8 / 40 |" in detect
    assert "| val loss (cls / reg / ctr) | 0.125 / 0.0625 / 0.0625 |" in detect
    assert "| FPN channels | 16 |" in detect and "mIoU" not in detect and "PSNR" not in detect
    assert "| class | AP25 (%) | AP50 (%) |" in detect and "| chair | 50 | None |" in detect
    assert "| bed | 25 | 12.5 |" in detect
    names = ", ".join(f"`{name}`" for name in val[:20])
    assert f"Validation scenes (25): {names} and 5 more" in detect
    # the picture travels in the artifact, downscaled; no link to the worker's disk
    assert "file:" not in detect and f"- validation pictures: `{picture.parent}`" in detect
    (uri,) = re.findall(r"!\[boxes\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", detect)
    with Image.open(io.BytesIO(base64.b64decode(uri))) as shown:
        assert shown.size == (PICTURE_MAX_EDGE, PICTURE_MAX_EDGE // 5)
    assert "Per-class AP" not in superres


@pytest.mark.parametrize(
    ("name", "task"), [("finetune-nerfmae", "semantics"), ("finetune-detect", "detect")]
)
def test_deployment_parameters_build_a_finetune_config(name, task):
    import inspect

    import yaml

    from flows.finetune import finetune_config, finetune_nerfmae
    from model.networks.detector import DetectorConfig

    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    (deployment,) = [d for d in deployments if d["name"] == name]
    assert deployment["entrypoint"] == "flows/finetune.py:finetune_nerfmae"
    params = dict(deployment["parameters"])
    assert set(params) <= set(inspect.signature(finetune_nerfmae.fn).parameters)
    options = params.pop("options", {})
    if "fpn_channels" in params:  # what the flow does with it
        options["detector_overrides"] = {"channels": params.pop("fpn_channels")}
    renamed = {"store": "store_url", "target_store": "target_store_url"}
    fields = {renamed.get(k, k): v for k, v in params.items()
              if k not in ("runs_dir", "nproc_per_node")}  # fmt: skip
    config = finetune_config(fields.pop("task"), {"out_dir": "o", **fields, **options})
    assert config.store_url == "data/grids.zarr" and config.pretrained  # the user sets it
    assert config.task == task
    if task == "detect":
        assert DetectorConfig(**config.detector_overrides).channels == 64
        assert params["runs_dir"] == "runs/detect"


def test_command_line_passes_its_flags_to_the_flow(monkeypatch, capsys):
    import json

    import flows.finetune as module

    seen = {}

    def fake_flow(**kwargs):
        seen.update(kwargs)
        return {"task": kwargs["task"]}

    monkeypatch.setattr(module, "finetune_nerfmae", fake_flow)
    argv = ["--store", "g.zarr", "--task", "superres", "--target-store", "g2.zarr", "--scratch",
            "--label-fraction", "0.5", "--options", '{"max_steps": 3}']  # fmt: skip
    assert module.main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"task": "superres"}
    assert seen["scratch"] and seen["pretrained"] is None and seen["target_store"] == "g2.zarr"
    assert seen["label_fraction"] == 0.5 and seen["options"] == {"max_steps": 3}
    assert seen["out_dir"] is None and seen["runs_dir"] == "runs/finetune"
    assert seen["fpn_channels"] is None
    assert module.main(["--store", "g.zarr", "--task", "detect", "--scratch",
                        "--fpn-channels", "16"]) == 0  # fmt: skip
    assert seen["task"] == "detect" and seen["fpn_channels"] == 16
    capsys.readouterr()
    with pytest.raises(SystemExit):  # one of --pretrained and --scratch, not both
        module.main(["--store", "g.zarr", "--pretrained", "c.pt", "--scratch"])
    with pytest.raises(SystemExit):
        module.main(["--store", "g.zarr"])


# ----------------------------------------------------------------- flow
def test_finetune_flow_from_a_checkpoint_reports_semantics(
    prefect_api, labelled_store, checkpoint, tmp_path
):
    import logging

    from flows.finetune import finetune_nerfmae

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    flow_logs = Lines()
    logging.getLogger("prefect.flow_runs").addHandler(flow_logs)
    try:
        state = finetune_nerfmae(
            store=labelled_store,
            task="semantics",
            pretrained=checkpoint,
            runs_dir=str(tmp_path / "runs"),
            resolution=RES,
            epochs=1,
            batch_size=2,
            options=FAST,
            return_state=True,
        )
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(flow_logs)
    assert state.is_completed()
    summary = state.result()
    assert summary["task"] == "semantics" and summary["init"] == "pretrained"
    assert summary["steps"] == 1 and summary["val_scenes"] == 1
    assert summary["train_scenes"] == summary["labelled_scenes"] == 2
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["val_loss"])
    for key in ("val_miou", "val_macc", "val_allacc"):
        assert 0.0 <= summary[key] <= 1.0, (key, summary[key])
    assert summary["val_per_class_iou"] and "loaded" in summary["transfer"]["summary"]
    assert Path(summary["run_dir"]).parent == tmp_path / "runs"  # a new dated folder
    assert Path(summary["checkpoint"]).is_file() and Path(summary["labels_png"]).is_file()

    markdown = run_artifact(state, "markdown").data
    assert markdown.startswith("# NeRF-MAE fine-tuning: semantics")
    assert f"| val mIoU (%) | {100 * summary['val_miou']:.4g} |" in markdown
    assert f"| val allAcc (%) | {100 * summary['val_allacc']:.4g} |" in markdown
    transfer = summary["transfer"]
    assert "| init | pretrained |" in markdown
    row = (
        f"| transfer | {transfer['loaded']} tensors from step {transfer['pretrain_step']}; "
        f"{len(transfer['fresh'])} fresh, {len(transfer['dropped'])} dropped |"
    )
    assert row in markdown
    for name, iou in summary["val_per_class_iou"].items():
        assert f"| {name} | {100 * iou:.4g} |" in markdown
    assert "Validation scenes (1): `room_2`" in markdown
    assert "](data:image/png;base64," in markdown and "file:" not in markdown
    assert f"- checkpoint: `{summary['checkpoint']}`" in markdown
    # one short line, not the summary with the transfer report's tensor names
    (done,) = [line for line in flow_logs.lines if " done: " in line]
    assert done == (
        f"semantics fine-tuning (pretrained) done: val mIoU {100 * summary['val_miou']:.4g} %; "
        f"train loss {summary['train_loss']:.4g}; run folder {summary['run_dir']}"
    )


def test_unlabelled_store_and_bad_init_fail_before_training(prefect_api, checkpoint, tmp_path):
    from flows.finetune import finetune_nerfmae
    from grid_store import GridStore, RadianceGrid

    url = str(tmp_path / "plain.zarr")
    store = GridStore(url)
    for seed, scene in enumerate(("a", "b")):
        rgba = np.random.default_rng(seed).random((4, 8, 8, 8), dtype=np.float32)
        store.write_grid(
            scene,
            RadianceGrid(rgba=rgba, bbox_min=np.zeros(3), bbox_max=np.full(3, 0.7),
                         voxel_size=0.1, delta=0.1),
        )  # fmt: skip
    # dated run folders: each failed run removes its own, as nothing was written into it
    runs = tmp_path / "runs"
    run = {"store": url, "epochs": 1, "batch_size": 1, "options": {**FAST, "val_scenes": ["b"]},
           "runs_dir": str(runs)}  # fmt: skip
    with pytest.raises(ValueError, match=r"have no semantic labels"):
        finetune_nerfmae(**run, pretrained=checkpoint)
    with pytest.raises(ValueError, match="exactly one of a pretraining checkpoint"):
        finetune_nerfmae(**run, pretrained=checkpoint, scratch=True)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):  # prefect.yaml's default
        finetune_nerfmae(**run, pretrained="runs/pretrain-mae/RUN/checkpoints/latest.pt")
    assert runs.is_dir() and not any(runs.iterdir())


def test_finetune_flow_detects_boxes_and_reports_ap(
    prefect_api, labelled_store, checkpoint, tmp_path
):
    from flows.finetune import finetune_nerfmae

    state = finetune_nerfmae(
        store=labelled_store,
        task="detect",
        pretrained=checkpoint,
        out_dir=str(tmp_path / "detect"),
        resolution=RES,
        epochs=1,
        batch_size=2,
        fpn_channels=16,
        options={**FAST, "detector_overrides": {"num_convs": 1}},
        return_state=True,
    )
    assert state.is_completed()
    summary = state.result()
    assert summary["task"] == "detect" and summary["init"] == "pretrained"
    assert summary["steps"] == 1 and summary["val_scenes"] == 1
    assert summary["detector"]["channels"] == 16 and summary["detector"]["num_convs"] == 1
    assert 0.0 <= summary["val_ap50"] <= 1.0 and 0.0 <= summary["val_recall50@300"] <= 1.0
    assert math.isfinite(summary["train_loss"]) and Path(summary["boxes_png"]).is_file()

    markdown = run_artifact(state, "markdown").data
    assert markdown.startswith("# NeRF-MAE fine-tuning: detect")
    assert f"| val AP50 (%) | {100 * summary['val_ap50']:.4g} |" in markdown
    assert f"| val AP25 (%) | {100 * summary['val_ap25']:.4g} |" in markdown
    assert f"| val recall50@1000 (%) | {100 * summary['val_recall50@1000']:.4g} |" in markdown
    assert "| FPN channels | 16 |" in markdown and "mIoU" not in markdown
    assert "![boxes](data:image/png;base64," in markdown and "file:" not in markdown

    with pytest.raises(ValueError, match="only the detect task has an FPN"):
        finetune_nerfmae(store=labelled_store, scratch=True, fpn_channels=16,
                         out_dir=str(tmp_path / "semantics"))  # fmt: skip
    assert not (tmp_path / "semantics").exists()


@pytest.mark.slow
def test_finetune_flow_runs_torchrun_for_several_processes(
    prefect_api, labelled_store, checkpoint, tmp_path
):
    import json

    from flows.finetune import finetune_nerfmae

    state = finetune_nerfmae(
        store=labelled_store,
        pretrained=checkpoint,
        out_dir=str(tmp_path / "run"),
        resolution=RES,
        epochs=1,
        batch_size=2,
        nproc_per_node=2,
        options=FAST,
        return_state=True,
    )
    summary = state.result()
    assert summary["world_size"] == 2 and summary["steps"] == 1
    assert summary["init"] == "pretrained" and 0.0 <= summary["val_miou"] <= 1.0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == summary
    markdown = run_artifact(state, "markdown").data
    assert f"| val mIoU (%) | {100 * summary['val_miou']:.4g} |" in markdown
