"""Radiance grids (NeRF-MAE): MAE pretraining on RGB + opacity voxel grids, linear probe and fine-tuning.

accelerate launch recipes/nerf.py                 # built-in procedural scenes of open3d primitives, 5 classes
accelerate launch recipes/nerf.py --data DIR      # labels.csv or <class>/ folders of baked grids (.npz)
python -m modalities.nerf.bake SCENE OUT.npz      # bake a grid from posed photos (Blender or instant-ngp)
"""

from modalities.nerf.data import NerfOptions, build_domain
from tasks.options import parse
from tasks.run import run, run_main

# a short default job on a CPU: 512 tokens a 32^3 grid, 128 of them visible
DEFAULTS = {"batch_size": 16, "max_steps": 300, "finetune_steps": 150, "probe_steps": 200}


def main():
    opts = parse("nerf", __doc__.splitlines()[0], NerfOptions, DEFAULTS)
    run(opts, build_domain(opts.source, opts.domain))


if __name__ == "__main__":
    run_main(main)
