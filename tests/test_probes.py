"""Probes of a frozen encoder on small data whose answer is known."""

import pytest
import torch
import torch.nn.functional as F

from foundations.probes import AttentiveProbe, EfficientProbe, knn_scores, parameter_count


def clusters(n_per_class: int, n_classes: int = 3, dim: int = 16, seed: int = 0):
    """Points around ``n_classes`` orthogonal directions: separable by angle."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:n_classes] * 5
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), dim, generator=gen), y


def test_knn__separable_clusters_are_classified_exactly():
    train_x, train_y = clusters(30)
    test_x, test_y = clusters(10, seed=1)
    scores = knn_scores(train_x, train_y, test_x, n_classes=3)
    assert scores.shape == (30, 3) and torch.allclose(scores.sum(1), torch.ones(30))
    assert (scores.argmax(1) == test_y).all()


def test_knn__votes_are_weighted_by_similarity_over_temperature():
    # one training item at the query's direction (class 0), two at 60 degrees (class 1): with k = 3 the
    # votes are e^(1/t) against 2 e^(0.5/t)
    train_x = torch.tensor([[1.0, 0.0], [0.5, 3**0.5 / 2], [0.5, -(3**0.5) / 2]])
    scores = knn_scores(train_x, torch.tensor([0, 1, 1]), torch.tensor([[2.0, 0.0]]), n_classes=2, k=3, t=0.5)
    w0, w1 = torch.exp(torch.tensor(2.0)), 2 * torch.exp(torch.tensor(1.0))
    assert torch.allclose(scores[0], torch.stack([w0, w1]) / (w0 + w1))
    # only the nearest with k = 1; multi-label targets are averaged the same way
    assert knn_scores(train_x, torch.tensor([0, 1, 1]), torch.tensor([[0.4, 0.9]]), 2, k=1).tolist() == [[0.0, 1.0]]
    multi = knn_scores(train_x, torch.tensor([[1, 0], [1, 1], [0, 1]]), torch.tensor([[1.0, 0.0]]), 2, k=3, t=0.5)
    assert torch.allclose(multi[0], torch.stack([w0 + w1 / 2, w1]) / (w0 + w1))


def test_efficient_probe__parameters_and_shape():
    D, M, C = 64, 32, 5
    ep = EfficientProbe(D, C, queries=M)
    # queries, the value projection without bias, the linear head; BatchNorm without affine
    assert parameter_count(ep) == M * D + D * D + D * C + C
    assert ep(torch.randn(4, 10, D)).shape == (4, C)
    with pytest.raises(ValueError, match="must divide"):
        EfficientProbe(48, C, queries=32)


def test_efficient_probe__uniform_attention_is_mean_pooling_and_query_j_pools_chunk_j():
    D, M = 32, 8
    ep = EfficientProbe(D, 3, queries=M)
    tokens = torch.randn(2, 6, D)
    with torch.no_grad():
        ep.queries.zero_()  # every query attends uniformly
        assert torch.allclose(ep.pool(tokens), ep.v(tokens).mean(1), atol=1e-6)
        ep.v.weight.copy_(torch.eye(D))
        ep.queries[0, 0] = 1e3 * tokens[0, 2] / tokens[0, 2].norm()  # query 0 looks at token 2 of item 0 only
        pooled = ep.pool(tokens[:1])[0]
    chunk = D // M
    assert torch.allclose(pooled[:chunk], tokens[0, 2, :chunk], atol=1e-4)  # query 0 -> chunk 0 of token 2
    assert torch.allclose(pooled[chunk:], tokens[0].mean(0)[chunk:], atol=1e-6)  # the others still uniform


def test_attentive_probe__parameters_shape_and_order_of_tokens():
    D, C = 32, 4
    probe = AttentiveProbe(D, C, heads=4)
    # query, 2 LayerNorms, q, kv, proj, MLP (4x), head
    expected = D + 2 * 2 * D + (D * D + D) + (2 * D * D + 2 * D) + (D * D + D) + (8 * D * D + 5 * D) + (D * C + C)
    assert parameter_count(probe) == expected > parameter_count(EfficientProbe(D, C, queries=8))
    tokens = torch.randn(3, 7, D)
    out = probe(tokens)
    assert out.shape == (3, C)
    assert torch.allclose(probe(tokens[:, torch.randperm(7)]), out, atol=1e-5)  # pooling ignores token order


@pytest.mark.parametrize("probe_cls", [EfficientProbe, AttentiveProbe])
def test_attentive_probes_find_the_one_token_that_decides_the_class(probe_cls):
    """Each item: 15 noise tokens and one marker token (a fixed key direction) carrying the class
    as the sign of another dimension. Mean pooling dilutes the marker 16 times under the noise;
    attention finds it. Held-out accuracy against the linear probe on mean-pooled tokens."""

    def items(n, seed):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 16, 32, generator=gen)
        y = torch.randint(0, 2, (n,), generator=gen)
        where = torch.randint(0, 16, (n,), generator=gen)
        x[torch.arange(n), where, 0] = 8.0  # the key
        x[torch.arange(n), where, 1] = (2.0 * y - 1) * 3  # the class
        return x, y

    (x, y), (test_x, test_y) = items(256, 0), items(256, 1)

    def trained(model, inputs):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(100):
            opt.zero_grad()
            F.cross_entropy(model(inputs), y).backward()
            opt.step()
        return model.eval()

    probe = trained(probe_cls(32, 2), x)
    linear = trained(torch.nn.Sequential(torch.nn.BatchNorm1d(32, affine=False), torch.nn.Linear(32, 2)), x.mean(1))
    with torch.no_grad():
        acc = (probe(test_x).argmax(1) == test_y).float().mean()
        acc_linear = (linear(test_x.mean(1)).argmax(1) == test_y).float().mean()
    assert acc > 0.9 and acc > acc_linear + 0.1, (acc, acc_linear)
