"""Prune any encoder of ours without data: Gardener (Xiang et al. 2026) removes the blocks whose
weights have the lowest entropy, in one shot, and saves the rest in our format.

accelerate launch recipes/prune.py --encoder runs/ultrasound/encoder --ratio 0.25   # its recipe's built-in data
accelerate launch recipes/prune.py --encoder DIR --keep 6 --data DIR --recover-steps 200

--ratio, --keep, --method, --binning, --ratios and --recover-steps are the recipe's --prune-* options.
The encoder's modality chooses the domain recipe, whose data serves the report: the linear probe's
held-out figure against the pruning ratio for entropy, the L1 and variance of the same weights,
random blocks and the oracle (each block removed alone), with parameters and FLOPs, in
OUT/pruning.md and OUT/pruning.png; the pruned encoder is OUT/pruned_encoder (load_encoder reads it;
its config.json says which blocks went and how).
"""

from evaluate import delegate

if __name__ == "__main__":
    names = ("ratio", "keep", "method", "binning", "bins", "ratios", "recover-steps")
    delegate(__doc__, "prune", {f"--{n}": f"--prune-{n}" for n in names})
