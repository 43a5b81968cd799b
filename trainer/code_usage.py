"""Which modalities use which codes (CMG paper, seed 001 §5.5 Fig. 4; appendix seed 000 §E Fig. 2): the classes of
``classify_code_usage`` and the figure of ``plot_code_usage``. ``trainer.tracking`` logs both (metrics
``codebook/window/<class>`` and the figure as an MLflow image); nothing here talks to MLflow.

For each code, the share of its assignments that came from each modality decides whether it is used by one modality
only (share >= ``dominance``, 80% in the paper), shared, or unused; see ``classify_code_usage``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

_MODALITY_COLOURS = {"audio": "#d62728", "video": "#1f77b4", "text": "#2ca02c",
                     "image": "#ff7f0e", "speech": "#8c564b"}
_SPARE_COLOURS = ("#e377c2", "#17becf", "#7f7f7f", "#aec7e8", "#ff9896")
_SHARED_COLOUR, _MIXED_COLOUR, _UNUSED_COLOUR = "#9467bd", "#bcbd22", "#000000"
# seed 003 Figs. 5-6, seed 004 Fig. 3 (three modalities): red = one modality holds more than 95 % of a code's
# activations, green = all three hold at least 5 %, blue = the rest
SEED_THREE_MODALITIES = {"dominance": 0.95, "shared_floor": 0.05}
_SEED_COLOURS = {"single": "#d62728", "shared": "#2ca02c", "mixed": "#1f77b4"}
_SEED_BAR_COLOURS = ("#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass(frozen=True)
class CodeUsage:
    """Per-code usage classes. ``counts`` is ``(n m)``: assignments of modality ``modalities[i]`` to each code.

    ``class_names`` in display order: ``shared``, ``<modality>_only`` per modality, ``mixed`` (three or
    more modalities only), ``unused``; ``code_class`` ``(m,)`` indexes into it.
    """
    modalities: tuple[str, ...]
    counts: np.ndarray
    class_names: tuple[str, ...]
    code_class: np.ndarray
    dominance: float
    shared_floor: float | None = None

    def summary(self) -> dict[str, int]:
        """Number of codes in each class, e.g. ``{"shared": 370, "audio_only": 12, ..., "unused": 3}``."""
        return {name: int((self.code_class == i).sum()) for i, name in enumerate(self.class_names)}

    def shares(self) -> np.ndarray:
        """``(n m)`` fraction of each code's assignments per modality (0 for unused codes)."""
        total = self.counts.sum(0)
        return np.divide(self.counts, total, out=np.zeros_like(self.counts), where=total > 0)


def classify_code_usage(counts: Mapping[str, Any], dominance: float = 0.8,
                        shared_floor: float | None = None) -> CodeUsage:
    """Class of each code from per-modality usage counts ``{"audio": (m,), "video": (m,), ...}``.

    With s_k the share of code i's assignments that came from modality k (seed 001 Fig. 4: red / blue
    when one modality holds more than 80%, green when each holds more than 20%; appendix Fig. 2 adds
    black for never-activated codes):
    - ``unused``: no assignments;
    - ``<k>_only``: s_k >= ``dominance`` (``dominance=1`` means strictly one modality);
    - ``shared``: otherwise, with two modalities; with n >= 3, only if every modality uses the code and
      holds at least ``shared_floor`` of it (default (1 - dominance) / (n - 1): the two-modality rule, generalised;
      seed 003 Figs. 5-6 and seed 004 Fig. 3 use dominance 0.95 and a floor of 5 %, ``SEED_THREE_MODALITIES``);
    - ``mixed`` (n >= 3): the rest: no modality dominates but some modality barely or never uses it.
    Counts may be integer or fractional (EMA counts), tensors or arrays; they must be non-negative.
    """
    if not 0.5 < dominance <= 1.0:
        raise ValueError(f"dominance must be in (0.5, 1], got {dominance}")
    if not isinstance(counts, Mapping):
        raise ValueError(f"code-usage counts must map modality names to (m,) counts, got {type(counts).__name__}")
    if len(counts) < 2:
        raise ValueError(f"code-usage counts need at least two modalities, got {list(counts)}")
    rows, size = [], None
    for name, value in counts.items():
        arr = torch.as_tensor(value).detach().cpu().double().numpy()
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"code-usage counts['{name}'] has shape {tuple(arr.shape)}; expected (m,) with m >= 1")
        if size is not None and arr.size != size:
            raise ValueError(f"code-usage counts['{name}'] has {arr.size} codes; "
                             f"counts['{next(iter(counts))}'] has {size}")
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ValueError(f"code-usage counts['{name}'] must be finite and non-negative")
        size = arr.size
        rows.append(arr)
    modalities = tuple(str(k) for k in counts)
    n = len(modalities)
    class_names = ("shared", *(f"{m}_only" for m in modalities), *(("mixed",) if n >= 3 else ()), "unused")
    index = {name: i for i, name in enumerate(class_names)}

    usage = CodeUsage(modalities, np.stack(rows), class_names, np.full(size, index["unused"]), dominance,
                      shared_floor)
    share = usage.shares()
    used = usage.counts.sum(0) > 0
    single = used & (share.max(0) >= dominance)
    only_index = np.array([index[f"{m}_only"] for m in modalities])
    usage.code_class[single] = only_index[share.argmax(0)[single]]
    rest = used & ~single
    if n == 2:
        usage.code_class[rest] = index["shared"]   # not dominated <=> each share > 1 - dominance
    else:
        floor = (1.0 - dominance) / (n - 1) if shared_floor is None else shared_floor
        # 1e-12: (1 - 0.7) / 2 is 0.15000000000000002 in floats; a share of exactly 15% must pass.
        by_all = (share.min(0) >= floor - 1e-12) & (usage.counts.min(0) > 0)
        usage.code_class[rest & by_all] = index["shared"]
        usage.code_class[rest & ~by_all] = index["mixed"]
    return usage


def _modality_colours(modalities: tuple[str, ...]) -> dict[str, str]:
    spare = iter(_SPARE_COLOURS * (1 + len(modalities) // len(_SPARE_COLOURS)))
    return {m: _MODALITY_COLOURS.get(m) or next(spare) for m in modalities}


def _class_style(usage: CodeUsage, seed_colours: bool = False) -> list[tuple[str, str]]:
    """(legend label, colour) per class, in ``usage.class_names`` order; a ``<m>_only`` class has m's colour, or
    with ``seed_colours`` the seeds' three-modality figure's: red one modality, green shared by all, blue the rest."""
    n, d = len(usage.modalities), usage.dominance
    floor = (1 - d) / max(n - 1, 1) if usage.shared_floor is None else usage.shared_floor
    colour = _modality_colours(usage.modalities)
    style = []
    for name in usage.class_names:
        if name == "shared":
            label = (f"shared by {' & '.join(usage.modalities)}" if n == 2
                     else f"shared by all (each >= {floor:.0%})")
            style.append((label, _SEED_COLOURS["shared"] if seed_colours else _SHARED_COLOUR))
        elif name == "mixed":
            style.append(("mixed (not shared by all)", _SEED_COLOURS["mixed"] if seed_colours else _MIXED_COLOUR))
        elif name == "unused":
            style.append(("unused", _UNUSED_COLOUR))
        else:
            modality = name[:-len("_only")]
            style.append((f"{modality} only (>= {d:.0%})", _SEED_COLOURS["single"] if seed_colours else
                          colour[modality]))
    return style


def plot_code_usage(counts: CodeUsage | Mapping[str, Any], path: str | Path | None = None, *,
                    dominance: float = 0.8, title: str | None = None, seed_colours: bool = False) -> Path | bytes:
    """Draw the code-usage figure (after seed 001 Fig. 4) as a PNG; return ``path``, or the bytes if no path.

    Codes stay in index order, so figures of one run compare position by position across steps. Top: one stacked
    bar per code, its height the code's assignments in the counted window and each modality's part in that
    modality's colour. Bottom strip: the code's class in the class colour (legend: codes per class). ``title``
    should say whose counts these are (the tracker puts the run name and the window's steps there).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg directly: no pyplot global state
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    usage = counts if isinstance(counts, CodeUsage) else classify_code_usage(counts, dominance)
    m = usage.code_class.size
    codes = np.arange(m)
    style = _class_style(usage, seed_colours)
    # the seeds' class colours are red, green and blue: the bars then take colours that none of the classes has
    modality_colour = dict(zip(usage.modalities, _SEED_BAR_COLOURS * 2)) if seed_colours else \
        _modality_colours(usage.modalities)
    summary = usage.summary()

    fig = Figure(figsize=(10, 5), layout="constrained")
    FigureCanvasAgg(fig)
    bars_ax, class_ax = fig.subplots(2, 1, sharex=True, height_ratios=[6, 1])
    bottom = np.zeros(m)
    for i, modality in enumerate(usage.modalities):
        bars_ax.bar(codes, usage.counts[i], bottom=bottom, width=0.9 if m <= 64 else 1.0, linewidth=0,
                    color=modality_colour[modality], label=modality)
        bottom += usage.counts[i]
    bars_ax.set_ylim(0, 1.08 * max(bottom.max(), 1.0))   # headroom: the tallest bar stays visible as a bar
    bars_ax.set_ylabel("assignments")
    bars_ax.legend(title="modality", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    bars_ax.set_title(title or f"code usage: {m} codes, {' / '.join(usage.modalities)}", fontsize=11)

    palette = np.array([to_rgb(colour) for _, colour in style])
    class_ax.imshow(palette[usage.code_class][None], aspect="auto", interpolation="nearest",
                    extent=(-0.5, m - 0.5, 0, 1))
    class_ax.set_yticks([])
    class_ax.set_xlim(-0.5, m - 0.5)
    if m <= 32:
        class_ax.set_xticks(codes)
    class_ax.set_xlabel("code index")
    class_ax.legend(handles=[Patch(color=c, label=f"{label}: {summary[name]}")
                             for name, (label, c) in zip(usage.class_names, style)],
                    title=f"class ({m - summary['unused']} of {m} used)", loc="lower left",
                    bbox_to_anchor=(1.01, 0.0), fontsize=8, frameon=False)

    if path is None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


__all__ = ["SEED_THREE_MODALITIES", "CodeUsage", "classify_code_usage", "plot_code_usage"]
