"""Point clouds: Point-MAE-style pretraining, linear probe and fine-tuning, on CPU or GPU.

accelerate launch recipes/pointcloud.py                  # built-in open3d shapes, all stages
accelerate launch recipes/pointcloud.py --data DIR       # <class>/<split>/<file>, labels.csv or *.npz
accelerate launch --multi_gpu --num_processes 2 recipes/pointcloud.py --stage pretrain
"""

from foundations.masking import MaskConfig
from foundations.recipe import build_parser, mask_config, parse_args, run, run_main
from modalities.pointcloud import build_domain


def main():
    parser = build_parser("pointcloud", __doc__.splitlines()[0])
    g = parser.add_argument_group("point clouds")
    g.add_argument("--points", type=int, default=1024, help="points per cloud")
    g.add_argument("--groups", type=int, default=64, help="tokens: FPS centres per cloud")
    g.add_argument("--group-size", type=int, default=32, help="points per group (kNN)")
    g.add_argument("--sampling", choices=("uniform", "poisson"), default="uniform", help="mesh surface sampling")
    g.add_argument("--votes", type=int, default=1, help="test-time voting over augmented views")
    g.add_argument("--pointnet-width", type=int, default=128, help="group encoder width (256 = Point-MAE's)")
    # a short default job on a CPU; on a GPU raise them (e.g. --epochs 300 --pointnet-width 256)
    parser.set_defaults(max_steps=200, finetune_steps=60)
    g.add_argument("--shapes-per-class", type=int, default=40, help="built-in shapes per class")
    args = parse_args(parser)
    data = build_domain(
        args.data,
        args.eval_data,
        args.points,
        args.groups,
        args.group_size,
        args.shapes_per_class,
        mask_config(args, MaskConfig("random", 0.6, block_tokens=args.groups)),
        args.seed,
        args.votes,
        args.sampling,
        args.skip_bad_files,
        pointnet_width=args.pointnet_width,
    )
    run(args, data)


if __name__ == "__main__":
    run_main(main)
