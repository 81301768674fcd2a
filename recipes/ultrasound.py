"""Ultrasound: MAE pretraining, linear probe and fine-tuning on B-mode images and cine loops.

accelerate launch recipes/ultrasound.py                      # built-in phantom, all stages
accelerate launch recipes/ultrasound.py --data DIR           # labels.csv or <class>/ folders
accelerate launch recipes/ultrasound.py --data DIR --finetune-steps 600 --finetune-lr 5e-3   # real data:
    # the default 120 fine-tuning steps suit the phantom; BUSI fine-tuned this long beat its linear probe
accelerate launch --multi_gpu --num_processes 2 recipes/ultrasound.py --stage pretrain
"""

from modalities.ultrasound.data import UltrasoundOptions, build_domain
from tasks.options import parse
from tasks.run import run, run_main


def main():
    opts = parse("ultrasound", __doc__.splitlines()[0], UltrasoundOptions)
    run(opts, build_domain(opts.source, opts.domain))


if __name__ == "__main__":
    run_main(main)
