"""Radiance grids (NeRF-MAE): MAE pretraining on RGB + opacity voxel grids, then scene labels or voxel labelling.

accelerate launch recipes/nerf.py                       # built-in procedural scenes of open3d primitives, 5 classes
accelerate launch recipes/nerf.py --task segment        # the same scenes, every voxel labelled empty or its kind
accelerate launch recipes/nerf.py --data DIR            # labels.csv or <class>/ folders of baked grids (.npz)
accelerate launch recipes/nerf.py --data SCENES         # <class>/<scene>/ posed photos, baked into OUT/grids first
accelerate launch recipes/nerf.py --data SCENES --stage bake   # bake them (cached) and stop
python -m modalities.nerf.bake SCENE OUT.npz            # bake one grid from posed photos (Blender or instant-ngp)
"""

import dataclasses
from pathlib import Path

from accelerate import PartialState

from modalities.nerf.data import NerfOptions, bake_scenes, build_domain, find_scenes
from tasks.options import parse
from tasks.run import run, run_main
from tasks.voxel_labels import STAGES

# a short default job on a CPU: 64 tokens a 32^3 grid (patch 8), 16 of them visible, about 0.15 s a pretraining
# step of the mini encoder on one busy core (tiny on 512 tokens: 2 s); what was tried: data_cards/nerf_procedural.md.
# Random masks: the adapter's blobs of 64 tokens would hide three quarters of such a grid in one piece
DEFAULTS = {
    "batch_size": 16,
    "preset": "mini",
    "mask": "random",
    "lr": 1e-2,
    "max_steps": 1500,
    "finetune_steps": 150,
    "probe_steps": 200,
}


def main():
    opts = parse("nerf", __doc__.splitlines()[0], NerfOptions, DEFAULTS)
    source, baked = opts.source, None
    if "bake" in opts.run.stage.split(",") or (source.data is not None and find_scenes(source.data)):
        grids, state = Path(opts.run.out) / "grids", PartialState()
        if state.is_main_process:  # the others wait, then read what it baked
            baked = bake_scenes(
                source.data, grids, opts.domain, opts.run.overwrite, source.skip_bad_files, source.progress
            )
        state.wait_for_everyone()
        source = dataclasses.replace(source, data=str(grids))
    if opts.run.stages:  # anything but --stage bake alone
        data = build_domain(source, opts.domain, baked)
        run(opts, data, STAGES if opts.domain.task == "segment" else None)


if __name__ == "__main__":
    run_main(main)
