"""The prune stage: Gardener's data-free, one-shot block pruning (``foundations.prune``) of a
pretrained encoder, saved in our format, and a report of what it costs on the run's data.

    OUT/pruned_encoder/     the encoder without its lowest-entropy blocks (--prune-ratio or
                            --prune-keep), loadable with load_encoder; config.json's "pruning" says
                            which blocks went, by which method and binning
    OUT/pruning.md, .png    the linear probe's held-out figure against the pruning ratio for every
                            method: entropy, L1 and variance of the same weights, random blocks, and
                            the oracle (each block removed alone, the probe's drop measured, the
                            least harmful removed first); parameters and FLOPs per ratio, and the
                            rank correlation of each score with the oracle
    finetune_pruned/        with --prune-recover-steps N, a short fine-tune of the pruned encoder

Features of every pruned encoder are cached like the probes' (``tasks.features``), so the blocks a
method shares with another are encoded once.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from foundations.checkpoint import read_config, save_pretrained
from foundations.files import write_text
from foundations.prune import METHODS, block_scores, choose_blocks, encoder_cost, random_blocks, remove_blocks
from modalities import load_encoder
from modalities.common import DomainData
from tasks import classify
from tasks.options import FinetuneOptions, OptionError, PruneOptions
from tasks.plots import line_chart
from tasks.session import Session, check_encoder

log = logging.getLogger(__name__)
BASELINES = ("random", "oracle")


def probe_pruned(session: Session, data: DomainData, encoder, removed: list[int], opts: FinetuneOptions) -> float:
    """The linear probe's held-out headline figure on ``encoder`` without the blocks ``removed``."""
    pruned = remove_blocks(encoder, removed)
    tag = "removed_" + ("_".join(map(str, removed)) or "none")
    splits = classify.cached_splits(session, data, pruned, session.out / "features" / "prune" / tag, tokens=False)
    results = classify.run_probe(session, data, "linear", *splits, opts, f"prune_{tag}")
    return results[f"prune_{tag}/{classify.headline(data)}"]


def prune(
    session: Session,
    data: DomainData,
    encoder_dir: Path,
    opts: FinetuneOptions,
    prune_opts: PruneOptions,
    finetune=classify.finetune,
) -> dict:
    """Score, report and prune; ``finetune`` (the recipe's fine-tuning stage) recovers the pruned
    encoder when ``--prune-recover-steps`` asks."""
    check_encoder(encoder_dir, data.adapter)
    acc = session.acc
    encoder = load_encoder(encoder_dir, acc.device).eval()
    depth = len(encoder.blocks)
    keep = prune_opts.prune_keep if prune_opts.prune_keep is not None else depth - round(prune_opts.prune_ratio * depth)
    if keep > depth:
        raise OptionError(f"--prune-keep {keep}: the encoder at {encoder_dir} has only {depth} blocks")
    metric = classify.headline(data)
    probed: dict[tuple[int, ...], float] = {}  # removed blocks -> probe figure, each set once

    def figure(removed) -> float:
        removed = tuple(sorted(removed))
        if removed not in probed:
            probed[removed] = probe_pruned(session, data, encoder, list(removed), opts)
        return probed[removed]

    full = figure(())
    oracle = torch.tensor([full - figure((i,)) for i in range(depth)], dtype=torch.float64)  # drop per block
    scores = {m: block_scores(encoder, m, prune_opts.prune_binning, prune_opts.prune_bins) for m in METHODS}
    scores["oracle"] = oracle

    def chosen(method: str, n: int) -> list[int]:
        return (
            random_blocks(depth, n, session.seed)
            if method == "random"
            else choose_blocks(scores[method], keep=depth - n)
        )

    counts = sorted({round(r * depth) for r in prune_opts.ratios})
    curves = {m: [figure(chosen(m, n)) for n in counts] for m in (*METHODS, *BASELINES)}
    removed = chosen(prune_opts.prune_method, depth - keep)
    pruned = remove_blocks(encoder, removed)
    from scipy.stats import spearmanr  # imported here: scipy.stats would add 0.5 s to every recipe's start

    n_tokens = tokens_per_input(encoder, data)
    cost, cost_full = encoder_cost(pruned.cfg, n_tokens), encoder_cost(encoder.cfg, n_tokens)
    results = {
        "prune/method": prune_opts.prune_method,
        "prune/depth": depth,
        "prune/removed_blocks": removed,
        f"prune/{metric}": figure(removed),
        f"prune/{metric}_unpruned": full,
        "prune/block_params": cost["block_params"],
        "prune/block_flops_fraction": cost["block_flops"] / max(1, cost_full["block_flops"]),
        **{f"prune/rank_correlation_{m}": float(spearmanr(scores[m], oracle).statistic) for m in METHODS},
    }
    if acc.is_main_process:
        config = read_config(encoder_dir)
        own = ("format", "version", "encoder", "adapter", "decoder", "data_card")
        pruning = {
            "method": prune_opts.prune_method,
            "removed_blocks": removed,
            "depth_before": depth,
            "binning": prune_opts.prune_binning,
            "source": str(encoder_dir),
        }
        info = {k: v for k, v in config.items() if k not in own} | {"pruning": pruning}
        save_pretrained(pruned, session.out / "pruned_encoder", config.get("data_card"), **info)
        report(session.out, counts, depth, curves, scores, encoder, n_tokens, metric, results)
    acc.wait_for_everyone()
    log.info("pruned %s of %d blocks (%s): %s", removed, depth, prune_opts.prune_method, session.out / "pruned_encoder")
    if prune_opts.prune_recover_steps:
        recover = dataclasses.replace(opts, finetune_steps=prune_opts.prune_recover_steps)
        results |= finetune(session, data, session.out / "pruned_encoder", recover, stage="finetune_pruned")
    return results


def tokens_per_input(encoder, data: DomainData) -> int:
    """Tokens one held-out input gives the blocks (with the cls token)."""
    item = data.held_out[0]["x"]
    one = lambda v: v.unsqueeze(0) if torch.is_tensor(v) else v  # noqa: E731
    x = one(item) if torch.is_tensor(item) else {k: one(v) for k, v in item.items()}
    with torch.no_grad():
        return encoder(x).tokens.shape[1] + encoder.n_prefix


def report(out: Path, counts, depth, curves, scores, encoder, n_tokens, metric, results) -> None:
    """``pruning.md``: the probe figure per method and ratio, with parameters and FLOPs, and the
    scores' rank correlation with the oracle; ``pruning.png``: the same curves."""
    ratios = [n / depth for n in counts]
    costs = [encoder_cost(dataclasses.replace(encoder.cfg, depth=depth - n), n_tokens) for n in counts]
    lines = [
        f"held-out {metric} of the linear probe after removing blocks, per method",
        "",
        "| blocks removed | ratio | block parameters | block GFLOPs / input | " + " | ".join(curves) + " |",
        "|---" * (4 + len(curves)) + "|",
    ]
    for i, n in enumerate(counts):
        row = [str(n), f"{ratios[i]:.2f}", f"{costs[i]['block_params']:,}", f"{costs[i]['block_flops'] / 1e9:.3f}"]
        lines.append("| " + " | ".join(row + [f"{curves[m][i]:.4f}" for m in curves]) + " |")
    lines += ["", "| block | " + " | ".join(scores) + " |", "|---" * (1 + len(scores)) + "|"]
    lines += [f"| {b} | " + " | ".join(f"{float(s[b]):.6g}" for s in scores.values()) + " |" for b in range(depth)]
    lines += ["", "oracle: the probe's drop when the block alone is removed", ""]
    lines += [f"rank correlation with the oracle ({m}): {results[f'prune/rank_correlation_{m}']:.3f}" for m in METHODS]
    write_text(out / "pruning.md", "\n".join(lines) + "\n")
    series = {m: (ratios, v) for m, v in curves.items()}
    line_chart(series, out / "pruning.png", "fraction of blocks removed", f"held-out {metric} (linear probe)")
