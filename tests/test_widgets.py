"""The interactive views: static figures without a frontend, live panels that redraw on input.

The live panels are driven here by setting their controls' values, as a click would; the
real-browser test (tests/test_browser.py) clicks one in JupyterLab. The package accepts
ipywidgets 7.7 (Colab's) and 8: ``make test`` runs this file on the 8.x of [dev], and
``make colab-check`` (tools/colab_check.py) runs it again in a venv with Colab's ipywidgets 7.7.1.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medmm_lite import widgets  # noqa: E402

N, D = 12, 8


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def paired():
    g = torch.Generator().manual_seed(0)
    image_emb = torch.randn(N, D, generator=g)
    text_emb = image_emb + 0.1 * torch.randn(N, D, generator=g)  # report i matches image i
    images = torch.rand(N, 1, 16, 16, generator=g)
    texts = [f"report {i}" for i in range(N)]
    return image_emb, text_emb, images, texts


def test_static_without_a_frontend(monkeypatch, paired):
    monkeypatch.setenv("MEDMM_WIDGETS", "static")
    assert not widgets.live_frontend()
    fig = widgets.retrieval_browser(*paired)
    assert isinstance(fig, matplotlib.figure.Figure)


def test_plain_python_is_not_a_frontend(monkeypatch):
    monkeypatch.delenv("MEDMM_WIDGETS", raising=False)
    assert not widgets.live_frontend()   # pytest runs no kernel


def test_nearest_ranks_by_similarity():
    sim = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    assert [i for i, _ in widgets.nearest(sim, 0, 2)] == [1, 2]
    assert [i for i, _ in widgets.nearest(sim, 1, 5)] == [0, 1, 2]


def test_retrieval_browser_live(paired):
    view = widgets.retrieval_browser(*paired, k=3, start=2, interactive=True, display=False)
    assert view.state == {"direction": "i2t", "query": 2, "hits": view.state["hits"]}
    assert view.state["hits"][0] == 2                       # its own report is nearest
    direction, query = view.children[0].children
    query.value = 5
    assert view.state["query"] == 5 and view.state["hits"][0] == 5
    direction.value = "report -> images"
    assert view.state["direction"] == "t2i" and view.state["hits"][0] == 5
    assert "report 5" in view.children[2].value


def test_retrieval_browser_bad_input(paired):
    image_emb, text_emb, images, texts = paired
    with pytest.raises(ValueError, match="same D"):
        widgets.retrieval_browser(image_emb, text_emb[:, :4], images, texts, interactive=False)
    with pytest.raises(ValueError, match="texts"):
        widgets.retrieval_browser(image_emb, text_emb, images, texts[:-1], interactive=False)
    with pytest.raises(ValueError, match="start"):
        widgets.retrieval_browser(*paired, start=N, interactive=False)


def _toy_text_encoder():
    """Prompts mentioning 'effusion' point along axis 0, others along axis 1."""
    def encode(prompts):
        out = torch.zeros(len(prompts), 2)
        for i, p in enumerate(prompts):
            out[i, 0 if "effusion" in p.lower() and not p.lower().startswith("no") else 1] = 1.0
        return out
    return encode


def test_prompt_playground_scores_the_typed_prompt():
    labels = np.zeros((N, 2))
    labels[:5, 0] = 1
    image_emb = torch.tensor([[1.0, 0.2]] * 5 + [[0.2, 1.0]] * (N - 5))
    images = torch.rand(N, 1, 8, 8)
    findings = ["Pleural Effusion", "Edema"]
    view = widgets.prompt_playground(_toy_text_encoder(), image_emb, images, labels, findings,
                                     interactive=True, display=False)
    assert view.state["auroc"] == pytest.approx(1.0)
    assert set(view.state["top"][:5]) == set(range(5))
    pick, pos_box, neg_box = view.children[:3]
    neg_box.value = "There is a pleural effusion."   # the same as the positive: no information
    assert view.state["auroc"] == pytest.approx(0.5)
    pos_box.value = "Normal lungs."                   # now the prompts point the wrong way round
    assert view.state["auroc"] == pytest.approx(0.0)
    pos_box.value = " "
    assert "type a positive prompt" in view.children[3].value      # the error is shown, not raised
    fig = widgets.prompt_playground(_toy_text_encoder(), image_emb, images, labels, findings, interactive=False)
    assert "AUROC 1.000" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="labels must be"):
        widgets.prompt_playground(_toy_text_encoder(), image_emb, images, labels[:, :1], findings,
                                  interactive=False)


def test_attention_viewer():
    images = torch.rand(3, 1, 16, 16)
    words = [["small", "effusion"], ["nodule"], ["heart", "is", "big"]]
    maps = [torch.rand(len(w), 4, 4) for w in words]
    assert isinstance(widgets.attention_viewer(images, words, maps, interactive=False), matplotlib.figure.Figure)
    view = widgets.attention_viewer(images, words, maps, interactive=True, display=False)
    study, word = view.children[0].children
    word.value = 1
    assert view.state == {"study": 0, "word": "effusion"}
    study.value = 2
    assert view.state == {"study": 2, "word": "heart"}
    with pytest.raises(ValueError, match="attention maps"):
        widgets.attention_viewer(images, words, [torch.rand(1, 4, 4)] * 3, interactive=False)


def test_generation_box():
    calls = []

    def sample(prompt, guidance, n):
        calls.append((prompt, guidance))
        return torch.full((n, 1, 8, 8), min(guidance / 8, 1.0))

    view = widgets.generation_box(sample, "large right pleural effusion", guidance=3.0, n=2,
                                  interactive=True, display=False)
    text, (scale, button) = view.children[0], view.children[1].children
    scale.value = 5.0
    button.click()
    assert calls[-1] == ("large right pleural effusion", 5.0) and view.state["guidance"] == 5.0
    text.value = ""
    button.click()
    assert "type a report" in view.children[2].value and len(calls) == 2
    with pytest.raises(ValueError, match="must return"):
        widgets.generation_box(lambda p, w, n: torch.zeros(n, 8, 8), "x", interactive=False)


def test_chat_box_keeps_history_per_image():
    seen = []

    def answer(index, question, history):
        seen.append((index, question, len(history)))
        return f"answer {len(history)} about {index}"

    images = torch.rand(4, 1, 8, 8)
    view = widgets.chat_box(answer, images, interactive=True, display=False)
    study, _, transcript, (question, send) = view.children[0], view.children[1], view.children[2], \
        view.children[3].children
    send.click()
    question.value = "Which side?"
    send.click()
    assert seen == [(0, "Is there a pleural effusion?", 0), (0, "Which side?", 1)]
    assert "answer 1 about 0" in transcript.value
    study.value = 3                      # a new image starts a new conversation
    send.click()
    assert seen[-1] == (3, "Which side?", 0)
    fig = widgets.chat_box(answer, images, interactive=False)
    assert isinstance(fig, matplotlib.figure.Figure)


def _all_widgets(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _all_widgets(child)


def test_every_live_view_serialises_on_this_ipywidgets(paired):
    """What a frontend receives: each widget's state, on the installed major (7 in Colab, 8 here)."""
    import ipywidgets

    images = torch.rand(3, 1, 8, 8)
    words = [["a", "b"], ["c"], ["d", "e"]]
    views = [
        widgets.retrieval_browser(*paired, interactive=True, display=False),
        widgets.prompt_playground(_toy_text_encoder(), torch.rand(N, 2), torch.rand(N, 1, 8, 8),
                                  np.eye(N, 2), ["Pleural Effusion", "Edema"], interactive=True, display=False),
        widgets.attention_viewer(images, words, [torch.rand(len(w), 2, 2) for w in words], interactive=True,
                                 display=False),
        widgets.generation_box(lambda p, w, n: torch.zeros(n, 1, 8, 8), "x", n=2, interactive=True, display=False),
        widgets.chat_box(lambda i, q, h: "no", images, interactive=True, display=False),
    ]
    assert int(ipywidgets.__version__.split(".")[0]) in (7, 8)
    for view in views:
        for w in _all_widgets(view):
            state = w.get_state()
            assert state["_model_name"] and state["_view_name"], type(w).__name__
            if "layout" in state:
                w.layout.get_state()
