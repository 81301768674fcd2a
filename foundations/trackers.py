"""Experiment trackers, through Accelerate's own: TensorBoard, Weights & Biases, MLflow.

``fit`` hands every log record to ``Accelerator.log``; Accelerate has no call for pictures, which
``log_image`` adds for the three. Each writes on this machine by default and none needs the
network: TensorBoard's event files and wandb's offline run go under the run folder, MLflow to its
tracking store (``MLFLOW_TRACKING_URI``, a local one in the working directory unless set).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker, on_main_process
from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

# name -> (whether it is installed, what it needs); Accelerate itself would drop a missing one silently
TRACKERS = {
    "tensorboard": (is_tensorboard_available, "the tensorboard package: pip install 'mae-foundations[trackers]'"),
    "wandb": (is_wandb_available, "the wandb package: pip install wandb"),
    "mlflow": (is_mlflow_available, "the mlflow package: pip install mlflow"),
}


def missing(name: str) -> str | None:
    """What tracker ``name`` needs that is not installed, or None."""
    installed, needs = TRACKERS[name]
    return None if installed() else needs


class StagedWandB(WandBTracker):
    """wandb drops a record whose step is not past the last one, and every stage counts its steps
    from 1: a stage's figures are plotted against its own ``<stage>/step`` instead."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stages = set()

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        stages = {k.split("/")[0] for k in values if "/" in k}
        for stage in stages - self.stages:
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        self.stages |= stages
        steps = {} if step is None else {f"{stage}/step": step for stage in stages}
        self.run.log({**values, **steps}, **kwargs)


def tracker(name: str, folder: Path, project: str, run_name: str) -> GeneralTracker:
    """Accelerate's tracker ``name`` writing locally: TensorBoard's event files in
    ``folder/tensorboard``, wandb's run in ``folder/wandb`` (offline unless WANDB_MODE says
    otherwise; ``wandb sync`` uploads it later), MLflow's in its tracking store."""
    if name == "tensorboard":
        return TensorBoardTracker("tensorboard", folder)
    if name == "wandb":
        mode = os.environ.get("WANDB_MODE", "offline")
        return StagedWandB(project, name=run_name, dir=str(folder), mode=mode)
    if name == "mlflow":
        return MLflowTracker(experiment_name=project, run_name=run_name)
    raise ValueError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")


def log_image(acc: Accelerator, tag: str, image: np.ndarray, step: int) -> None:
    """A uint8 picture, (H, W) or (H, W, C), to every tracker of ``acc`` (the main process holds
    them): each takes pictures through its own call."""
    for t in acc.trackers:
        if t.name == "tensorboard":
            t.writer.add_image(tag, image, step, dataformats="HWC" if image.ndim == 3 else "HW")
            t.writer.flush()
        elif t.name == "wandb":
            import wandb

            t.log({tag: wandb.Image(image)}, step=step)
        elif t.name == "mlflow":
            import mlflow

            mlflow.log_image(image, key=tag, step=step)
