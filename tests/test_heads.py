import torch

from foundations.heads import Classifier, LinearProbeHead, layer_decay_groups
from foundations.vit import Encoder
from tests.conftest import TINY_ENCODER, image_adapter


def classifier(n_classes=3, smoothing=0.0):
    adapter = image_adapter(32)
    return Classifier(Encoder(adapter, TINY_ENCODER), LinearProbeHead(32, n_classes), smoothing)


def test_classifier__logits_and_label_smoothed_loss():
    model = classifier(smoothing=0.1)
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    out = model(x, y)
    assert out.logits.shape == (4, 3)
    # smoothing 0.1 over 3 classes: target 0.9 + 0.1/3 on the class, 0.1/3 on the others
    target = torch.full((4, 3), 0.1 / 3).scatter_(1, y[:, None], 0.9 + 0.1 / 3)
    torch.testing.assert_close(out.loss, -(target * out.logits.log_softmax(-1)).sum(-1).mean())
    assert model(torch.rand(2, 1, 16, 16)).loss is None


def test_linear_probe__batchnorm_has_no_affine_and_normalises():
    head = LinearProbeHead(8, 2)
    assert head.bn.weight is None and head.bn.bias is None
    feats = torch.randn(64, 8) * 50 + 10
    head.train()
    normed = head.bn(feats)
    torch.testing.assert_close(normed.mean(0), torch.zeros(8), atol=1e-4, rtol=0)


def test_layer_decay__scales_by_depth():
    model = classifier()
    groups = layer_decay_groups(model, weight_decay=0.05, decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    enc = model.encoder  # depth 2: adapter 0, blocks 1..2, head 3
    assert scale_of[id(enc.adapter.proj.weight)] == 0.5**3
    assert scale_of[id(enc.blocks[0].attn.qkv.weight)] == 0.5**2
    assert scale_of[id(enc.blocks[1].mlp.fc1.weight)] == 0.5**1
    assert scale_of[id(model.head.fc.weight)] == 1.0
    assert wd_of[id(enc.blocks[0].norm1.weight)] == 0.0 and wd_of[id(model.head.fc.weight)] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_classifier__multi_label_bce_and_soft_targets():
    model = classifier(n_classes=3)
    x = torch.rand(4, 1, 16, 16)
    logits = model(x).logits
    multi = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]])
    model.multi_label = True
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, multi)
    torch.testing.assert_close(model(x, multi).loss, expected)
    model.multi_label = False  # class probabilities (mixup) are cross-entropy targets
    soft = torch.tensor([[0.7, 0.3, 0.0]] * 4)
    expected = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(model(x, soft).loss, expected)
