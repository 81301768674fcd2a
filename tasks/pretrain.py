"""The pretraining stage: MAE on the training split, pictures of held-out reconstructions, the
held-out masked loss beside the adapter's trivial baselines, and the saved encoder."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from accelerate.utils import send_to_device
from PIL import Image
from torch.utils.data import DataLoader

from foundations.checkpoint import load_decoder, load_state, save_pretrained
from foundations.files import replacing
from foundations.mae import DECODER_PRESETS, DecoderConfig, MAEConfig, MaskedAutoencoder
from foundations.masking import sample_generators
from foundations.trackers import log_image
from foundations.train import TrainConfig, full_state, sharded
from foundations.vit import PRESETS, EncoderConfig, gather_tokens
from modalities import ADAPTERS, build_adapter, load_encoder
from modalities.common import DomainData
from tasks.options import OptionError, PretrainOptions
from tasks.session import Session, check_encoder

log = logging.getLogger(__name__)


def model_config(
    opts: PretrainOptions, adapter: dict, encoder: EncoderConfig | None = None, decoder: DecoderConfig | None = None
) -> MAEConfig:
    """The modality's defaults (``Adapter.defaults``) with what the options set: an encoder of
    ``--preset``, or the given ``encoder`` (a saved one's, continued) with its saved ``decoder`` or
    a fresh one sized as for the preset of its width (``DecoderConfig()`` for other widths), of the
    kind ``--decoder`` names."""
    defaults = ADAPTERS[adapter["name"]][0].defaults
    ratio = opts.mask_ratio or defaults.mask.ratio
    try:  # e.g. a --mask-ratio of 1
        mask = dataclasses.replace(
            defaults.mask,
            strategy=opts.mask or defaults.mask.strategy,
            ratio=ratio,
            decode=opts.decode or defaults.mask.decode,
            # no more than is hidden: a ratio at or above the mask ratio is every hidden token
            predict_ratio=None if opts.predict_ratio is None or opts.predict_ratio >= ratio else opts.predict_ratio,
        )
    except ValueError as e:
        raise OptionError(f"options: {e}") from None
    norm_target = defaults.norm_target if opts.norm_pix is None else opts.norm_pix
    if encoder is None:
        encoder, fresh = dataclasses.replace(PRESETS[opts.preset], **defaults.encoder), DECODER_PRESETS[opts.preset]
    else:
        preset = next((name for name, p in PRESETS.items() if p.dim == encoder.dim), None)
        fresh = DECODER_PRESETS[preset] if preset else DecoderConfig()
    if decoder is None:  # a fresh one of the kind --decoder names (a saved decoder continues as it was)
        decoder = dataclasses.replace(fresh, kind=opts.decoder.removesuffix("-mix"), mix=opts.decoder == "cross-mix")
    encoder = dataclasses.replace(encoder, grad_checkpointing=opts.grad_checkpointing)  # how to run, not what
    return MAEConfig(encoder, decoder, mask, norm_target)


def pretrain_steps(opts: PretrainOptions, batch_size: int, grad_accum: int, n_train: int, processes: int) -> int:
    if not opts.epochs:
        return opts.max_steps
    return opts.epochs * max(1, n_train // (min(batch_size, n_train) * processes * grad_accum))


def pretrain(session: Session, data: DomainData, opts: PretrainOptions, start: Path | None = None) -> dict:
    """MAE pretraining from scratch, or continued from the saved encoder in ``start``: that encoder as
    it was saved (its config and its adapter's: patch, normalisation, position table), not ``--preset``."""
    acc, out, run = session.acc, session.out, session.run
    saved = decoder = None
    if start is not None:  # the saved encoder as it was, and the decoder saved beside it, if any
        check_encoder(start, data.adapter)
        saved = load_encoder(start)
        decoder = load_decoder(start, saved)
        preset = PRESETS[opts.preset]
        if (preset.dim, preset.depth, preset.heads) != (saved.cfg.dim, saved.cfg.depth, saved.cfg.heads):
            log.info("--preset %s ignored: %d blocks of width %d", opts.preset, saved.cfg.depth, saved.cfg.dim)
        log.info("continuing from %s with %s", start, "its MAE decoder" if decoder else "a fresh decoder")
    cfg = model_config(opts, data.adapter, saved and saved.cfg, decoder and decoder.cfg)
    adapter = data.adapter if saved is None else saved.adapter.config_dict()
    mae = MaskedAutoencoder(build_adapter(adapter, cfg.encoder.dim), cfg)
    for part, loaded in ((mae.encoder, saved), (mae.decoder, decoder)):
        if loaded is not None:
            load_state(part, loaded.state_dict(), start)
    train_loader = session.loader(data.pretrain, shuffle=True, batch_groups=data.batch_groups)
    steps = pretrain_steps(opts, run.batch_size, run.grad_accum, len(data.pretrain), acc.num_processes)
    train_cfg = TrainConfig(
        max_steps=steps,
        batch_size=train_loader.batch_sampler.batch_size,
        base_lr=opts.lr,
        warmup_steps=max(1, steps // 10),
        checkpoint_every=run.checkpoint_every,
    )
    recon = data.held_out_recon or data.held_out
    view = send_to_device(next(iter(DataLoader(recon, batch_size=8))), acc.device)
    pictures = out / "reconstructions"
    every = max(1, steps // 4)

    def on_step(step: int, model) -> None:
        # a sharded model's forward gathers from every process: all of them draw, the main one saves
        if data.render is None or (step % every and step != steps) or not (acc.is_main_process or sharded(model)):
            return
        model.eval()
        image = as_bytes(data.render(model, view["x"], view.get("valid")))
        frames = data.animate(model, view["x"], view.get("valid")) if data.animate and step == steps else None
        model.train()
        if not acc.is_main_process:
            return
        pictures.mkdir(parents=True, exist_ok=True)
        with replacing(pictures / f"step_{step:06d}.png") as tmp:
            Image.fromarray(image).save(tmp)
        log_image(acc, "pretrain/reconstruction", image, step)
        if frames is not None:  # the last reconstruction, moving
            frames = [Image.fromarray(f) for f in as_bytes(frames)]
            with replacing(pictures / "clip.gif") as tmp:
                frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=125, loop=0)

    # each sample's mask is drawn from its own key: the same masks however the batch is split
    loss = lambda m, b: m(b["x"], b.get("valid"), generator=sample_generators(b["key"])).loss  # noqa: E731
    res = session.fit(mae, train_loader, loss, train_cfg, "pretrain", on_step=on_step)
    mae = acc.unwrap_model(mae)
    held = held_out_reconstruction(mae, recon, run.batch_size, session.seed, acc.device)
    if sharded(mae):  # FSDP: the whole model gathered onto the main process, saved as one
        weights = full_state(mae)[0]
        mae = MaskedAutoencoder(build_adapter(adapter, cfg.encoder.dim), cfg)
        if acc.is_main_process:
            mae.load_state_dict(weights)
    if acc.is_main_process:
        save_pretrained(
            mae.encoder,
            out / "encoder",
            decoder=mae.decoder,  # kept so that pretraining can continue from here
            data_card=data.data_card,
            classes=data.classes,
            mask=dataclasses.asdict(cfg.mask),
            pretrain={"steps": res.steps, "loss": res.last_loss},
            continued_from=None if saved is None else {"encoder": str(start), "source": saved.info.get("source")},
            preprocessing=data.preprocessing,
        )
    acc.wait_for_everyone()
    return {
        "pretrain/loss_first": res.first_loss,
        "pretrain/loss_last": res.last_loss,
        "pretrain/steps": res.steps,
        **held,
    }


def as_bytes(image: torch.Tensor):
    """float in [0, 1] -> uint8 numpy, as image files hold it."""
    return (image.cpu().numpy() * 255).round().astype("uint8")


@torch.no_grad()
def held_out_reconstruction(mae, dataset, batch_size: int, seed: int, device) -> dict:
    """Masked-token loss on held-out data, with one fixed mask per batch, beside the loss of the
    adapter's trivial baselines (e.g. a flat patch, the group centre) on the same tokens."""
    mae.eval()
    sums: dict[str, float] = {}
    n = 0
    gen = torch.Generator(device=device).manual_seed(seed)
    for batch in DataLoader(dataset, batch_size=batch_size):
        batch = send_to_device(batch, device)
        o = mae(batch["x"], batch.get("valid"), generator=gen)
        target = gather_tokens(o.target, o.ids_pred)  # (B, M, P)
        weights = None if o.weights is None else gather_tokens(o.weights, o.ids_pred)
        losses = {"eval_loss": o.loss}
        for name, pred in mae.adapter.baselines(target, weights, mae.cfg.norm_target).items():
            losses[f"eval_loss_{name}"] = mae.adapter.loss(pred, target, weights, mae.cfg.norm_target)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item() * len(batch["y"])
        n += len(batch["y"])
    mae.train()
    return {f"pretrain/{k}": v / n for k, v in sums.items()}
