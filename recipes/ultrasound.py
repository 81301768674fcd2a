"""Ultrasound: MAE pretraining, linear probe and fine-tuning on B-mode images and cine loops.

accelerate launch recipes/ultrasound.py                      # built-in phantom, all stages
accelerate launch recipes/ultrasound.py --data DIR           # labels.csv or <class>/ folders
accelerate launch --multi_gpu --num_processes 2 recipes/ultrasound.py --stage pretrain
"""

from foundations.masking import MaskConfig
from foundations.recipe import build_parser, mask_config, parse_args, run, run_main
from modalities.ultrasound import build_domain


def main():
    parser = build_parser("ultrasound", __doc__.splitlines()[0])
    g = parser.add_argument_group("ultrasound")
    g.add_argument("--image-size", type=int, default=128, help="square training size in pixels")
    g.add_argument("--patch", type=int, default=16, help="patch size in pixels")
    g.add_argument("--frames-per-clip", type=int, default=8, help="frames taken from each cine loop")
    g.add_argument("--phantom-per-class", type=int, default=160, help="built-in phantom images per class")
    args = parse_args(parser)
    data = build_domain(
        args.data,
        args.eval_data,
        args.image_size,
        args.patch,
        args.frames_per_clip,
        args.phantom_per_class,
        mask_config(args, MaskConfig("random", 0.75, block_tokens=8)),
        args.seed,
        args.skip_bad_files,
    )
    run(args, data)


if __name__ == "__main__":
    run_main(main)
