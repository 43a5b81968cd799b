"""The TOC report of a checkpoint's codebook: every dimension's scores (best first, kept ones marked) and the
inter-code cosine similarity of the codebook on all D dimensions vs on the Q kept ones (seed 003 Fig. 2 as numbers;
the closed form and its equations: trainer/eval/toc.py).

    python -m trainer.programs.toc_report CHECKPOINT [--q 128] [--lambda 0.3] [--no-normalize] [--top 20]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import Tensor

from trainer.configs.eval import TOCConfig
from trainer.eval.toc import TOCScores, cosine_summary, toc_scores


def format_report(codebook: Tensor, scores: TOCScores, top: int | None) -> str:
    """The per-dimension table (best U first; ``top`` rows, all if None) and the before/after summary."""
    order = torch.sort(scores.score, descending=True, stable=True).indices
    kept = set(scores.selected.tolist())
    lines = [f"{'rank':>5} {'dim':>5} {'S (similarity)':>15} {'V (variance)':>13} {'U':>11}  kept"]
    for rank, k in enumerate(order.tolist()[:top] if top else order.tolist(), start=1):
        lines.append(f"{rank:>5} {k:>5} {scores.similarity[k].item():>15.6f} {scores.variance[k].item():>13.6f} "
                     f"{scores.score[k].item():>11.6f}  {'yes' if k in kept else ''}")
    if top and top < len(order):
        lines.append(f"  ... {len(order) - top} more dimensions (--top 0 prints all)")
    before, after = cosine_summary(codebook), cosine_summary(codebook, scores.selected)
    lines += ["", f"inter-code cosine similarity over {codebook.shape[0]} codes (off-diagonal pairs)",
              f"{'':<22}{'mean':>9}{'mean |cos|':>12}{'std':>9}{'max':>9}{'share > 0.5':>13}"]
    for name, s in ((f"before (all {codebook.shape[1]} dims)", before),
                    (f"after TOC ({len(scores.selected)} dims)", after)):
        lines.append(f"{name:<22}{s['mean']:>9.4f}{s['mean_abs']:>12.4f}{s['std']:>9.4f}{s['max']:>9.4f}"
                     f"{s['share_above_0.5']:>13.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from trainer.checkpoint import read_codebook

    parser = argparse.ArgumentParser(prog="python -m trainer.programs.toc_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="run dir, checkpoints dir, checkpoint dir (step_N) or its model.pt")
    parser.add_argument("--q", type=int, default=None, help="dimensions to keep (default: half of D)")
    parser.add_argument("--lambda", dest="balance", type=float, default=TOCConfig.balance, help="λ of eq. 17")
    parser.add_argument("--no-normalize", action="store_true", help="score the raw codes (no L2 normalisation)")
    parser.add_argument("--top", type=int, default=20, help="rows of the per-dimension table (0: all)")
    args = parser.parse_args(argv)
    try:
        codebook, ckpt = read_codebook(args.checkpoint)
        cfg = TOCConfig(dims=args.q if args.q is not None else codebook.shape[1] // 2, balance=args.balance,
                        normalize=not args.no_normalize)
        start = time.perf_counter()
        scores = toc_scores(codebook, cfg)
        elapsed_ms = (time.perf_counter() - start) * 1e3
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"TOC on {ckpt}: codebook {codebook.shape[0]} x {codebook.shape[1]}, keep Q={cfg.dims}, "
          f"λ={cfg.balance}, normalised codes: {cfg.normalize}; closed form took {elapsed_ms:.2f} ms")
    print(format_report(codebook, scores, args.top or None))
    print(f"\nkept dimensions: {sorted(scores.selected.tolist())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
