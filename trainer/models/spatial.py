"""The spatial-map paths of Uni-Code's encoder and decoder (trainer/models/encoders.py), computed in cache-sized chunks.

A video feature at the paper's shapes is a 7×7×512 map per segment: 80 clips × 10 segments × 49 patches × 512
channels = 20 M floats (80 MB) per batch. Written as plain autograd ops, every elementwise step over a tensor of
that size (gating, pooling weights, the decoder's patch activations, their gradients) is a pass through main memory,
and those passes, not the matrix products, were most of the training step on a CPU (profile in docs/performance.md,
"Where the rest of the AV step goes"). The two functions below give the same values and gradients as the plain
compositions written in their docstrings, but walk the batch in chunks of rows (``chunk_rows``: about
``CHUNK_BYTES`` of the map each), so each intermediate of one chunk is made, used and dropped while it is still in
cache: the (rows p c) tensors are read from memory once per forward and once per backward, and the matrix products
are the same products, cut along rows.

Both are ``torch.autograd.Function``s with a hand-written backward; ``tests/unit/test_spatial.py`` checks values
and every gradient against the plain composition (float64 ``gradcheck`` and fp32 against autograd). Under a
``torch.func`` transform (COMET's per-clip Fisher runs the decoder inside ``vmap(grad(...))``) they run the plain
composition instead (``plain_required``): a chunked loop has no batching rule; and so do ``torch.compile`` and any
device other than the CPU, whose caches the chunks are for.

Shapes: n = rows (clips × segments), p = patches, c = channels, h = hidden width.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_BYTES = 1 << 21   # 2 MiB of the (p c) map per chunk: a chunk's intermediates stay in L2


def plain_required(*tensors: Tensor) -> bool:
    """Whether the plain composition runs instead of a chunked Function: off the CPU (the chunks are sized for a
    CPU's cache; a GPU runs the plain ops as a few large kernels), while ``torch.compile`` traces (its compiler fuses
    the plain ops itself, and would unroll the chunk loop), or when any of ``tensors`` is inside a ``torch.func``
    transform (vmap, grad, ...: a chunked loop has no batching rule)."""
    if torch.compiler.is_compiling() or any(t.device.type != "cpu" for t in tensors):
        return True
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def chunk_rows(patches: int, channels: int, element_size: int) -> int:
    """Rows per chunk so that one chunk of a ``(n p c)`` map holds about ``CHUNK_BYTES``."""
    return max(1, CHUNK_BYTES // (patches * channels * element_size))


class _GatedAttentionPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, gates: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        n, p, c = x.shape
        rows = chunk_rows(p, c, x.element_size())
        pooled = x.new_empty(n, c)
        hidden = x.new_empty(n, p, w1.shape[0])     # tanh(W1 u + b1), kept: the backward needs it
        weights = x.new_empty(n, p)                 # softmax_p of the scores
        for start in range(0, n, rows):
            end = min(start + rows, n)
            u = x[start:end] * gates[start:end, None]                                   # (r p c)
            h = hidden[start:end]
            torch.addmm(b1, u.view(-1, c), w1.t(), out=h.view(-1, w1.shape[0])).tanh_()
            scores = (h @ w2.t()).squeeze(-1) + b2                                      # (r p)
            a = scores.softmax(dim=1)
            weights[start:end] = a
            torch.bmm(a.unsqueeze(1), u, out=pooled[start:end].unsqueeze(1))           # Σ_p a_p u_p
        ctx.save_for_backward(x, gates, w1, w2, hidden, weights)
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled: Tensor):
        x, gates, w1, w2, hidden, weights = ctx.saved_tensors
        n, p, c = x.shape
        rows = chunk_rows(p, c, x.element_size())
        grad_gates = torch.empty_like(gates)
        grad_w1, grad_b1 = torch.zeros_like(w1), w1.new_zeros(w1.shape[0])
        grad_w2, grad_b2 = torch.zeros_like(w2), w2.new_zeros(1)
        grad_pooled = grad_pooled.contiguous()
        for start in range(0, n, rows):
            end = min(start + rows, n)
            x_c, g_c, a, h = x[start:end], grad_pooled[start:end], weights[start:end], hidden[start:end]
            u = x_c * gates[start:end, None]                                            # (r p c), recomputed
            grad_a = torch.bmm(u, g_c.unsqueeze(-1)).squeeze(-1)                        # (r p)
            grad_scores = a * (grad_a - (a * grad_a).sum(1, keepdim=True))              # softmax backward
            grad_w2 += (grad_scores.unsqueeze(-1) * h).sum((0, 1)).unsqueeze(0)
            grad_b2 += grad_scores.sum()
            grad_pre = (grad_scores.unsqueeze(-1) * w2) * (1.0 - h * h)                 # (r p h), tanh backward
            flat_pre, flat_u = grad_pre.view(-1, w1.shape[0]), u.view(-1, c)
            torch.addmm(grad_w1, flat_pre.t(), flat_u, out=grad_w1)   # out=, not addmm_: the FLOP counter sees it
            grad_b1 += flat_pre.sum(0)
            grad_u = torch.baddbmm(grad_pre @ w1, a.unsqueeze(-1), g_c.unsqueeze(1))     # scorer + pooling paths
            grad_gates[start:end] = (grad_u * x_c).sum(1)
        return None, grad_gates, grad_w1, grad_b1, grad_w2, grad_b2


def gated_attention_pool(x: Tensor, gates: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """Σ_p softmax_p(w2·tanh(W1 u_p + b1) + b2) u_p with u_p = x_p ⊙ gates: channel gating, then spatial attention
    pooling (``encoders.ChannelGate`` then ``encoders.AttentionPool``) without a ``(n p c)`` intermediate in memory.

    ``x``: ``(n p c)``, a frozen feature (no gradient is returned for it); ``gates``: ``(n c)``; ``w1`` ``(h c)``,
    ``b1`` ``(h)``, ``w2`` ``(1 h)``, ``b2`` ``(1)``: the scorer's two linear layers. Returns ``(n c)``.
    Plain composition: ``u = x * gates[:, None]; a = softmax(tanh(u @ w1.T + b1) @ w2.T + b2, dim=1); (a * u).sum(1)``.
    """
    if x.requires_grad:
        raise ValueError("gated_attention_pool takes a frozen feature map: x must not require grad")
    if plain_required(x, gates, w1):
        u = x * gates.unsqueeze(-2)
        return (torch.softmax(torch.tanh(u @ w1.T + b1) @ w2.T + b2, dim=-2) * u).sum(-2)
    return _GatedAttentionPool.apply(x.contiguous(), gates.contiguous(), w1, b1, w2, b2)


class _PatchDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, patch_embedding: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
        n, width = hidden.shape
        p, c = patch_embedding.shape[0], w_out.shape[0]
        rows = chunk_rows(p, c, hidden.element_size())
        out = hidden.new_empty(n, p, c)
        for start in range(0, n, rows):
            end = min(start + rows, n)
            activation = (hidden[start:end, None] + patch_embedding).relu_()           # (r p h)
            # mm, then the bias in place while the chunk is in cache: addmm would first copy the bias into the
            # output in memory and have the product read it back
            torch.mm(activation.view(-1, width), w_out.t(), out=out[start:end].view(-1, c)).add_(b_out)
        ctx.save_for_backward(hidden, patch_embedding, w_out)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, patch_embedding, w_out = ctx.saved_tensors
        n, width = hidden.shape
        p, c = patch_embedding.shape[0], w_out.shape[0]
        rows = chunk_rows(p, c, hidden.element_size())
        grad_out = grad_out.contiguous()
        grad_hidden = torch.empty_like(hidden)
        grad_embedding, grad_w = torch.zeros_like(patch_embedding), torch.zeros_like(w_out)
        grad_b = w_out.new_zeros(c)
        for start in range(0, n, rows):
            end = min(start + rows, n)
            activation = (hidden[start:end, None] + patch_embedding).relu_()           # (r p h), recomputed
            flat_grad = grad_out[start:end].view(-1, c)
            torch.addmm(grad_w, flat_grad.t(), activation.view(-1, width), out=grad_w)
            grad_b += flat_grad.sum(0)
            grad_pre = (flat_grad @ w_out).view(-1, p, width).masked_fill_(activation == 0, 0.0)   # relu backward
            grad_hidden[start:end] = grad_pre.sum(1)
            grad_embedding += grad_pre.sum(0)
        return grad_hidden, grad_embedding, grad_w, grad_b


def patch_decode(hidden: Tensor, patch_embedding: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """``relu(hidden[:, None] + patch_embedding) @ w_out.T + b_out``: every patch of a spatial map decoded from its
    segment's hidden vector plus a learned patch embedding, without the ``(n p h)`` activation in memory.

    ``hidden``: ``(n h)``; ``patch_embedding``: ``(p h)``; ``w_out`` ``(c h)``, ``b_out`` ``(c)``. Returns ``(n p c)``.
    """
    if plain_required(hidden, patch_embedding, w_out):
        return torch.relu(hidden.unsqueeze(-2) + patch_embedding) @ w_out.T + b_out
    return _PatchDecode.apply(hidden.contiguous(), patch_embedding, w_out, b_out)
