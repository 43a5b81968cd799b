"""The chunked spatial-map functions (trainer/models/spatial.py) and the chunked MSE (trainer/models/losses.py)
against the plain compositions they replace: values and every gradient, in float64 (gradcheck) and fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.models import spatial
from trainer.models.losses import reconstruction_loss
from trainer.models.spatial import gated_attention_pool, patch_decode


def plain_gated_attention_pool(x, gates, w1, b1, w2, b2):
    u = x * gates[:, None]
    a = torch.softmax(torch.tanh(u @ w1.T + b1) @ w2.T + b2, dim=1)      # (n p 1)
    return (a * u).sum(1)


def plain_patch_decode(hidden, embedding, w, b):
    return torch.relu(hidden[:, None] + embedding) @ w.T + b


@pytest.fixture
def small_chunks(monkeypatch):
    # 3 rows of a (p=4, c=6) float64 map per chunk: 7 rows make chunks of 3, 3 and a remainder of 1
    monkeypatch.setattr(spatial, "CHUNK_BYTES", 3 * 4 * 6 * 8)


def _pool_inputs(dtype, n=7, p=4, c=6, h=5):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, p, c, generator=gen, dtype=dtype)
    params = [torch.rand(n, c, generator=gen, dtype=dtype), torch.randn(h, c, generator=gen, dtype=dtype),
              torch.randn(h, generator=gen, dtype=dtype), torch.randn(1, h, generator=gen, dtype=dtype),
              torch.randn(1, generator=gen, dtype=dtype)]
    return x, [t.requires_grad_() for t in params]


def _decode_inputs(dtype, n=7, p=4, c=6, h=5):
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(n, h, generator=gen, dtype=dtype), torch.randn(p, h, generator=gen, dtype=dtype),
               torch.randn(c, h, generator=gen, dtype=dtype), torch.randn(c, generator=gen, dtype=dtype)]
    return [t.requires_grad_() for t in tensors]


def test_chunking_splits_rows_as_documented(small_chunks):
    assert spatial.chunk_rows(4, 6, 8) == 3
    assert spatial.chunk_rows(4, 6, 4) == 6
    assert spatial.chunk_rows(1000, 1000, 8) == 1          # never less than one row


def test_gated_attention_pool_gradients_float64(small_chunks):
    x, params = _pool_inputs(torch.float64)
    assert torch.autograd.gradcheck(lambda *p: gated_attention_pool(x, *p), params)
    torch.testing.assert_close(gated_attention_pool(x, *params), plain_gated_attention_pool(x, *params))


def test_patch_decode_gradients_float64(small_chunks):
    inputs = _decode_inputs(torch.float64)
    assert torch.autograd.gradcheck(patch_decode, inputs)
    torch.testing.assert_close(patch_decode(*inputs), plain_patch_decode(*inputs))


@pytest.mark.parametrize("which", ["pool", "decode"])
def test_fp32_values_and_gradients_match_autograd_at_video_like_shapes(which):
    # 40 rows of a 49 x 64 map: several chunks at the real CHUNK_BYTES
    if which == "pool":
        x, params = _pool_inputs(torch.float32, n=40 * 30, p=49, c=64, h=16)
        fused, plain = (lambda: gated_attention_pool(x, *params)), (lambda: plain_gated_attention_pool(x, *params))
    else:
        params = _decode_inputs(torch.float32, n=40 * 30, p=49, c=64, h=16)
        fused, plain = (lambda: patch_decode(*params)), (lambda: plain_patch_decode(*params))
    results = []
    for fn in (fused, plain):
        out = fn()
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad((out * weight).sum(), params)
        results.append((out, grads))
    (out_f, grads_f), (out_p, grads_p) = results
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    for g_f, g_p in zip(grads_f, grads_p):   # the scorer's output bias has gradient 0 (softmax): rounding on both
        torch.testing.assert_close(g_f, g_p, rtol=1e-4, atol=1e-4 * max(1.0, g_p.abs().max().item()))


def test_gated_attention_pool_refuses_a_trainable_map():
    x, params = _pool_inputs(torch.float32)
    with pytest.raises(ValueError, match="must not require grad"):
        gated_attention_pool(x.requires_grad_(), *params)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 7, 7, 5), (600_001,)])
def test_reconstruction_loss_is_mse_loss(shape):
    gen = torch.Generator().manual_seed(0)
    prediction = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(shape, generator=gen, dtype=torch.float64)
    value = reconstruction_loss(prediction, target)
    grad, = torch.autograd.grad(3.0 * value, prediction)
    expected = F.mse_loss(prediction, target)
    expected_grad, = torch.autograd.grad(3.0 * expected, prediction)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=0)
    if prediction.numel() < 100:
        assert torch.autograd.gradcheck(lambda p: reconstruction_loss(p, target), (prediction,))


def test_under_torch_func_transforms_the_plain_composition_runs():
    # COMET's per-clip Fisher differentiates the decoder inside vmap(grad(...)), where a chunked loop cannot run
    x, params = _pool_inputs(torch.float64)
    decode = _decode_inputs(torch.float64)
    target = torch.randn(7, 4, 6, dtype=torch.float64)

    def per_row(h, row_target):
        pooled = gated_attention_pool(x[:1], *[p.detach() for p in params[:1]], *params[1:])
        out = patch_decode(h.unsqueeze(0), *decode[1:])
        return reconstruction_loss(out, row_target.unsqueeze(0)) + pooled.sum()

    got = torch.func.vmap(torch.func.grad(per_row))(decode[0].detach(), target)
    expected = torch.stack([torch.autograd.grad(
        F.mse_loss(plain_patch_decode(decode[0][i:i + 1], *decode[1:]), target[i:i + 1]), decode[0])[0][i]
        for i in range(7)])
    torch.testing.assert_close(got, expected)
