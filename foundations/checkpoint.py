"""Pretrained encoders on disk: ``config.json`` + ``model.safetensors`` (no pickle).

``config.json`` carries everything needed to rebuild the encoder and feed it correctly: the
encoder config, the adapter's config (with its normalisation statistics), the data card of the
data it was trained on, and free-form metadata (class names, training summary).

The loader is handed the adapter registry (``modalities.ADAPTERS``) rather than importing it, so
the core never imports a modality. Versions: 1 wrote per-modality adapter fields (``image_size``,
``roi``); 2 writes the grid adapter's; 3 adds the encoder's ``norm_eps`` and ``pos_grid`` (imported
encoders). Each adapter's ``upgrade`` converts older fields on load. Beside the encoder, an MAE
decoder may be kept (``decoder.safetensors``, its config under ``"decoder"``) so that pretraining
can continue where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from foundations.adapter import build_adapter
from foundations.files import replacing, write_text
from foundations.mae import Decoder, DecoderConfig
from foundations.vit import Encoder, EncoderConfig

FORMAT = "mae-foundations/encoder"
VERSION = 3


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file and the problem."""


def save_pretrained(
    encoder: Encoder, directory, data_card: str | None = None, decoder: Decoder | None = None, **meta
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": dataclasses.asdict(encoder.cfg),
        "adapter": encoder.adapter.config_dict(),
        "data_card": data_card,
        **({"decoder": dataclasses.asdict(decoder.cfg)} if decoder is not None else {}),
        **meta,
    }
    for name, module in (("model", encoder), ("decoder", decoder)):
        if module is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            with replacing(directory / f"{name}.safetensors") as tmp:
                save_file(state, tmp, metadata={"format": FORMAT})
    if decoder is None:  # a decoder of an earlier export no longer belongs to this encoder
        (directory / "decoder.safetensors").unlink(missing_ok=True)
    write_text(directory / "config.json", json.dumps(config, indent=2))
    return directory


def read_config(directory) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; expected a directory written by save_pretrained")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format is {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: version {config['version']} is newer than this library's {VERSION}")
    return config


def load_encoder(directory, adapters: dict, device: str | torch.device = "cpu") -> Encoder:
    """Rebuild a pretrained encoder from ``directory`` with the adapter registry ``adapters``
    ({name: (adapter class, config class)}); ``encoder.info`` holds its config.json."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        enc_cfg = EncoderConfig(**config["encoder"])
        adapter = build_adapter(adapters, config["adapter"], enc_cfg.dim, version=config.get("version", 1))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: invalid encoder or adapter config ({e})") from None
    encoder = Encoder(adapter, enc_cfg)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{weights}: not found")
    try:
        state = load_file(weights)  # on the CPU; moved with the module below
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: unreadable or corrupt safetensors file ({e})") from None
    load_state(encoder, state, weights)
    encoder.info = config
    return encoder.to(device).eval()


def load_decoder(directory, encoder: Encoder) -> Decoder | None:
    """The MAE decoder saved beside ``encoder`` in ``directory``, or None when there is none."""
    directory = Path(directory)
    config = read_config(directory)
    if "decoder" not in config:
        return None
    try:
        cfg = DecoderConfig(**config["decoder"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: invalid decoder config ({e})") from None
    adapter = encoder.adapter
    decoder = Decoder(encoder.cfg.dim, cfg, adapter.pos_embed, adapter.coord_dim, adapter.target_dim, encoder.cfg.depth)
    weights = directory / "decoder.safetensors"
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: unreadable or missing safetensors file ({e})") from None
    load_state(decoder, state, weights)
    return decoder


def load_state(module: torch.nn.Module, state: dict, source) -> None:
    """Strict load that names missing, unexpected and mis-shaped keys instead of a bare traceback."""
    check_state(module.state_dict(), state, source)
    module.load_state_dict(state)


def check_state(own: dict, state: dict, source) -> None:
    """``state`` must have the keys and shapes of ``own`` (a module's state dict); else a
    ``CheckpointError`` names what is missing, unexpected or mis-shaped."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
            f"shape mismatches: {shapes[:3]}" if shapes else "",
        ]
        raise CheckpointError(f"{source}: weights do not match the model: " + "; ".join(p for p in parts if p))


# Training checkpoints: what a resume needs, in safetensors + JSON. Accelerate's save_state writes
# the optimizer and the random generators with torch.save (pickle); the run derives every random
# draw from its seed (foundations.train), so weights and optimizer moments are all there is to keep.


def save_training_state(directory, weights: dict, optimizer: dict) -> dict:
    """Write the model's ``weights`` to ``model.safetensors`` and the optimizer's tensors to
    ``optimizer.safetensors`` in ``directory``; ``optimizer`` is keyed by parameter name, as
    ``torch.distributed.checkpoint.state_dict.get_state_dict`` gives it (whole, even when the model
    is sharded). -> the optimizer's non-tensor state (hyper-parameters, parameter groups) for the
    caller's JSON."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with replacing(directory / "model.safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp)
    tensors, rest = {}, {}
    for param, values in optimizer["state"].items():
        for name, v in values.items():
            if torch.is_tensor(v):
                tensors[f"{param}.{name}"] = v.detach().contiguous().cpu()
            else:
                rest.setdefault(param, {})[name] = v
    with replacing(directory / "optimizer.safetensors") as tmp:
        save_file(tensors, tmp)
    return {"state": rest, "param_groups": optimizer["param_groups"]}


def load_training_state(directory, meta: dict) -> tuple[dict, dict]:
    """The inverse of ``save_training_state``; ``meta`` is what it returned -> (weights, optimizer
    state). Raises on any damage."""
    directory = Path(directory)
    state: dict = {}
    for key, v in load_file(directory / "optimizer.safetensors").items():
        param, name = key.rsplit(".", 1)  # parameter names hold dots, the state's names do not
        state.setdefault(param, {})[name] = v
    for param, values in meta["state"].items():
        state.setdefault(param, {}).update(values)
    return load_file(directory / "model.safetensors"), {"state": state, "param_groups": meta["param_groups"]}
