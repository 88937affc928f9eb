"""The streamed least-squares fit against SN-Net's formula A = pinv([X, 1]) · Y."""

import numpy as np

from snrt.family import ViTConfig
from snrt.stitch_fit import fit_stitch_layers
from snrt.variants import VariantSpace


class _Fam:  # the fit only needs anchors[i].config.embed_dim / .name and stitch_layers
    def __init__(self, dims):
        self.anchors = [type("A", (), {"config": type("C", (), {"embed_dim": d})(),
                                       "name": n})() for d, n in zip(dims, ("a", "b"))]
        self.stitch_layers = {}


def test_streamed_fit_equals_pinv_on_stacked_activations():
    import torch

    depth, dims, N = 3, (6, 10), 5
    cfgs = [ViTConfig(d, depth, 2, 2 * d, 4, 8, 1, 3) for d in dims]
    space = VariantSpace(["a", "b"], cfgs)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 1, 8, 8)).astype(np.float32) for _ in range(3)]
    # synthetic "block features": fixed random functions of the input, with a true linear map
    # plus noise between them so that the fit error is strictly between 0 and 1
    proj = {(a, b): rng.standard_normal((64, N * d))
            for a, d in enumerate(dims) for b in range(-1, depth)}

    def feats(x):
        flat = x.reshape(len(x), -1).astype(np.float64)
        out = []
        for a, d in enumerate(dims):
            out.append({b: np.tanh(flat @ proj[a, b]).reshape(len(x), N, d)
                        .astype(np.float32) for b in range(-1, depth)})
        return out

    fam = _Fam(dims)
    report = fit_stitch_layers(fam, space, batches, feats)
    all_feats = [feats(b) for b in batches]
    for t, positions in space.layer_positions().items():
        ws, bs = [], []
        for j, k in positions:
            X = torch.tensor(np.concatenate([f[0][j].reshape(-1, dims[0]) for f in all_feats]),
                             dtype=torch.float64)
            Y = torch.tensor(np.concatenate([f[1][k - 1].reshape(-1, dims[1])
                                             for f in all_feats]), dtype=torch.float64)
            X1 = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], 1)
            A = (torch.linalg.pinv(X1) @ Y).T  # SN-Net's ps_inv
            ws.append(A[:, :-1].numpy())
            bs.append(A[:, -1].numpy())
        layer = fam.stitch_layers[(0, 1)][t]
        np.testing.assert_allclose(layer.weight, np.mean(ws, 0), atol=1e-4)
        np.testing.assert_allclose(layer.bias, np.mean(bs, 0), atol=1e-4)
    assert all(0.0 < r.rel_residual < 1.0 for r in report)


def test_exactly_linear_features_give_zero_residual():
    depth, dims = 2, (4, 5)
    cfgs = [ViTConfig(d, depth, 1, d, 4, 8, 1, 3) for d in dims]
    space = VariantSpace(["a", "b"], cfgs)
    rng = np.random.default_rng(1)
    W, c = rng.standard_normal((4, 5)), rng.standard_normal(5)

    def feats(x):
        base = {b: x[:, 0, :3, :4].astype(np.float64) * (b + 2) for b in range(-1, depth)}
        return [{b: v.astype(np.float32) for b, v in base.items()},
                {b: (base[b] @ W + c).astype(np.float32) for b in base}]

    fam = _Fam(dims)
    batches = [rng.standard_normal((6, 1, 8, 8)).astype(np.float32) for _ in range(2)]
    report = fit_stitch_layers(fam, space, batches, feats)
    assert max(r.rel_residual for r in report) < 1e-8
