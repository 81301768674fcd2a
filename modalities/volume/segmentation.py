"""Volume segmentation with a pretrained encoder: UNETR (Hatamizadeh et al. 2022, "UNETR:
Transformers for 3D Medical Image Segmentation") on intermediate encoder tokens, built from
MONAI's blocks; Dice + cross-entropy loss; sliding-window inference over whole volumes; Dice per
class beside the Dice of an empty prediction.

UNETR reads the tokens of blocks 3, 6, 9 and 12 of a 12-block ViT with 16^3 patches and upsamples
them in four x2 stages. Here the number of stages is log2 of the patch side (16 -> 4, 8 -> 3) and
the layers are spread evenly over the encoder's depth. MONAI's ``UnetrPrUpBlock`` repeats one
upsampling factor, so the patch must be isotropic (a power of two); anisotropic patches train and
classify but do not segment.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.utils import one_hot
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from foundations.checkpoint import CheckpointError, load_state, save_pretrained
from foundations.files import replacing
from modalities import load_encoder
from modalities.volume.io import read_volume, save_labels, strip_extension
from modalities.volume.transforms import PipelineConfig, ToSample, pipeline


class UNETRHead(nn.Module):
    def __init__(
        self, in_channels: int, dim: int, patch: int, n_classes: int, features: int = 16, norm: str = "instance"
    ):
        super().__init__()
        self.stages = s = int(math.log2(patch))
        self.stem = UnetrBasicBlock(3, in_channels, features, kernel_size=3, stride=1, norm_name=norm, res_block=True)
        # skip k (1 .. s-1) brings tokens up by 2^(s-k) to the scale of decoder stage k
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(
                3,
                dim,
                features * 2**k,
                num_layer=s - 1 - k,
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=norm,
                conv_block=True,
                res_block=True,
            )
            for k in range(1, s)
        )
        self.ups = nn.ModuleList(
            UnetrUpBlock(
                3,
                dim if k == s - 1 else features * 2 ** (k + 1),
                features * 2**k,
                kernel_size=3,
                upsample_kernel_size=2,
                norm_name=norm,
                res_block=True,
            )
            for k in range(s)
        )
        self.out = UnetOutBlock(3, features, n_classes)

    def forward(self, image: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
        """image: (B, C, X, Y, Z); hidden: s token grids (B, D, gx, gy, gz), shallow to deep
        -> logits (B, classes, X, Y, Z)."""
        skips = [self.stem(image)] + [blk(h) for blk, h in zip(self.skips, hidden[:-1], strict=True)]
        x = hidden[-1]
        for k in reversed(range(self.stages)):
            x = self.ups[k](x, skips[k])
        return self.out(x)


class SegmenterOutput(NamedTuple):
    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, classes, X, Y, Z)


class Segmenter(nn.Module):
    """A volume encoder + UNETR head; ``freeze`` trains the head alone (a segmentation probe)."""

    def __init__(self, encoder: nn.Module, n_classes: int, features: int = 16, freeze: bool = False):
        super().__init__()
        patch = encoder.adapter.config.patch
        if len(set(patch)) != 1 or patch[0] < 2 or patch[0] & (patch[0] - 1):
            raise ValueError(f"UNETR segmentation needs an isotropic power-of-two patch, the encoder has {patch}")
        self.encoder, self.patch, self.freeze, self.features = encoder, patch[0], freeze, features
        self.head = UNETRHead(encoder.adapter.config.channels, encoder.cfg.dim, patch[0], n_classes, features)
        depth, s = len(encoder.blocks), self.head.stages
        self.layers = [max(1, k * depth // s) for k in range(1, s)] + [depth]
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        if freeze:
            encoder.requires_grad_(False)

    def forward(self, x: dict, y: torch.Tensor | None = None) -> SegmenterOutput:
        image = x["image"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            hidden = self.encoder.hidden_states(x, self.layers)  # s x (B, N, D)
        grid = [n // self.patch for n in image.shape[2:]]
        hidden = [h.transpose(1, 2).reshape(h.shape[0], h.shape[2], *grid) for h in hidden]
        logits = self.head(image, hidden)
        return SegmenterOutput(None if y is None else self.loss_fn(logits, y), logits)


def save_segmenter(model: Segmenter, directory, classes: list[str], **info) -> Path:
    """The fine-tuned encoder as ``save_pretrained`` writes it (with ``info``) and its UNETR head
    in ``head.safetensors`` beside it; ``load_segmenter`` reads both."""
    directory = Path(directory)
    save_pretrained(model.encoder, directory, segmentation={"classes": classes, "features": model.features}, **info)
    head = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
    with replacing(directory / "head.safetensors") as tmp:
        save_file(head, tmp)
    return directory


def load_segmenter(directory, device: str | torch.device = "cpu") -> Segmenter:
    """A segmenter written by ``save_segmenter`` (e.g. ``runs/volumes/segmenter/finetune``)."""
    directory = Path(directory)
    encoder = load_encoder(directory)
    spec = encoder.info.get("segmentation")
    if spec is None:
        raise CheckpointError(f"{directory}: an encoder without a segmentation head; fine-tune with --task segment")
    model = Segmenter(encoder, len(spec["classes"]), spec["features"])
    try:
        state = load_file(directory / "head.safetensors")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{directory / 'head.safetensors'}: missing or unreadable ({e})") from None
    load_state(model.head, state, directory / "head.safetensors")
    model.classes = spec["classes"]
    return model.to(device).eval()


def infer(model: Segmenter, image, spacing, roi, overlap: float = 0.25) -> torch.Tensor:
    """Logits (B, classes, X, Y, Z) of whole volumes (B, C, X, Y, Z) by gaussian-weighted sliding windows."""
    return sliding_window_inference(
        image,
        roi,
        4,
        lambda patch: model({"image": patch, "spacing": spacing}).logits,
        overlap=overlap,
        mode="gaussian",
    )


@torch.no_grad()
def segment_files(model: Segmenter, paths, out_dir, overlap: float = 0.25) -> list[Path]:
    """Segment NIfTI (or .npy) files prepared exactly as in training (the encoder's stored
    preprocessing); writes ``<name>_seg.nii.gz`` on the preprocessed grid with its affine."""
    cfg = PipelineConfig.saved(model.encoder.info["preprocessing"])
    prepare = pipeline(cfg, "prepare")
    device = next(model.parameters()).device
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        item = prepare({"image": read_volume(path), "label": -1})
        x = ToSample()(item)["x"]
        image, spacing = x["image"][None].to(device), x["spacing"][None].to(device)
        labels = infer(model, image, spacing, cfg.roi, overlap).argmax(1)[0]
        written.append(out_dir / f"{strip_extension(Path(path).name)}_seg.nii.gz")
        save_labels(written[-1], labels, item["image"].affine)
    return written


def save_prediction(save_dir: Path, item: dict, name: str, image, truth, pred) -> None:
    """``<name>_pred.nii.gz`` (labels on the preprocessed grid, with its affine, so viewers place it
    in the scanner's space) and ``<name>.png``: image | truth | prediction on the axial slice with
    the most labelled voxels."""
    stem = strip_extension(Path(name).name.replace(":", "_"))
    save_dir.mkdir(parents=True, exist_ok=True)
    save_labels(save_dir / f"{stem}_pred.nii.gz", pred, item["image"].affine)
    z = int((truth > 0).sum((0, 1)).argmax())
    lo, hi = image.min(), image.max()
    panels = [(image[..., z] - lo) / (hi - lo).clamp_min(1e-6), truth[..., z].float(), pred[..., z].float()]
    top = max(1, int(truth.max()), int(pred.max()))
    panels = [panels[0]] + [p / top for p in panels[1:]]
    row = torch.cat([p.cpu().T.flip(0) for p in panels], dim=1)  # radiological view, side by side
    with replacing(save_dir / f"{stem}.png") as tmp:
        Image.fromarray((row.clamp(0, 1).numpy() * 255).round().astype("uint8")).save(tmp)


@torch.no_grad()
def evaluate(
    model: Segmenter, dataset, roi, classes: list[str], device, overlap: float = 0.25, save_dir: Path | None = None
) -> dict:
    """Sliding-window Dice per foreground class over whole volumes, and the same for an empty
    prediction (the baseline a model must beat). With ``save_dir``, each volume's prediction is
    written there (``save_prediction``)."""
    model.eval()
    n = len(classes)
    dice, empty = (DiceMetric(include_background=False, reduction="mean_batch") for _ in range(2))
    for i in range(len(dataset)):
        item = dataset[i]
        image, spacing = item["x"]["image"][None].to(device), item["x"]["spacing"][None].to(device)
        truth = one_hot(item["y"][None].to(device), n)
        logits = infer(model, image, spacing, roi, overlap)
        pred = logits.argmax(1, keepdim=True)
        dice(one_hot(pred, n), truth)
        if save_dir is not None:
            prepared = dataset.items[i]  # whole volumes: one item each
            save_prediction(save_dir, prepared, prepared["name"], image[0, 0], item["y"][0], pred[0, 0])
        empty(torch.zeros_like(truth).index_fill_(1, torch.tensor([0], device=device), 1), truth)
    per_class, baseline = dice.aggregate().cpu(), empty.aggregate().cpu()
    out = {f"dice/{c}": float(v) for c, v in zip(classes[1:], per_class, strict=True)}
    return {**out, "dice_mean": float(per_class.nanmean()), "dice_empty_baseline": float(baseline.nanmean())}
