"""Interactive views for the lessons; each one degrades to a static figure.

In a live Jupyter or Colab kernel every view is a small ipywidgets panel: pick an image,
type a prompt, move a slider, and the view redraws. Where nothing can interact with it
(papermill and the course's runner, which set ``MEDMM_WIDGETS=static``; a plain Python
script; GitHub's rendering of the committed outputs) the same call draws a static figure of
the view's first state instead, so a committed notebook still shows something real.

    view = retrieval_browser(image_emb, text_emb, images, reports)     # lesson 02
    view = prompt_playground(encode_text, image_emb, images, labels, FINDINGS)   # lesson 02
    view = attention_viewer(images, words, maps)                       # lesson 03
    view = generation_box(sample, "large right pleural effusion")      # lesson 06
    view = chat_box(answer, images)                                    # lesson 07

Each returns the widget (live) or the matplotlib Figure (static). A live view keeps what it
shows in ``view.state`` (a dict), which is what the tests read after changing a control.
"""
from __future__ import annotations

import html
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from .plotting import as_numpy_image


def live_frontend() -> bool:
    """True inside a Jupyter/Colab kernel that a person can interact with."""
    if os.environ.get("MEDMM_WIDGETS", "").lower() == "static":
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return False
    try:
        import ipywidgets  # noqa: F401
        from ipykernel.zmqshell import ZMQInteractiveShell
    except ImportError:
        return False
    # A kernel's shell (Jupyter, Colab's subclass); a terminal IPython has no frontend for widgets.
    return isinstance(shell, ZMQInteractiveShell)


def _interactive(interactive) -> bool:
    return live_frontend() if interactive is None else bool(interactive)


def _show(widget, display: bool):
    if display:
        from IPython.display import display as ipy_display
        ipy_display(widget)
    return widget


def _check_index(index, n: int, what: str) -> int:
    if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise ValueError(f"{what} must be an int in [0, {n}), got {index!r}")
    return int(index)


def _display_figure(fig) -> None:
    """Show a figure once inside the current Output (closed, so the inline backend does not show it again)."""
    from IPython.display import display
    display(fig)
    plt.close(fig)


def _image_panel(output, images, titles, ncols: int = 6):
    """Redraw a row of images inside an ipywidgets Output."""
    output.clear_output(wait=True)
    with output:
        fig = _image_row(images, titles, ncols)
        _display_figure(fig)


def _image_row(images, titles, ncols: int = 6, size: float = 1.5):
    n = max(1, len(images))
    cols = min(ncols, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(as_numpy_image(image), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- retrieval browser (lesson 02)

def nearest(similarity: torch.Tensor, query: int, k: int) -> list[tuple[int, float]]:
    """The ``k`` candidates most similar to row ``query`` of a (queries, candidates) matrix."""
    scores, index = similarity[query].topk(min(k, similarity.shape[1]))
    return [(int(i), float(s)) for i, s in zip(index, scores)]


def retrieval_browser(image_embeddings, text_embeddings, images, texts, *, k: int = 3, start: int = 0,
                      interactive=None, display: bool = True):
    """Pick an image, read its nearest reports; or pick a report, see its nearest images.

    image_embeddings (N, D) and text_embeddings (M, D) from the same contrastive model;
    ``images`` (N, 1, H, W); ``texts`` the M reports. Row i of each is study i when N == M.
    """
    img = F.normalize(torch.as_tensor(image_embeddings).float(), dim=-1)
    txt = F.normalize(torch.as_tensor(text_embeddings).float(), dim=-1)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"embeddings must be (N, D) and (M, D) with the same D, got {tuple(img.shape)} "
                         f"and {tuple(txt.shape)}")
    if len(images) != len(img) or len(texts) != len(txt):
        raise ValueError(f"{len(images)} images for {len(img)} image embeddings, {len(texts)} texts for "
                         f"{len(txt)} text embeddings: pass the images and texts the embeddings came from")
    start = _check_index(start, len(img), "start")
    similarity = img @ txt.t()

    def image_to_text(query):
        return [(i, s, texts[i]) for i, s in nearest(similarity, query, k)]

    def text_to_image(query):
        return nearest(similarity.t(), query, k)

    if not _interactive(interactive):
        fig, axes = plt.subplots(1, 2, figsize=(9, 2.6), gridspec_kw={"width_ratios": [1, 3]})
        axes[0].imshow(as_numpy_image(images[start]), cmap="gray", vmin=0, vmax=1)
        axes[0].set_title(f"query image {start}", fontsize=8)
        lines = [f"{rank}. [{s:+.2f}]{' (its own)' if i == start else ''} {t[:110]}"
                 for rank, (i, s, t) in enumerate(image_to_text(start), 1)]
        axes[1].text(0, 1, "nearest reports\n" + "\n".join(lines), va="top", fontsize=7, wrap=True)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        return fig

    import ipywidgets as W
    direction = W.ToggleButtons(options=["image -> reports", "report -> images"], value="image -> reports")
    query = W.BoundedIntText(value=start, min=0, max=len(img) - 1, description="study")
    text_out, picture_out = W.HTML(), W.Output()
    view = W.VBox([W.HBox([direction, query]), picture_out, text_out])
    view.state = {}

    def redraw(*_):
        q = min(query.value, (len(img) if direction.value.startswith("image") else len(txt)) - 1)
        if direction.value.startswith("image"):
            hits = image_to_text(q)
            view.state = {"direction": "i2t", "query": q, "hits": [i for i, _, _ in hits]}
            _image_panel(picture_out, [images[q]], [f"query {q}"])
            text_out.value = "<ol>" + "".join(
                f"<li><b>{s:+.2f}</b>{' (its own report)' if i == q else ''} {html.escape(t)}</li>"
                for i, s, t in hits) + "</ol>"
        else:
            hits = text_to_image(q)
            view.state = {"direction": "t2i", "query": q, "hits": [i for i, _ in hits]}
            text_out.value = f"<p><b>query report {q}:</b> {html.escape(texts[q])}</p>"
            _image_panel(picture_out, [images[i] for i, _ in hits],
                         [f"{i}{' (its own)' if i == q else ''} {s:+.2f}" for i, s in hits])

    direction.observe(redraw, names="value")
    query.observe(redraw, names="value")
    redraw()
    return _show(view, display)


# ---------------------------------------------------------------- zero-shot prompt playground (lesson 02)

def prompt_scores(encode_text, image_embeddings, positive: str, negative: str = "", temperature: float = 0.1):
    """P(present) for every image from one typed prompt (and an optional negative prompt)."""
    from .adapt.zero_shot import zero_shot_classify
    if not positive.strip():
        raise ValueError("type a positive prompt, e.g. 'There is a pleural effusion.'")
    pos = encode_text([positive]).float()
    neg = encode_text([negative]).float() if negative.strip() else torch.zeros_like(pos)
    return zero_shot_classify(torch.as_tensor(image_embeddings).float(), pos, neg, temperature)[:, 0]


def prompt_playground(encode_text, image_embeddings, images, labels, findings, *, finding: str | None = None,
                      positive: str = "There is a pleural effusion.", negative: str = "No pleural effusion.",
                      top: int = 6, interactive=None, display: bool = True):
    """Type a prompt, see its zero-shot AUROC for a finding and the images it ranks highest.

    ``encode_text(list[str]) -> (K, D)`` embeds prompts in the same space as ``image_embeddings``
    (N, D); ``labels`` (N, len(findings)) 0/1.
    """
    from .eval import auroc
    labels = np.asarray(labels)
    findings = list(findings)
    finding = finding or ("Pleural Effusion" if "Pleural Effusion" in findings else findings[0])
    if finding not in findings:
        raise ValueError(f"finding {finding!r} is not one of {findings}")
    if labels.shape != (len(images), len(findings)):
        raise ValueError(f"labels must be (N, {len(findings)}) for the N={len(images)} images, got {labels.shape}")

    def evaluate(name, pos, neg):
        scores = prompt_scores(encode_text, image_embeddings, pos, neg).numpy()
        y = labels[:, findings.index(name)]
        value = float(auroc(y, scores)["macro"]) if 0 < y.sum() < len(y) else float("nan")
        order = np.argsort(-scores)[:top]
        return value, order, scores

    if not _interactive(interactive):
        value, order, scores = evaluate(finding, positive, negative)
        fig = _image_row([images[i] for i in order],
                         [f"p={scores[i]:.2f} {'pos' if labels[i, findings.index(finding)] else 'neg'}"
                          for i in order])
        fig.suptitle(f"'{positive}' vs '{negative}': {finding} AUROC {value:.3f}", fontsize=8)
        fig.tight_layout()
        return fig

    import ipywidgets as W
    pick = W.Dropdown(options=findings, value=finding, description="finding")
    pos_box = W.Text(value=positive, description="positive", layout=W.Layout(width="60%"))
    neg_box = W.Text(value=negative, description="negative", layout=W.Layout(width="60%"))
    result, picture_out = W.HTML(), W.Output()
    view = W.VBox([pick, pos_box, neg_box, result, picture_out])
    view.state = {}

    def redraw(*_):
        try:
            value, order, scores = evaluate(pick.value, pos_box.value, neg_box.value)
        except ValueError as err:
            result.value = f"<p style='color:#b00'>{html.escape(str(err))}</p>"
            return
        view.state = {"finding": pick.value, "positive": pos_box.value, "negative": neg_box.value,
                      "auroc": value, "top": order.tolist()}
        result.value = f"<p><b>{html.escape(pick.value)}</b> AUROC <b>{value:.3f}</b> (0.5 = chance)</p>"
        column = findings.index(pick.value)
        _image_panel(picture_out, [images[i] for i in order],
                     [f"p={scores[i]:.2f} {'pos' if labels[i, column] else 'neg'}" for i in order])

    for control in (pick, pos_box, neg_box):
        control.observe(redraw, names="value")
    redraw()
    return _show(view, display)


# ---------------------------------------------------------------- attention viewer (lesson 03)

def attention_viewer(images, words, maps, *, start: int = 0, interactive=None, display: bool = True):
    """Pick an image and a word of its report, see where that word attends.

    ``words[i]`` the words of report i; ``maps[i]`` (len(words[i]), h, w) attention weights
    over the image's patch grid (upsampled to the image here).
    """
    if not len(images) == len(words) == len(maps):
        raise ValueError(f"need one word list and one map stack per image: {len(images)} images, "
                         f"{len(words)} word lists, {len(maps)} map stacks")
    start = _check_index(start, len(images), "start")
    for i, (w, m) in enumerate(zip(words, maps)):
        if len(w) != len(m):
            raise ValueError(f"image {i}: {len(w)} words but {len(m)} attention maps")

    def overlay(ax, i, j):
        image = as_numpy_image(images[i])
        heat = torch.as_tensor(maps[i][j], dtype=torch.float32)[None, None]
        heat = F.interpolate(heat, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0].numpy()
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat, cmap="jet", alpha=0.45)
        ax.set_title(f"'{words[i][j]}'", fontsize=8)
        ax.axis("off")

    if not _interactive(interactive):
        shown = list(range(min(4, len(words[start]))))
        fig, axes = plt.subplots(1, len(shown), figsize=(2.0 * len(shown), 2.2), squeeze=False)
        for ax, j in zip(axes[0], shown):
            overlay(ax, start, j)
        fig.suptitle(f"study {start}: where each word looks", fontsize=8)
        fig.tight_layout()
        return fig

    import ipywidgets as W
    study = W.BoundedIntText(value=start, min=0, max=len(images) - 1, description="study")
    word = W.Dropdown(options=[(w, j) for j, w in enumerate(words[start])], value=0, description="word")
    picture_out = W.Output()
    view = W.VBox([W.HBox([study, word]), picture_out])
    view.state = {}

    def on_study(*_):
        word.options = [(w, j) for j, w in enumerate(words[study.value])]
        word.value = 0
        redraw()

    def redraw(*_):
        if word.value is None:
            return
        i, j = study.value, word.value
        view.state = {"study": i, "word": words[i][j]}
        picture_out.clear_output(wait=True)
        with picture_out:
            fig, ax = plt.subplots(figsize=(2.6, 2.6))
            overlay(ax, i, j)
            _display_figure(fig)

    study.observe(on_study, names="value")
    word.observe(redraw, names="value")
    redraw()
    return _show(view, display)


# ---------------------------------------------------------------- generation prompt box (lesson 06)

def generation_box(sample, prompt: str, *, guidance: float = 3.0, n: int = 4, max_guidance: float = 8.0,
                   interactive=None, display: bool = True):
    """Type a report, move the guidance scale, generate images.

    ``sample(prompt: str, guidance: float, n: int) -> (n, 1, H, W)`` in [0, 1].
    """
    def run(text, w):
        if not text.strip():
            raise ValueError("type a report to condition on, e.g. 'Large right pleural effusion.'")
        out = sample(text, float(w), n)
        if out.ndim != 4 or len(out) != n:
            raise ValueError(f"sample must return (n={n}, 1, H, W) images, got {tuple(out.shape)}")
        return out

    if not _interactive(interactive):
        fig = _image_row(list(run(prompt, guidance)), [f"w={guidance:g}"] * n, ncols=n)
        fig.suptitle(f"'{prompt}'", fontsize=8)
        fig.tight_layout()
        return fig

    import ipywidgets as W
    text = W.Text(value=prompt, description="report", layout=W.Layout(width="70%"))
    scale = W.FloatSlider(value=guidance, min=0.0, max=max_guidance, step=0.5, description="guidance w")
    button = W.Button(description="generate")
    status, picture_out = W.HTML(), W.Output()
    view = W.VBox([text, W.HBox([scale, button]), status, picture_out])
    view.state = {}

    def redraw(*_):
        try:
            out = run(text.value, scale.value)
        except ValueError as err:
            status.value = f"<p style='color:#b00'>{html.escape(str(err))}</p>"
            return
        status.value = ""
        view.state = {"prompt": text.value, "guidance": scale.value, "images": out}
        _image_panel(picture_out, list(out), [f"w={scale.value:g}"] * n, ncols=n)

    button.on_click(redraw)
    redraw()
    return _show(view, display)


# ---------------------------------------------------------------- chat box (lesson 07)

def chat_box(answer, images, *, questions=("Is there a pleural effusion?", "Describe the findings."),
             start: int = 0, interactive=None, display: bool = True):
    """Pick an image and ask questions about it; the conversation is kept per image.

    ``answer(image_index, question, history) -> str``; ``history`` is a list of
    (question, answer) pairs of the same image so far.
    """
    start = _check_index(start, len(images), "start")
    if not _interactive(interactive):
        history = []
        for q in questions:
            history.append((q, answer(start, q, list(history))))
        fig, axes = plt.subplots(1, 2, figsize=(9, 2.6), gridspec_kw={"width_ratios": [1, 3]})
        axes[0].imshow(as_numpy_image(images[start]), cmap="gray", vmin=0, vmax=1)
        axes[0].set_title(f"study {start}", fontsize=8)
        axes[1].text(0, 1, "\n".join(f"USER: {q}\nASSISTANT: {a[:150]}" for q, a in history), va="top",
                     fontsize=7, wrap=True)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        return fig

    import ipywidgets as W
    study = W.BoundedIntText(value=start, min=0, max=len(images) - 1, description="study")
    question = W.Text(value=questions[0], description="ask", layout=W.Layout(width="70%"))
    send = W.Button(description="send")
    transcript, picture_out = W.HTML(), W.Output()
    view = W.VBox([study, picture_out, transcript, W.HBox([question, send])])
    view.state = {"history": []}

    def show_study(*_):
        view.state = {"history": [], "study": study.value}
        transcript.value = ""
        _image_panel(picture_out, [images[study.value]], [f"study {study.value}"])

    def ask(*_):
        if not question.value.strip():
            return
        history = view.state["history"]
        history.append((question.value, answer(study.value, question.value, list(history))))
        transcript.value = "".join(f"<p><b>you:</b> {html.escape(q)}<br><b>model:</b> {html.escape(a)}</p>"
                                   for q, a in history)

    study.observe(show_study, names="value")
    send.on_click(ask)
    show_study()
    return _show(view, display)


__all__ = ["live_frontend", "nearest", "retrieval_browser", "prompt_scores", "prompt_playground",
           "attention_viewer", "generation_box", "chat_box"]
