"""Encoders the field has already trained, imported into this suite's format, numerically equal.

    python -m modalities.convert mae_pretrain_vit_base.pth out/ --source mae
    python -m modalities.convert vit_base_patch16_224.mae.safetensors out/ --source timm
    python -m modalities.convert ./vit-mae-base/ out/ --source hf-vitmae   # config.json + weights
    python -m modalities.convert checkpoint.pth out/ --source videomae      # or audiomae
    python -m modalities.convert mae_pretrain_vit_base.pth out/ --modality ultrasound --grey

One converter per source, chosen with ``--source`` (without it the source is guessed from the
file and the guess is printed). Each maps the source's names onto this encoder's, consumes every
tensor or lists it as not imported (heads, decoders), and refuses what it cannot place.

- ``timm``: a ``VisionTransformer`` state dict (``.safetensors``, ``.bin`` or ``.pth``), or a timm
  model's Hub directory (its ``config.json`` gives input size, mean and std); its names are MAE's.
- ``mae``: the official MAE files, ``{"model": state dict}`` with the same names, of pretraining
  (a final norm) or fine-tuning (``fc_norm`` on the mean of the tokens, no final norm).
- ``hf-vitmae`` / ``hf-videomae``: a Hugging Face ViTMAE / VideoMAE directory; ``query``/``key``/
  ``value`` are fused back into ``qkv`` (rows 0:D, D:2D, 2D:3D) and the LayerNorm epsilon comes
  from its config (1e-12). Video inputs here are (B, C, T, H, W); Hugging Face's are (B, T, C, H, W).
- ``videomae``: the official VideoMAE files (``model`` or ``module``), tubelet Conv3d, no class
  token; its query and value biases without a key bias fuse into ``cat(q_bias, 0, v_bias)``, the
  same function (a key bias adds one constant to all of a query's logits, which softmax ignores).
- ``audiomae``: AudioMAE's files (timm names, one channel, a 64 x 8 grid over 1024 frames x 128
  mel bins; its filterbank normalisation, ``(x + 4.27) / (2 * 4.57)``, goes into the adapter).

Positions: these models add a learned or fixed table to the patch tokens (MAE's fixed sin-cos
table puts the column index first, where this core's sin-cos puts the row first; VideoMAE's is a
1-D sinusoid over the flattened index; AudioMAE's table is built for an (8, 64) grid and used on
its (64, 8) tokens). The table is kept as it is (``EncoderConfig.pos_grid``): equal at the source's
grid, and at others resized bicubically as MAE, Hugging Face and timm do, or for VideoMAE computed
again for the new grid as VideoMAE does. The class token's position is added to the class token,
which here gets none. Inputs are raw: [0, 1] images and videos, log-mel filterbanks; the adapter
normalises them with the source's mean and std (ImageNet's unless its config says otherwise).

``--grey`` folds a 3-channel stem into one channel for grey inputs (ultrasound): with ``W_c``
and ``(m_c, s_c)`` the stem and normalisation of channel c, the grey stem is ``sum_c W_c / s_c``
and its bias ``b - sum_c (m_c / s_c) sum(W_c)``, exactly the source on the grey image repeated in
its three channels; the adapter then takes raw [0, 1] grey values. Foreign ``.pth`` files are read
with ``torch.load(weights_only=True)`` and nothing else.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file

from foundations.checkpoint import CheckpointError, load_state, save_pretrained
from foundations.mae import Decoder, DecoderConfig
from foundations.pos_embed import sinusoid_table
from foundations.vit import Encoder, EncoderConfig
from modalities import build_adapter

SOURCES = ("timm", "mae", "hf-vitmae", "videomae", "hf-videomae", "audiomae")
HF_TYPES = {"vit_mae": "hf-vitmae", "videomae": "hf-videomae"}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
AUDIOSET = {"mean": [-4.2677393], "std": [2 * 4.5689974]}  # AudioMAE divides by twice the std
HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # ViT-Ti/S/B/L/H (head width 64; H: 80)
LICENCES = {
    "mae": "CC-BY-NC 4.0 (facebookresearch/mae)",
    "videomae": "CC-BY-NC 4.0 (MCG-NJU/VideoMAE)",
    "audiomae": "CC-BY 4.0 (facebookresearch/AudioMAE)",
}
NOT_IMPORTED = re.compile(r"^(head\.|classifier\.|decoder|mask_token|encoder_to_decoder)")  # heads, decoders
DECODER_KEYS = ("decoder", "mask_token")  # MAE's decoder names (the others' are renamed to them)


def load_raw(path: Path):
    """What a weights file holds: .safetensors, or .pth/.bin through ``torch.load(weights_only=True)``
    (which also admits the ``argparse.Namespace`` of training arguments in MAE's own checkpoints)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors, zip and unpickler errors alike
        raise CheckpointError(f"{path}: cannot read weights ({str(e).splitlines()[0]})") from None


def hugging_face_type(directory: Path) -> str | None:
    """The ``model_type`` of a Hugging Face model directory ("timm" for a timm model on the Hub,
    whose config names its ``architecture``); None for anything else."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
        return config.get("model_type") or ("timm" if "architecture" in config else None)
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


def guess_source(raw, state: dict) -> str:
    """A file's source from its keys: VideoMAE's split biases or tubelets, AudioMAE's one channel,
    MAE's ``{"model": ...}`` wrapper, else timm."""
    proj = state.get("patch_embed.proj.weight", state.get("encoder.patch_embed.proj.weight"))
    if any(k.endswith("attn.q_bias") for k in state) or (proj is not None and proj.ndim == 5):
        return "videomae"
    if proj is not None and proj.shape[1] == 1:
        return "audiomae"
    return "mae" if isinstance(raw, dict) and "model" in raw else "timm"


class Imported(NamedTuple):
    encoder: Encoder  # with .info: source, licence, tensors not imported
    decoder: Decoder | None  # the checkpoint's MAE decoder, when it has one that fits
    decoder_note: str  # why there is none


def convert(path, source: str | None = None, modality: str | None = None, heads: int | None = None, grey=False):
    """The encoder in ``path`` (file or Hugging Face directory) as this suite's ``Encoder``, with
    ``encoder.info`` recording where it came from (``source.guessed`` when ``source`` was None).
    ``modality``: the adapter to put in front, by default the source's own (image2d, video or
    audio); ``grey``: fold a 3-channel stem into one (see the module's notes)."""
    return import_checkpoint(path, source, modality, heads, grey).encoder


def import_checkpoint(path, source=None, modality=None, heads=None, grey=False) -> Imported:
    """``convert``, and the checkpoint's MAE decoder (MAE's ``*_full`` files, Hugging Face's
    ``*ForPreTraining``, VideoMAE's pretraining files) for continuing pretraining."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if source is not None and source not in SOURCES:
        raise CheckpointError(f"{path}: unknown source {source!r}; one of {SOURCES}")
    guessed = source is None
    source, state, spec = read_source(path, source)
    skipped = []
    if source == "hf-videomae":  # its fc_norm (epsilon 1e-5 where the blocks have 1e-12) is the classifier's
        skipped = sorted(k for k in state if k.startswith("fc_norm."))
        state = {k: v for k, v in state.items() if k not in skipped}
    proj = state.get("patch_embed.proj.weight")
    grid = spec.get("grid")
    if source in ("videomae", "hf-videomae") and proj is not None:  # no table saved: its fixed sinusoid
        grid = grid or (16 // proj.shape[2], 224 // proj.shape[3], 224 // proj.shape[4])  # 16 frames of 224^2
        state["pos_embed"] = sinusoid_table(math.prod(grid), proj.shape[0])[None]
    if source == "audiomae":
        spec["mean_std"] = AUDIOSET
        if "pos_embed" in state and proj is not None:  # 128 mel bins across, frames down: 1024 x 128 -> (64, 8)
            bands = 128 // proj.shape[-1]
            grid = ((state["pos_embed"].shape[1] - ("cls_token" in state)) // bands, bands)
    resize = {"timm": "bicubic-antialias", "audiomae": "bicubic-antialias"}.get(source, "bicubic")
    resize = "sinusoid" if source in ("videomae", "hf-videomae") else resize
    native = {"videomae": "video", "hf-videomae": "video", "audiomae": "audio"}.get(source, "image2d")
    adapter = {"name": modality or native, **spec["mean_std"]}
    if source == "audiomae":
        adapter["keep_last_axis"] = True  # this suite's audio features keep their frequency bands
    heads = spec.get("heads") or heads
    encoder, left_out = vit_from_timm_names(state, path, adapter, heads, spec["eps"], grid, resize, grey)
    encoder.info = {
        "source": {
            "kind": source,
            "guessed": guessed,
            "file": str(path),
            "licence": LICENCES.get(source, "see the source"),
        },
        "not_imported": sorted(skipped + left_out),
    }
    decoder, note = decoder_from_names(state, encoder, spec.get("decoder_heads"), spec["eps"])
    if decoder is not None:  # taken after all
        encoder.info["not_imported"] = [k for k in encoder.info["not_imported"] if not k.startswith(DECODER_KEYS)]
    encoder.info["decoder_import"] = note or "imported"
    return Imported(encoder, decoder, note)


def read_source(path: Path, source: str | None) -> tuple[str, dict, dict]:
    """(source, its state dict in timm names with decoders in MAE's, and what the source leaves
    implicit: LayerNorm epsilon, input normalisation, the grid, heads of the encoder and decoder)."""
    spec = {"eps": 1e-6, "mean_std": IMAGENET}
    if path.is_dir() and hugging_face_type(path) == "timm" and source in (None, "timm"):  # timm on the Hub
        state = state_dict(load_raw(hub_weights(path)), path)
        pretrained = json.loads((path / "config.json").read_text()).get("pretrained_cfg", {})
        spec["mean_std"] = {k: list(pretrained.get(k, IMAGENET[k])) for k in ("mean", "std")}
        if "input_size" in pretrained and "patch_embed.proj.weight" in state:  # (C, H, W)
            patch = state["patch_embed.proj.weight"].shape[2:]
            spec["grid"] = tuple(s // p for s, p in zip(pretrained["input_size"][1:], patch, strict=True))
        return "timm", state, spec
    if path.is_dir():
        model_type = hugging_face_type(path)
        if model_type not in HF_TYPES or source not in (None, HF_TYPES[model_type]):
            want = f"a Hugging Face {source}" if source else "a Hugging Face ViTMAE, VideoMAE or timm model"
            raise CheckpointError(f"{path}: a directory, but not {want} (model_type {model_type!r})")
        state, hf = hf_state(path)
        side = hf.get("image_size", 224) // hf.get("patch_size", 16)
        frames = hf.get("num_frames", 16) // hf.get("tubelet_size", 2)
        spec |= {
            "eps": hf.get("layer_norm_eps", 1e-12),
            "mean_std": hf_mean_std(path),
            "grid": (side, side) if model_type == "vit_mae" else (frames, side, side),
            "heads": hf["num_attention_heads"],
            "decoder_heads": hf.get("decoder_num_attention_heads"),
        }
        return HF_TYPES[model_type], state, spec
    if source in HF_TYPES.values():
        raise CheckpointError(f"{path}: --source {source} takes a directory (config.json + weights)")
    raw = load_raw(path)
    state = state_dict(raw, path)
    source = source or guess_source(raw, state)
    state = videomae_names(state) if source == "videomae" else dict(state)
    if "decoder_embed.weight" in state:  # MAE's decoder heads are 32 wide (512 / 16), VideoMAE's 64 (384 / 6)
        spec["decoder_heads"] = state["decoder_embed.weight"].shape[0] // (64 if source == "videomae" else 32)
    return source, state, spec


def decoder_from_names(state: dict, encoder: Encoder, heads: int | None, eps: float):
    """An MAE decoder in the names ``decoder_embed`` (VideoMAE's ``encoder_to_decoder``, no bias),
    ``mask_token``, ``decoder_pos_embed`` (VideoMAE: its sinusoid, not saved), ``decoder_blocks.i``
    in timm names, ``decoder_norm``, ``decoder_pred`` -> (``Decoder``, ""), or (None, the reason
    it does not fit this encoder)."""
    if "decoder_embed.weight" not in state:
        return None, "the checkpoint holds no decoder: a fresh one is trained"
    need = ["mask_token", "decoder_blocks.0.attn.qkv.weight", "decoder_blocks.0.mlp.fc1.weight"]
    need += ["decoder_norm.weight", "decoder_pred.weight"]
    if any(k not in state for k in need):
        return None, f"its decoder lacks {[k for k in need if k not in state]}: a fresh one is trained"
    dim = state["decoder_embed.weight"].shape[0]
    target_dim = encoder.adapter.target_dim
    if state["decoder_pred.weight"].shape[0] != target_dim:
        n = state["decoder_pred.weight"].shape[0]
        return None, f"its decoder predicts {n} values a patch, this adapter's targets have {target_dim}: a fresh one"
    table = encoder.pos_embed.table
    pos = state.get("decoder_pos_embed")
    if pos is None:  # VideoMAE: the encoder's sinusoid at the decoder's width
        pos = sinusoid_table(math.prod(table.grid), dim)
    elif pos[0, 0].abs().max() > 0 and pos.shape[1] > math.prod(table.grid):
        return None, "its decoder gives the class token a position, which this decoder cannot: a fresh one"
    ours = {
        "embed.weight": state["decoder_embed.weight"],
        "embed.bias": state.get("decoder_embed.bias", torch.zeros(dim)),
        "mask_token": state["mask_token"],
        "pos_embed.table.table": pos.reshape(-1, dim)[-math.prod(table.grid) :],
    }
    for key, value in state.items():
        if key.startswith(("decoder_blocks.", "decoder_norm.", "decoder_pred.")):
            ours[key.removeprefix("decoder_")] = value
    for key in [k for k in ours if k.endswith("attn.qkv.weight")]:  # no qkv bias: zeros, the same function
        ours.setdefault(key.replace("weight", "bias"), torch.zeros(ours[key].shape[0]))
    depth = 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("blocks."))
    cfg = DecoderConfig(
        dim=dim,
        depth=depth,
        heads=heads or max(1, dim // 32),
        mlp_ratio=ours["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        norm_eps=eps,
        pos_grid=table.grid,
        pos_resize=table.resize,
    )
    adapter = encoder.adapter
    decoder = Decoder(encoder.cfg.dim, cfg, adapter.pos_embed, adapter.coord_dim, adapter.target_dim)
    try:  # e.g. AudioMAE's released decoder, Swin blocks with relative positions
        load_state(decoder, ours, "its decoder")
    except CheckpointError as e:
        return None, f"{e}: not MAE's decoder, a fresh one is trained"
    return decoder.eval(), ""


def vit_from_timm_names(state, path, adapter, heads, eps, grid, resize, grey=False) -> tuple[Encoder, list[str]]:
    """timm / MAE names -> Encoder behind ``adapter`` (its name, mean, std; patch, size and channels
    come from the weights) and the keys left out. The position table covers ``grid``, by default
    the square its rows make."""
    state = dict(state)
    need = ["patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a ViT in timm/MAE names: missing {missing}")
    proj = state.pop("patch_embed.proj.weight")  # (D, C, *patch)
    dim, channels, patch = proj.shape[0], proj.shape[1], list(proj.shape[2:])
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    heads = heads or HEADS.get(dim)
    if heads is None:
        raise CheckpointError(f"{path}: width {dim} is not a standard ViT's; say the number of heads (--heads)")
    pos = state.pop("pos_embed")[0]  # (N or 1 + N, D): a row for the class token first, unless it has none
    cls = state.pop("cls_token", None)
    rows = pos.shape[0]
    with_cls_row = cls is not None and math.isqrt(rows) ** 2 != rows  # 1 + k * k is never a square
    grid = tuple(grid or [math.isqrt(rows - with_cls_row)] * 2)
    n = math.prod(grid)
    if rows - n not in ((0, 1) if cls is not None else (0,)):
        raise CheckpointError(f"{path}: {rows} position rows do not fit a grid of {grid} patches")
    bias = state.pop("patch_embed.proj.bias", torch.zeros(dim))
    if grey:
        if channels != 3:
            raise CheckpointError(f"{path}: --grey folds a 3-channel stem; this one has {channels}")
        proj, bias, channels = grey_stem(proj, bias, adapter["mean"], adapter["std"])
        adapter = {**adapter, "mean": [0.0], "std": [1.0]}
    ours = {"adapter.proj.weight": proj, "adapter.proj.bias": bias, "pos_embed.table.table": pos[-n:]}
    if cls is not None:  # its position added to it once: this encoder gives the class token none
        ours["cls_token"] = cls + pos[:1] if rows > n else cls
    for key in [k for k in state if k.startswith(("blocks.", "norm.", "fc_norm."))]:
        ours[key] = state.pop(key)
    for key in [k for k in ours if k.endswith("attn.qkv.weight")]:  # no qkv bias: zeros, the same function
        ours.setdefault(key.replace("weight", "bias"), torch.zeros(ours[key].shape[0]))
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
        pool="avg" if "fc_norm.weight" in ours else "mean",  # fine-tuned: features as the source pooled them
        layer_scale=1.0 if "blocks.0.ls1.gamma" in ours else None,
        norm_eps=eps,
        pos_grid=grid,
        pos_resize=resize,
        final_norm="norm.weight" in ours,
        fc_norm="fc_norm.weight" in ours,
    )
    if len(grid) != len(patch):
        raise CheckpointError(f"{path}: a {len(patch)}-D stem with a {len(grid)}-D position grid")
    config = {
        **adapter,
        "channels": channels,
        "patch": patch,
        "size": [g * p for g, p in zip(grid, patch, strict=True)],
    }
    try:
        encoder = Encoder(build_adapter(config, dim), cfg)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot put a {adapter['name']} adapter in front: {e}") from None
    load_state(encoder, ours, path)
    return encoder.eval(), skipped


def grey_stem(weight, bias, mean, std) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A 3-channel stem (D, 3, *patch) that takes (x_c - m_c) / s_c -> one channel that takes the raw
    grey value g and gives the same output when x_c = g for every c."""
    scale = torch.tensor(mean) / torch.tensor(std)  # m_c / s_c
    per_channel = weight / torch.tensor(std).view(1, -1, *[1] * (weight.ndim - 2))  # W_c / s_c
    folded_bias = bias - (weight.sum(dim=tuple(range(2, weight.ndim))) * scale).sum(1)
    return per_channel.sum(1, keepdim=True), folded_bias, 1


DECODER_NAMES = {  # VideoMAE's and Hugging Face's decoder names -> MAE's
    "encoder_to_decoder.": "decoder_embed.",
    "decoder.blocks.": "decoder_blocks.",
    "decoder.norm.": "decoder_norm.",
    "decoder.head.": "decoder_pred.",
    "decoder.decoder_embed.": "decoder_embed.",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_norm.": "decoder_norm.",
    "decoder.decoder_pred.": "decoder_pred.",
}


def decoder_name(key: str) -> str:
    return next((b + key.removeprefix(a) for a, b in DECODER_NAMES.items() if key.startswith(a)), key)


def videomae_names(state: dict) -> dict:
    """Official VideoMAE names -> timm's: the pretraining encoder's ``encoder.`` prefix dropped,
    ``q_bias``/``v_bias`` fused with a zero key bias, LayerScale ``gamma_1/2`` -> ``ls1/2.gamma``."""
    out = {}
    for key, value in state.items():
        key = decoder_name(key.removeprefix("backbone.").removeprefix("encoder."))
        out[re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)] = value
    for key in [k for k in out if k.endswith("attn.q_bias")]:
        q, v = out.pop(key), out.pop(key.replace("q_bias", "v_bias"))
        out[key.replace("q_bias", "qkv.bias")] = torch.cat([q, torch.zeros_like(q), v])
    return out


HF_LAYER = {  # Hugging Face ViT layer names (files, and transformers 5's in-memory names) -> timm's
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
HF_QKV = re.compile(r"attention\.(?:attention\.(query|key|value|q_bias|v_bias)|(q|k|v)_proj)(?:\.(weight|bias))?$")


def hf_state(path: Path) -> tuple[dict, dict]:
    """A ViTMAE or VideoMAE directory's encoder in timm names (heads and decoders under their own
    names), and its config."""
    hf = json.loads((path / "config.json").read_text())
    weights = hub_weights(path)
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: hidden_act {hf['hidden_act']!r}; this ViT has the exact GELU")
    out, qkv = {}, {}
    for key, value in state_dict(load_raw(weights), weights).items():
        key = key.removeprefix("vit.").removeprefix("videomae.")
        key = key.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
        key = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed"}.get(key, key)
        key = decoder_name(re.sub(r"^layernorm\.", "norm.", key))
        # decoder layers: decoder_layers.i on the Hub, decoder.decoder_encoder.layer.i as transformers 5 saves
        layer = re.match(
            r"^(decoder\.)?(?:encoder\.layer|layers|decoder_layers|decoder_encoder\.layer)\.(\d+)\.(.+)$", key
        )
        if layer:
            blocks = "decoder_blocks" if layer.group(1) else "blocks"
            i, rest = layer.group(2, 3)
            match = HF_QKV.match(rest)
            if match:  # VideoMAE's files: q_bias and v_bias, no key bias
                name, kind = match.group(1) or match.group(2), match.group(3) or "bias"
                qkv.setdefault((blocks, i, kind), {})["qkv".index(name[0])] = value
                continue
            rest = next((rest.replace(a, b, 1) for a, b in HF_LAYER.items() if rest.startswith(a)), rest)
            key = f"{blocks}.{i}.{rest}"
        out[key] = value
    for (blocks, i, kind), parts in qkv.items():  # rows 0:D, D:2D, 2D:3D; a missing bias is zero
        dim = next(iter(parts.values())).shape[0]
        out[f"{blocks}.{i}.attn.qkv.{kind}"] = torch.cat([parts.get(j, torch.zeros(dim)) for j in range(3)])
    return out, hf


def hub_weights(path: Path) -> Path:
    """The weights file of a model directory as the Hub lays it out."""
    files = [path / "model.safetensors", path / "pytorch_model.bin"]
    weights = next((f for f in files if f.is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")
    return weights


def hf_mean_std(path: Path) -> dict:
    pre = path / "preprocessor_config.json"
    if not pre.is_file():
        return IMAGENET
    cfg = json.loads(pre.read_text())
    return {"mean": list(cfg.get("image_mean", IMAGENET["mean"])), "std": list(cfg.get("image_std", IMAGENET["std"]))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m modalities.convert", description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="a .pth / .bin / .safetensors file, or a Hugging Face model directory")
    p.add_argument("out", type=Path, help="output directory (config.json + model.safetensors)")
    p.add_argument("--source", choices=SOURCES, help="where the weights come from; default: guessed and printed")
    p.add_argument("--modality", help="adapter to put in front; default: the source's (image2d, video, audio)")
    p.add_argument("--heads", type=int, help="attention heads, for widths other than ViT-Ti/S/B/L/H")
    p.add_argument("--grey", action="store_true", help="fold a 3-channel stem into one for grey inputs (ultrasound)")
    args = p.parse_args(argv)
    try:
        imported = import_checkpoint(args.src, args.source, args.modality, args.heads, args.grey)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    encoder = imported.encoder
    source = encoder.info["source"]["kind"]
    if args.source is None:
        print(f"source guessed from the file: {source} (say --source to choose)")
    save_pretrained(encoder, args.out, decoder=imported.decoder, **encoder.info)
    skipped = encoder.info["not_imported"]
    print(f"{args.out}: {encoder.cfg.depth} blocks of width {encoder.cfg.dim} from {source}")
    if imported.decoder is not None:
        print(f"with its MAE decoder ({imported.decoder.cfg.depth} blocks of width {imported.decoder.cfg.dim})")
    else:
        print(f"no decoder: {imported.decoder_note}")
    if skipped:
        print(f"not imported ({len(skipped)}): {', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
