"""3-D medical volumes (CT, MRI): MAE pretraining, then classification or UNETR segmentation.

accelerate launch recipes/volumes.py                                # built-in synthetic set, classify
accelerate launch recipes/volumes.py --task segment                 # the same set, segment the spheres
accelerate launch recipes/volumes.py --data DIR --window abdomen    # labels.csv or <class>/ folders of NIfTI
accelerate launch recipes/volumes.py --task segment --data DIR      # imagesTr/ + labelsTr/, or <name>_seg.nii.gz
accelerate launch recipes/volumes.py --data train.npz               # MedMNIST-3D arrays ({split}_images/_labels)
"""

from foundations.masking import MaskConfig
from foundations.recipe import build_parser, mask_config, parse_args, run, run_main
from modalities.volume import INTENSITY, PipelineConfig, build_domain


def triple(kind):
    def parse(text: str):
        values = [kind(v) for v in text.replace("x", ",").split(",")]
        return tuple(values * 3 if len(values) == 1 else values)

    return parse


def main():
    parser = build_parser("volumes", __doc__.splitlines()[0])
    parser.set_defaults(batch_size=16, max_steps=600, finetune_steps=200, probe_steps=200, finetune_lr=1e-2)
    g = parser.add_argument_group("volumes")
    g.add_argument(
        "--task",
        choices=("classify", "segment"),
        default="classify",
        help="classify: linear probe and fine-tuning on volume labels; segment: UNETR on label volumes "
        "(probe = frozen encoder), Dice by sliding windows over whole held-out volumes",
    )
    g.add_argument(
        "--window",
        choices=INTENSITY,
        help="intensity preset: CT windows in HU (abdomen -175..250, lung -1350..150, brain 0..80, "
        "wide -1000..1000) scaled to 0..1; mri = z-score of non-zero voxels per channel; unit = "
        "min-max to 0..1. Unset: mri for NIfTI, unit for arrays",
    )
    g.add_argument(
        "--spacing",
        type=triple(float),
        help="resample to this voxel spacing in mm, e.g. 1.5 or 1,1,3; unset keeps the file's",
    )
    g.add_argument("--roi", type=triple(int), default=(64, 64, 64), help="crop size in voxels, e.g. 96 or 96,96,32")
    g.add_argument("--patch", type=triple(int), default=(16, 16, 16), help="patch size in voxels, e.g. 16 or 16,16,4")
    g.add_argument("--samples", type=int, default=2, help="random crops per volume and epoch")
    g.add_argument("--no-crop-foreground", action="store_true", help="keep the background around the body")
    g.add_argument(
        "--volume-4d",
        type=lambda text: text if text == "stack" else int(text),
        help="4-D files (DWI, fMRI): 'stack' their volumes as channels, or an index N to select one",
    )
    g.add_argument("--classes", type=int, default=2, help="segmentation classes, background included")
    g.add_argument("--mix-2d", type=float, default=0.0, help="fraction of pretraining batches that are 2-D slices")
    g.add_argument("--synthetic-per-class", type=int, default=64, help="built-in synthetic volumes per class")
    args = parse_args(parser)
    pipe = PipelineConfig(
        args.roi, args.window, args.spacing, crop_foreground=not args.no_crop_foreground, samples=args.samples
    )
    data = build_domain(
        args.data,
        args.eval_data,
        args.task,
        pipe,
        args.patch,
        args.classes,
        args.volume_4d,
        args.mix_2d,
        args.synthetic_per_class,
        mask=mask_config(args, MaskConfig("random", 0.75)),
        seed=args.seed,
        skip_bad=args.skip_bad_files,
    )
    run(args, data)


if __name__ == "__main__":
    run_main(main)
