"""Encoders the field has already trained, imported into this suite's format, numerically equal.

    python -m modalities.convert mae_pretrain_vit_base.pth out/ --source mae
    python -m modalities.convert vit_base_patch16_224.mae.safetensors out/ --source timm
    python -m modalities.convert ./vit-mae-base/ out/ --source hf-vitmae   # config.json + weights

One converter per source, chosen with ``--source`` (without it the source is guessed from the
file and the guess is printed). Each maps the source's names onto this encoder's, consumes every
tensor or lists it as not imported (heads, decoders), and refuses what it cannot place.

- ``timm``: a ``VisionTransformer`` state dict (``.safetensors``, ``.bin`` or ``.pth``); its names
  are MAE's. ``mae``: the official MAE files, ``{"model": state dict}`` with the same names.
- ``hf-vitmae``: a Hugging Face ViTMAE directory; ``query``/``key``/``value`` are fused back into
  ``qkv`` (rows 0:D, D:2D, 2D:3D) and the LayerNorm epsilon comes from its config (1e-12).

Positions: these models add a learned or fixed table to the patch tokens (MAE's fixed sin-cos
table puts the column index first, where this core's sin-cos puts the row first). The table is
kept as it is (``EncoderConfig.pos_grid``): equal at the source's grid, resized bicubically at
others, as timm and MAE's fine-tuning do. The class token's position is added to the class token,
which here gets none. Inputs are raw [0, 1] images: the adapter normalises them with the source's
mean and std (ImageNet's unless its config says otherwise). Foreign ``.pth`` files are read with
``torch.load(weights_only=True)`` and nothing else.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from foundations.checkpoint import CheckpointError, load_state, save_pretrained
from foundations.vit import Encoder, EncoderConfig
from modalities import build_adapter

SOURCES = ("timm", "mae", "hf-vitmae")
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # ViT-Ti/S/B/L/H (head width 64; H: 80)
LICENCES = {"mae": "CC-BY-NC 4.0 (facebookresearch/mae)"}
NOT_IMPORTED = re.compile(r"^(head\.|fc_norm\.|decoder|mask_token)")  # heads and MAE's decoder


def load_raw(path: Path):
    """What a weights file holds: .safetensors, or .pth/.bin through ``torch.load(weights_only=True)``."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors, zip and unpickler errors alike
        raise CheckpointError(f"{path}: cannot read weights ({str(e).splitlines()[0]})") from None


def hugging_face_type(directory: Path) -> str | None:
    """The ``model_type`` of a Hugging Face model directory; None for anything else."""
    try:
        return json.loads((Path(directory) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def state_dict(raw, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``raw``, out of an official ``{"model": ...}`` (or ``"module"``,
    ``"state_dict"``) wrapper if it has one."""
    for key in ("model", "module", "state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return raw


def convert(path, source: str | None = None, modality: str = "image2d", heads: int | None = None) -> Encoder:
    """The encoder in ``path`` (file or Hugging Face directory) as this suite's ``Encoder``, with
    ``encoder.info`` recording where it came from (``source.guessed`` when ``source`` was None)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if source is not None and source not in SOURCES:
        raise CheckpointError(f"{path}: unknown source {source!r}; one of {SOURCES}")
    guessed = source is None
    if path.is_dir():
        model_type = hugging_face_type(path)
        if source not in (None, "hf-vitmae") or model_type != "vit_mae":
            raise CheckpointError(f"{path}: a directory, but not a Hugging Face ViTMAE (model_type {model_type!r})")
        source = "hf-vitmae"
        state, hf = hf_vitmae_state(path)
        heads, eps, mean_std = hf["num_attention_heads"], hf.get("layer_norm_eps", 1e-12), hf_mean_std(path)
        image = hf.get("image_size", 224)
    else:
        if source == "hf-vitmae":
            raise CheckpointError(f"{path}: --source hf-vitmae takes a directory (config.json + weights)")
        raw = load_raw(path)
        source = source or ("mae" if isinstance(raw, dict) and "model" in raw else "timm")
        state, eps, mean_std, image = state_dict(raw, path), 1e-6, IMAGENET, None
    encoder, skipped = vit_from_timm_names(state, path, modality, heads, eps, mean_std, image, source != "timm")
    licence = LICENCES.get(source, "see the source")
    encoder.info = {
        "source": {"kind": source, "guessed": guessed, "file": str(path), "licence": licence},
        "not_imported": skipped,
    }
    return encoder


def vit_from_timm_names(state, path, modality, heads, eps, mean_std, image, mae_resize) -> tuple[Encoder, list[str]]:
    """timm / MAE names -> Encoder (image adapter of ``modality``) and the keys left out; the
    position table resized for other grids as MAE and Hugging Face do (``mae_resize``) or as timm."""
    state = dict(state)
    need = ["patch_embed.proj.weight", "pos_embed", "norm.weight", "blocks.0.attn.qkv.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a ViT in timm/MAE names: missing {missing}")
    proj = state.pop("patch_embed.proj.weight")  # (D, C, p, p)
    dim, channels, patch = proj.shape[0], proj.shape[1], list(proj.shape[2:])
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    heads = heads or HEADS.get(dim)
    if heads is None:
        raise CheckpointError(f"{path}: width {dim} is not a standard ViT's; say the number of heads (--heads)")
    pos = state.pop("pos_embed")[0]  # (N or 1 + N, D): a row for the class token first, unless it has none
    cls = state.pop("cls_token", None)
    rows = pos.shape[0]
    with_cls_row = cls is not None and math.isqrt(rows) ** 2 != rows  # 1 + k * k is never a square
    side = image // patch[0] if image else math.isqrt(rows - with_cls_row)
    n = side * side
    if rows - n not in ((0, 1) if cls is not None else (0,)):
        raise CheckpointError(f"{path}: {rows} position rows do not fit a square grid of patches")
    ours = {
        "adapter.proj.weight": proj,
        "adapter.proj.bias": state.pop("patch_embed.proj.bias", torch.zeros(dim)),
        "pos_embed.table.table": pos[-n:],
    }
    if cls is not None:  # its position added to it once: this encoder gives the class token none
        ours["cls_token"] = cls + pos[:1] if rows > n else cls
    for key in [k for k in state if k.startswith(("blocks.", "norm."))]:
        ours[key] = state.pop(key)
    skipped = sorted(k for k in state if NOT_IMPORTED.match(k))
    left = sorted(set(state) - set(skipped))
    if left:
        raise CheckpointError(f"{path}: {len(left)} tensors this ViT has no place for, e.g. {left[:5]}")
    cfg = EncoderConfig(
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=ours["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        cls_token=cls is not None,
        layer_scale=1.0 if "blocks.0.ls1.gamma" in ours else None,
        norm_eps=eps,
        pos_grid=(side, side),
        pos_resize="bicubic" if mae_resize else "bicubic-antialias",
    )
    config = {"name": modality, "channels": channels, "patch": patch, "size": [side * patch[0]] * 2, **mean_std}
    encoder = Encoder(build_adapter(config, dim), cfg)
    load_state(encoder, ours, path)
    return encoder.eval(), skipped


HF_LAYER = {  # Hugging Face ViT layer names (files, and transformers 5's in-memory names) -> timm's
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
HF_QKV = re.compile(r"attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$")


def hf_vitmae_state(path: Path) -> tuple[dict, dict]:
    """A ViTMAE directory's encoder in timm names, and its config."""
    hf = json.loads((path / "config.json").read_text())
    files = [path / "model.safetensors", path / "pytorch_model.bin"]
    weights = next((f for f in files if f.is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: hidden_act {hf['hidden_act']!r}; this ViT has the exact GELU")
    out, qkv = {}, {}
    for key, value in state_dict(load_raw(weights), weights).items():
        key = key.removeprefix("vit.")
        if key.startswith("decoder."):
            out[key] = value
            continue
        key = key.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
        key = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed"}.get(key, key)
        key = re.sub(r"^layernorm\.", "norm.", key)
        layer = re.match(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$", key)
        if layer:
            i, rest = layer.groups()
            match = HF_QKV.match(rest)
            if match:
                part = "qkv".index((match.group(1) or match.group(2))[0])
                qkv.setdefault((i, match.group(3)), {})[part] = value
                continue
            rest = next((rest.replace(a, b, 1) for a, b in HF_LAYER.items() if rest.startswith(a)), rest)
            key = f"blocks.{i}.{rest}"
        out[key] = value
    for (i, kind), parts in qkv.items():  # rows 0:D, D:2D, 2D:3D
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[0], parts[1], parts[2]])
    for key in [k for k in out if k.endswith("attn.qkv.weight")]:  # qkv_bias=False: zero biases, the same function
        out.setdefault(key.replace("weight", "bias"), torch.zeros(out[key].shape[0]))
    return out, hf


def hf_mean_std(path: Path) -> dict:
    pre = path / "preprocessor_config.json"
    if not pre.is_file():
        return IMAGENET
    cfg = json.loads(pre.read_text())
    return {"mean": list(cfg.get("image_mean", IMAGENET["mean"])), "std": list(cfg.get("image_std", IMAGENET["std"]))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m modalities.convert", description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="a .pth / .bin / .safetensors file, or a Hugging Face ViTMAE directory")
    p.add_argument("out", type=Path, help="output directory (config.json + model.safetensors)")
    p.add_argument("--source", choices=SOURCES, help="where the weights come from; default: guessed and printed")
    p.add_argument("--modality", default="image2d", help="adapter to put in front (default image2d)")
    p.add_argument("--heads", type=int, help="attention heads, for widths other than ViT-Ti/S/B/L/H")
    args = p.parse_args(argv)
    try:
        encoder = convert(args.src, args.source, args.modality, args.heads)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    source = encoder.info["source"]["kind"]
    if args.source is None:
        print(f"source guessed from the file: {source} (say --source to choose)")
    save_pretrained(encoder, args.out, **encoder.info)
    skipped = encoder.info["not_imported"]
    print(f"{args.out}: {encoder.cfg.depth} blocks of width {encoder.cfg.dim} from {source}")
    if skipped:
        print(f"not imported ({len(skipped)}): {', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
