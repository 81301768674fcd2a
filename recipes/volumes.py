"""3-D medical volumes (CT, MRI): MAE pretraining, then classification or UNETR segmentation.

accelerate launch recipes/volumes.py                                # built-in synthetic set, classify
accelerate launch recipes/volumes.py --task segment                 # the same set, segment the spheres
accelerate launch recipes/volumes.py --data DIR --window abdomen    # labels.csv or <class>/ folders of NIfTI
accelerate launch recipes/volumes.py --task segment --data DIR      # imagesTr/ + labelsTr/, or <name>_seg.nii.gz
accelerate launch recipes/volumes.py --data train.npz               # MedMNIST-3D arrays ({split}_images/_labels)
"""

from modalities.volume.data import VolumeOptions, build_domain
from tasks import segment
from tasks.options import parse
from tasks.run import run, run_main

DEFAULTS = {"batch_size": 16, "finetune_steps": 200, "probe_steps": 200, "finetune_lr": 1e-2}


def main():
    opts = parse("volumes", __doc__.splitlines()[0], VolumeOptions, DEFAULTS)
    data = build_domain(opts.source, opts.domain)
    run(opts, data, segment.STAGES if opts.domain.task == "segment" else None)


if __name__ == "__main__":
    run_main(main)
