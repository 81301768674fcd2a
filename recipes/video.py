"""Video: VideoMAE-style pretraining on tubelets of clips, linear probe and fine-tuning.

accelerate launch recipes/video.py                                 # built-in moving shapes, 8 motions
accelerate launch recipes/video.py --data DIR                      # labels.csv or <class>/ folders of videos
accelerate launch recipes/video.py --data UCF101/ --split 1        # classInd.txt + trainlist01/testlist01
accelerate launch recipes/video.py --data kinetics400/             # train.csv/validate.csv + <id>_<start>_<end>.mp4
accelerate launch recipes/video.py --data ssv2/ --stride 2 --no-flip --sampling segment   # labels.json + train.json
"""

from modalities.video.data import VideoOptions, build_domain
from tasks.options import parse
from tasks.run import run, run_main

# a short default job on a CPU: 16-frame clips of 64 x 64 are 128 tubelets, 13 of them visible
DEFAULTS = {"max_steps": 200, "finetune_steps": 100, "batch_size": 16}


def main():
    opts = parse("video", __doc__.splitlines()[0], VideoOptions, DEFAULTS)
    run(opts, build_domain(opts.source, opts.domain))


if __name__ == "__main__":
    run_main(main)
