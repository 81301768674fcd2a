"""Voxel labelling of radiance grids: the labeller's shapes and loss, IoU, class weights, learning on
held-out grids against shape-blind predictors, and the pictures."""

import math
from dataclasses import asdict

import pytest
import torch

from foundations.vit import Encoder
from modalities import build_adapter
from modalities.nerf.adapter import NerfConfig
from modalities.nerf.data import VOXEL_CLASSES, GridDataset, prepare
from modalities.nerf.labelling import (
    PALETTE,
    VoxelLabeller,
    iou,
    iou_metrics,
    picture,
    predict,
    top_labels,
    valid_confusion,
    voxel_class_weights,
)
from modalities.nerf.mesh import PRIMITIVES, procedural_scene
from tests.conftest import TINY_ENCODER


def nerf_encoder(grid: int = 8, patch: int = 4) -> Encoder:
    adapter = {"name": "nerf", **asdict(NerfConfig(patch=(patch,) * 3, size=(grid,) * 3))}
    return Encoder(build_adapter(adapter, TINY_ENCODER.dim), TINY_ENCODER)


def grids(n: int = 2, grid: int = 8) -> dict:
    return {"image": torch.rand(n, 4, grid, grid, grid), "spacing": torch.full((n, 3), 0.25)}


def test_labeller__kinds_per_occupied_voxel_and_no_loss_where_empty_or_padding():
    model = VoxelLabeller(nerf_encoder(), len(VOXEL_CLASSES), class_weights=torch.rand(6) + 0.5)
    x = grids()
    x["image"][:, 3] = 0.5
    x["image"][:, 3, :2] = 0.005  # the first two x layers are empty (alpha at or below 0.01)
    out = model(x)
    assert out.logits.shape == (2, 6, 8, 8, 8) and out.loss is None
    pred = out.logits.argmax(1)
    assert (pred[:, :2] == 0).all() and (pred[:, 2:] > 0).all()  # empty where the grid is, a kind elsewhere
    y = torch.randint(1, 6, (2, 8, 8, 8))
    valid = torch.ones(2, 1, 8, 8, 8)
    valid[..., 6:] = 0  # the last two z layers are padding
    loss = model(x, y, valid).loss
    other = y.clone()
    other[..., 6:] = other[..., 6:] % 5 + 1  # other kinds on padding only
    other[:, :2] = 0  # and on empty voxels
    assert torch.equal(model(x, other, valid).loss, loss)
    other[:, 3, 3, 3] = other[:, 3, 3, 3] % 5 + 1  # and on a valid occupied voxel
    assert not torch.equal(model(x, other, valid).loss, loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # the voxels of the last patch (1, 1, 1) hold the last token's kinds
    with torch.no_grad():
        tokens = model.encoder(x).tokens  # (2, 8, D)
        last = model.proj(model.norm(tokens[:, 7])).view(2, 4, 4, 4, 5).permute(0, 4, 1, 2, 3)  # (p0 p1 p2 c)
    torch.testing.assert_close(out.logits[:, 1:, 4:, 4:, 4:], last)


def test_labeller__frozen_encoder_gets_no_gradient():
    model = VoxelLabeller(nerf_encoder(), 3, freeze=True)
    x = grids()
    with torch.no_grad():  # a probe's tokens computed beforehand give the same logits
        torch.testing.assert_close(model(x, tokens=model.encoder(x).tokens).logits, model(x).logits)
    model(x, torch.randint(0, 3, (2, 8, 8, 8))).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())  # not even optimised
    assert model.proj.weight.grad is not None
    nothing = model(x, torch.zeros(2, 8, 8, 8, dtype=torch.long))  # no voxel labelled with a kind: loss 0
    assert nothing.loss == 0 and nothing.loss.requires_grad
    with pytest.raises(ValueError, match="classes must be >= 2 .*, got 1"):
        VoxelLabeller(nerf_encoder(), 1)


def test_iou__hand_computed_case_on_valid_voxels():
    truth = torch.tensor([0, 0, 1, 1, 2, 2, 2]).view(1, 1, 1, 7)
    pred = torch.tensor([0, 1, 1, 1, 2, 0, 1]).view(1, 1, 1, 7)
    valid = torch.tensor([1, 1, 1, 1, 1, 1, 0.0]).view(1, 1, 1, 1, 7)  # the last voxel is padding
    cm = valid_confusion(pred, truth, valid, 4)
    # empty: tp 1, fp 1 (a 2), fn 1 (as 1) -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    torch.testing.assert_close(iou(cm)[:3], torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert math.isnan(iou(cm)[3])  # class 3: neither true nor predicted
    metrics = iou_metrics(cm, ["empty", "a", "b", "c"])
    assert "iou/c" not in metrics and metrics["iou/a"] == pytest.approx(2 / 3)
    assert metrics["iou_mean"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # object classes only
    assert metrics["voxel_accuracy"] == pytest.approx(4 / 6)


def test_voxel_class_weights__inverse_frequency_over_valid_voxels():
    labels = torch.tensor([0, 0, 0, 1, 1]).view(1, 1, 5)
    valid = torch.tensor([1, 1, 1, 1, 0.0]).view(1, 1, 1, 5)  # one voxel of class 1 is padding
    weights = voxel_class_weights([labels], [valid], 3)
    # counts 3, 1 and 0 counted as 1: total 5 / (3 classes x count)
    torch.testing.assert_close(weights, torch.tensor([5 / 9, 5 / 3, 5 / 3]))


def test_top_labels_and_picture__first_label_from_above_in_its_colour():
    labels = torch.zeros(2, 2, 3, dtype=torch.long)
    labels[0, 0] = torch.tensor([0, 2, 1])  # seen from z = 0: 2 hides 1
    labels[1, 1, 2] = 5
    assert top_labels(labels).tolist() == [[2, 0], [0, 5]]
    image = torch.zeros(1, 4, 2, 2, 3)
    shown = picture(image, labels[None], torch.zeros_like(labels)[None], zoom=1)
    assert shown.shape == (2, 6, 3) and shown.dtype == torch.uint8
    assert shown[0, 0].tolist() == [255, 255, 255]  # an empty grid composites to white
    assert torch.equal(shown[0, 2], PALETTE[2]) and torch.equal(shown[1, 3], PALETTE[5])
    assert torch.equal(shown[:, 4:], PALETTE[0].expand(2, 2, 3).to(torch.uint8))  # predicted empty


def test_grid_dataset__voxel_labels_move_with_the_grid():
    image, valid = torch.zeros(4, 4, 4, 4), torch.ones(1, 4, 4, 4)
    image[3, 0, 1, 2] = 1.0
    voxels = torch.zeros(4, 4, 4, dtype=torch.long)
    voxels[0, 1, 2] = 3
    item = {"image": image, "valid": valid, "spacing": torch.ones(3), "label": 0, "voxels": voxels}
    data = GridDataset([item], augment=True, labels="voxels")
    for seed in range(8):
        torch.manual_seed(seed)
        out = data[0]
        assert out["y"].dtype == torch.long and out["y"].nonzero().tolist() == out["x"]["image"][3].nonzero().tolist()
    with pytest.raises(ValueError, match="labels must be scene or voxels, got 'voxel'"):
        GridDataset([item], labels="voxel")


def test_labeller__learns_on_held_out_grids_beyond_shape_blind_predictors():
    """Spheres and tori, two a grid: a labeller on a frozen random encoder, trained for 200 steps, must
    label held-out grids better than before training and than labelling every occupied voxel with
    the better of the two kinds (an oracle's choice among the shape-blind predictors)."""
    kinds = ("sphere", "torus")
    items = [prepare(procedural_scene(i, 16, kinds=kinds, count=2), str(i), 0) for i in range(48)]
    train, held = GridDataset(items[:36], augment=True, labels="voxels"), GridDataset(items[36:], labels="voxels")
    weights = voxel_class_weights([it["voxels"] for it in train.items], [it["valid"] for it in train.items], 6)
    model = VoxelLabeller(nerf_encoder(grid=16), len(VOXEL_CLASSES), freeze=True, class_weights=weights)

    def score(pred) -> float:
        truth, valid = torch.stack([it["voxels"] for it in held.items]), torch.stack([it["valid"] for it in held.items])
        return iou_metrics(valid_confusion(pred, truth, valid, 6), list(VOXEL_CLASSES))["iou_mean"]

    occupied = torch.stack([it["image"][3] > 0.01 for it in held.items]).long()
    blind = max(score(occupied * (1 + PRIMITIVES.index(k))) for k in kinds)
    before = score(predict(model, held, "cpu", 12)[0])
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loader = torch.utils.data.DataLoader(train, batch_size=8, shuffle=True, drop_last=True)
    model.train()
    for _ in range(50):  # epochs of 4 batches: 200 steps
        for batch in loader:
            loss = model(batch["x"], batch["y"], batch["valid"]).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    after = score(predict(model, held, "cpu", 12)[0])
    assert after > blind + 0.05 and after > before + 0.2, (before, blind, after)
