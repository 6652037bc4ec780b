"""Small plotting helpers the lessons share: image grids with boxes, the course map, training curves."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patches

FINDING_COLOURS = {
    "Cardiomegaly": "tab:red", "Pleural Effusion": "tab:blue", "Pneumothorax": "tab:orange",
    "Consolidation": "tab:green", "Lung Lesion": "magenta", "Atelectasis": "tab:cyan",
    "Edema": "tab:purple", "Support Devices": "yellow", "Fracture": "tab:pink",
}


def as_numpy_image(image) -> np.ndarray:
    """A (H, W) or (1, H, W) tensor or array as a (H, W) NumPy array for ``imshow``."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    return array[0] if array.ndim == 3 else array


def draw_boxes(ax, boxes, size: int, label: bool = True) -> None:
    """Draw SynthCXR boxes (fractions of the image) on an axis showing a ``size`` x ``size`` image."""
    for item in boxes:
        x0, y0, x1, y1 = (v * size for v in item["box"])
        colour = FINDING_COLOURS.get(item["finding"], "white")
        ax.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.2, ec=colour))
        if label:
            ax.text(x0, y0 - 1, item["finding"], color=colour, fontsize=6, va="bottom")


def show_images(images, titles=None, boxes=None, ncols: int = 8, size: float = 1.6, cmap: str = "gray",
                suptitle: str | None = None):
    """A grid of images (N,1,H,W or N,H,W), optional titles and SynthCXR boxes per image."""
    n = len(images)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = as_numpy_image(images[i])
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
        if boxes is not None:
            draw_boxes(ax, boxes[i], img.shape[-1])
        if titles is not None:
            ax.set_title("\n".join(textwrap.wrap(str(titles[i]), 22)), fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def draw_course_map():
    """The review's taxonomy, with the lesson that builds each piece."""
    pretraining = [
        ("Contrastive", "pull matching image and report\ntogether, push others apart\n\n02 SimCLR, CLIP, ConVIRT\n03 GLoRIA local + global"),
        ("Self-prediction", "hide part of the input,\npredict it back\n\n04 MAE, MLM, M3AE"),
        ("Generative", "write one modality\nfrom the other\n\n05 image -> report\n06 report -> image, T1 -> T2"),
        ("Generative VLM", "a language model reads\nimage tokens, answers\n\n07 LLaVA recipe, VQA"),
        ("Combined", "two objectives,\none model\n\n08 CoCa"),
    ]
    adaptation = [
        ("Fine-tuning", "update all, the last blocks,\nor a low-rank LoRA update\n09"),
        ("Frozen encoder + head", "linear probe on frozen features\n01-04, 09"),
        ("Zero-shot prompting", "compare an image with prompts\n02, 03, 09"),
        ("Instruction tuning", "ask the VLM in words\n07, 09"),
    ]
    fig, ax = plt.subplots(figsize=(12, 5.2))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 6.2)
    ax.axis("off")

    def box(x, y, w, h, title, body, colour):
        ax.add_patch(patches.FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="0.3"))
        ax.text(x + w / 2, y + h - 0.18, title, ha="center", va="top", fontsize=9, weight="bold")
        ax.text(x + w / 2, y + 0.12, body, ha="center", va="bottom", fontsize=7.5)

    ax.text(0.1, 5.95, "Data: images + reports + labels + labs (SynthCXR, 00)   ->   building blocks (01)",
            fontsize=10, weight="bold")
    ax.text(0.1, 5.25, "Pretraining strategy", fontsize=10, style="italic")
    for i, (title, body) in enumerate(pretraining):
        box(0.1 + i * 2.38, 3.35, 2.2, 1.7, title, body, "#dbe9f6")
    ax.text(0.1, 2.85, "Adaptation method", fontsize=10, style="italic")
    for i, (title, body) in enumerate(adaptation):
        box(0.1 + i * 2.98, 1.35, 2.8, 1.3, title, body, "#e3f1df")
    ax.text(0.1, 0.55, "Evaluation: 10 capstone (multimodal vs unimodal)   11 beyond text   "
            "12 responsible evaluation (subgroups, shift, decision curves)", fontsize=9.5)
    ax.annotate("", xy=(6, 2.7), xytext=(6, 3.3), arrowprops=dict(arrowstyle="->", lw=1.5))
    fig.tight_layout()
    return fig


def label_efficiency(curves: dict, ax=None, intervals: dict | None = None, references: dict | None = None,
                     markers: dict | None = None, title: str = "label efficiency", dodge: float = 0.03):
    """Test AUROC against the number of labelled training studies (log x), one line per method.

    Args:
        curves: ``{method: {n_labels: auroc}}``.
        intervals: ``{method: {n_labels: (low, high)}}``: drawn as error bars (e.g. bootstrap 95% CIs).
        references: ``{name: auroc}`` for methods with no label axis (zero-shot): dashed horizontal lines.
        markers: ``{name: (n_labels, auroc)}``: single points drawn as stars (e.g. a model tuned on other labels).
        dodge: methods are shifted sideways by this fraction of x each, so their error bars do not overlap.
    Returns the axes; the legend sits below them.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.6))
    total = len(curves) + len(markers or {})
    for i, (name, curve) in enumerate(curves.items()):
        shift = 1 + dodge * (i - (total - 1) / 2)
        xs = sorted(curve)
        colour = f"C{i}"
        ax.plot([x * shift for x in xs], [curve[x] for x in xs], "o-", color=colour, label=name, ms=4)
        for x, (low, high) in (intervals or {}).get(name, {}).items():
            ax.errorbar([x * shift], [curve[x]], yerr=[[curve[x] - low], [high - curve[x]]], color=colour,
                        capsize=3, lw=1)
    n = len(curves)
    for j, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, color=f"C{n + j}", ls="--", lw=1.2, label=name)
    for j, (name, (x, value)) in enumerate((markers or {}).items()):
        shift = 1 + dodge * (n + j - (total - 1) / 2)
        ax.plot([x * shift], [value], "*", ms=13, color=f"C{n + len(references or {}) + j}", label=name)
    ax.axhline(0.5, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training studies (log scale)")
    ax.set_ylabel("test macro AUROC")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return ax
