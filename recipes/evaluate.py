"""Evaluate any encoder: linear, kNN, efficient-attentive (EP) and attentive probes on its frozen
features, beside the same probes on a random encoder of its shape and on the raw input.

accelerate launch recipes/evaluate.py --encoder runs/ultrasound/encoder              # its recipe's built-in data
accelerate launch recipes/evaluate.py --encoder DIR --data DIR --eval-data DIR --probe ep,linear
accelerate launch recipes/evaluate.py --encoder vit_b.pth --modality ultrasound --data DIR   # a foreign file

The encoder's modality (from its config.json, or --modality for another library's checkpoint)
chooses the domain recipe, whose probe stage then runs with every option of that recipe (see
``recipes/<domain>.py --help``); --stage probe,finetune adds fine-tuning. Writes OUT/metrics.json,
OUT/probes.md (accuracy, balanced accuracy, macro-F1, AUROC for two classes, per probe) and
OUT/probes.png; the features are cached in OUT/features/ for the next run.
"""

import argparse
import json
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# adapter name (config.json) -> the recipe that reads its data
RECIPES = {
    "ultrasound": "ultrasound",
    "ultrasound_cine": "ultrasound",
    "image2d": "ultrasound",
    "volume": "volumes",
    "pointcloud": "pointcloud",
    "video": "video",
    "audio": "audio",
    "nerf": "nerf",
}


def stop(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def modality_of(encoder: str) -> str:
    """The adapter name in an encoder folder's config.json; one clear line where there is none."""
    config = Path(encoder) / "config.json"
    try:
        return json.loads(config.read_text())["adapter"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        stop(
            f"{encoder}: not an encoder folder of this suite (no readable config.json with an adapter); "
            "for another library's checkpoint pass --modality"
        )


def delegate(doc: str, stage: str, renamed: dict[str, str] | None = None) -> None:
    """Run the recipe of ``--encoder``'s modality with ``--stage stage`` (unless given) and the rest
    of the command line, its flags ``renamed`` (e.g. prune.py's --ratio -> --prune-ratio); the run
    folder defaults to runs/<stage>/<name of the encoder's run>."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", required=True, help="encoder folder, or another library's checkpoint")
    parser.add_argument("--modality", choices=sorted(set(RECIPES.values())), help="default: the encoder's own")
    if {"-h", "--help"} & set(sys.argv[1:]) and "--encoder" not in sys.argv:
        parser.print_help()
        return
    args, rest = parser.parse_known_args()
    adapter = None if args.modality else modality_of(args.encoder)
    recipe = args.modality or RECIPES.get(adapter)
    if recipe is None:
        stop(f"{args.encoder}: no recipe reads the adapter {adapter!r}")
    for old, new in (renamed or {}).items():
        rest = [new + a[len(old) :] if a == old or a.startswith(old + "=") else a for a in rest]
    given = {a.split("=")[0] for a in rest}
    argv = ["--encoder", args.encoder, *rest]
    argv += [] if "--stage" in given else ["--stage", stage]
    encoder = Path(args.encoder).resolve()  # runs/NAME/encoder -> runs/STAGE/NAME; a file by its stem
    argv += (
        []
        if "--out" in given
        else ["--out", f"runs/{stage}/{encoder.parent.name if encoder.is_dir() else encoder.stem}"]
    )
    sys.argv = [str(HERE / f"{recipe}.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    delegate(__doc__, "probe")
