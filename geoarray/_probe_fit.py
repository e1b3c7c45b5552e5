"""The two evaluation protocols on in-memory features: kNN (cosine, majority vote) and a linear probe.

Both return per-sample class scores, so top-1 and top-5 come from :func:`geoarray.metrics.topk_accuracy`.
"""

from __future__ import annotations

import numpy as np


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled with the training set's per-dimension mean and std."""
    mu = train.mean(0)
    sd = train.std(0)
    sd[sd == 0] = 1.0
    return (train - mu) / sd, (test - mu) / sd


def knn_scores(
    train: np.ndarray, y: np.ndarray, test: np.ndarray, n_classes: int, k: int = 10, chunk: int = 4096
) -> np.ndarray:
    """``(n_test, n_classes)`` votes of the ``k`` nearest training samples by cosine similarity, each vote
    weighted by its similarity (ties broken towards nearer neighbours)."""
    a = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    out = np.zeros((len(test), n_classes))
    k = min(k, len(train))
    for s in range(0, len(test), chunk):
        b = test[s : s + chunk]
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        sim = b @ a.T
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        w = np.take_along_axis(sim, nn, 1) + 1.0  # cosine in [-1, 1] -> weight in [0, 2]
        rows = np.repeat(np.arange(len(b)), k)
        np.add.at(out[s : s + chunk], (rows, y[nn].ravel()), w.ravel())
    return out


def linear_scores(
    train: np.ndarray,
    y: np.ndarray,
    test: np.ndarray,
    n_classes: int,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """Logits of a softmax regression trained full-batch with Adam on ``train`` (seeded)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(train, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    lin = torch.nn.Linear(xt.shape[1], n_classes)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.01)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        return lin(torch.as_tensor(test, dtype=torch.float32)).numpy()
