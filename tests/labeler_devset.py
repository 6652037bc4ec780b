"""The report labeler's development sets, how they are scored, and the comparison with libraries.

Two sets of (report text, labels) pairs:

* ``real_set()``: real chest X-ray report sentences whose labels someone other than the labeler's
  author made (``tests/data/labeler/real_sentences.tsv``; its header states the source and licence).
* ``course_set()``: the hand-labelled sentences of ``tests/test_labeler.py`` (IU X-ray / MIMIC
  style, labelled by the course's authors following CheXpert's conventions).

``score`` gives, per finding, the agreement (on the texts whose reference labels the finding) and
F1 (the mean over the label values 1 / 0 / -1 the reference uses of that value's F1), and the macro F1
over the findings the set labels. ``docs/labeler.md`` has the tables this prints.

Run as a script to print them, and to compare the course's negation and uncertainty rules with
medspaCy's ConText and with negspacy (NegEx) on the same mentions::

    python tests/labeler_devset.py                                  # the course's labeler only
    python tests/labeler_devset.py --library-python /path/to/python  # + medspaCy and negspacy

medspaCy 1.3 pins spaCy < 3.8 on Python 3.11, which needs numpy < 2, while the course's environment
runs numpy 2 (installing medspaCy there downgrades it to 1.26); so the libraries run in a separate
interpreter (``--library-python``, one with ``pip install medspacy negspacy``), and this script talks
to it through JSON on stdin/stdout (``--library-worker``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REAL_SET_PATH = Path(__file__).parent / "data" / "labeler" / "real_sentences.tsv"
LABEL_VALUES = (1, 0, -1)


# ------------------------------------------------------------------------------------------
# The sets
# ------------------------------------------------------------------------------------------

def real_set(path: Path = REAL_SET_PATH) -> list[tuple[str, dict]]:
    """(text, labels) for every row of the real-sentence file; '#' lines are its header."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            text, labels, _source = line.split("\t")
            rows.append((text, json.loads(labels)))
    return rows


def course_set() -> list[tuple[str, dict]]:
    """The hand-labelled cases of tests/test_labeler.py (empty reports left out)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_labeler import CASES
    return [(text, labels) for text, labels in CASES if text.strip()]


# ------------------------------------------------------------------------------------------
# Scores
# ------------------------------------------------------------------------------------------

def _f1(truth: list, pred: list, value: int) -> float:
    tp = sum(t == value and p == value for t, p in zip(truth, pred))
    fp = sum(t != value and p == value for t, p in zip(truth, pred))
    fn = sum(t == value and p != value for t, p in zip(truth, pred))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def score(cases: list[tuple[str, dict]], predictions: list[dict]) -> dict:
    """Per finding the set labels: n, agreement and F1; and their macro F1.

    A finding's F1 is the mean, over the values (1, 0, -1) its references use, of that value's F1
    over all texts (a text that does not mention the finding counts as "not that value").
    """
    from medmm_lite.data.findings import FINDINGS
    per_finding = {}
    for name in FINDINGS:
        truth = [labels.get(name) for _, labels in cases]
        pred = [labels.get(name) for labels in predictions]
        used = [v for v in LABEL_VALUES if v in truth]
        if not used:
            continue
        mentioned = [(t, p) for t, p in zip(truth, pred) if t is not None]
        per_finding[name] = {
            "n": len(mentioned),
            "agreement": sum(t == p for t, p in mentioned) / len(mentioned),
            "f1": sum(_f1(truth, pred, v) for v in used) / len(used),
        }
    macro = sum(v["f1"] for v in per_finding.values()) / len(per_finding)
    exact = sum(p == labels for (_, labels), p in zip(cases, predictions)) / len(cases)
    return {"per_finding": per_finding, "macro_f1": macro, "exact_match": exact, "n_texts": len(cases)}


def format_table(title: str, scores: dict[str, dict]) -> str:
    """A markdown table: one row per finding, agreement and F1 for each system."""
    systems = list(scores)
    findings = list(next(iter(scores.values()))["per_finding"])
    head = "| finding | n | " + " | ".join(f"{s} agreement | {s} F1" for s in systems) + " |"
    lines = [f"**{title}** ({next(iter(scores.values()))['n_texts']} texts)", "", head,
             "|" + "---|" * (2 + 2 * len(systems))]
    for name in findings:
        cells = [f"{scores[s]['per_finding'][name]['agreement']:.3f} | {scores[s]['per_finding'][name]['f1']:.3f}"
                 for s in systems]
        lines.append(f"| {name} | {scores[systems[0]]['per_finding'][name]['n']} | " + " | ".join(cells) + " |")
    lines.append("| **macro F1** | | " + " | ".join(f"| {scores[s]['macro_f1']:.3f}" for s in systems) + " |")
    lines.append("| exact match (all labels of a text) | | "
                 + " | ".join(f"| {scores[s]['exact_match']:.3f}" for s in systems) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# The libraries: the same mentions, their negation and uncertainty instead of the course's rules
# ------------------------------------------------------------------------------------------

def _mentions_to_classify(texts: list[str]) -> list[dict]:
    """Every English sentence of every text, with the course's mention spans in it."""
    from medmm_lite.data.labeler import _candidates, _english_sentences
    return [{"text": i, "sentence": s, "spans": [list(c) for c in _candidates(s)]}
            for i, text in enumerate(texts) for s in _english_sentences(text)]


def _label_with(decisions: list[list[str]], items: list[dict], n_texts: int) -> list[dict]:
    """Labels when a library decides negated / uncertain / affirmed for each course mention.

    Mention extraction, the heart's size words (enlarged, stable) and CheXpert's aggregation stay
    the course's, so the comparison is about negation and uncertainty only.
    """
    from medmm_lite.eval.labeler import Mention, aggregate
    mentions: list[list] = [[] for _ in range(n_texts)]
    for item, statuses in zip(items, decisions):
        s = item["sentence"]
        for (start, end, normal, abnormal, kind), status in zip(item["spans"], statuses):
            label = _library_label(s, start, end, kind, status)
            if label is None:
                continue
            phrase = s[start:end]
            mentions[item["text"]].append(Mention(normal if label == 0 else abnormal, phrase, s, label, status))
            if abnormal == "Edema" and label != 0 and phrase in ("heart failure", "congestive heart failure", "chf"):
                mentions[item["text"]].append(Mention("Cardiomegaly", phrase, s, -1, "heart failure"))
    read = {it["text"] for it in items}
    return [aggregate(m, nonempty=i in read) for i, m in enumerate(mentions)]


def _library_label(s: str, start: int, end: int, kind: str, status: str) -> int | None:
    """The label of one mention given a library's status, or None when the mention says nothing."""
    from medmm_lite.data.labeler import _find_cues
    if status == "negated":
        return 0
    if status == "uncertain" or kind == "hedged":
        return -1
    if kind != "neutral":
        return 1
    if any(c.reaches(start, end) for c in _find_cues(s, "enlargement")):
        return 1
    if any(c.reaches(start, end) for c in _find_cues(s, "stability")):
        return -1
    return None


def _run_worker(python: str, items: list[dict]) -> dict:
    payload = json.dumps([{"sentence": it["sentence"], "spans": [sp[:2] for sp in it["spans"]]} for it in items])
    out = subprocess.run([python, __file__, "--library-worker"], input=payload, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the library worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def library_worker() -> None:
    """(Runs under the libraries' interpreter.) Read sentences with spans, write each span's status."""
    import medspacy
    import spacy
    from spacy.util import filter_spans
    from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)

    items = json.load(sys.stdin)
    context = medspacy.load(enable=["medspacy_context"])
    negex_nlp = spacy.blank("en")
    negex = negex_nlp.add_pipe("negex", config={"ent_types": ["FINDING"]})

    def doc_with_spans(nlp, item):
        doc = nlp.make_doc(item["sentence"])
        for token in doc:
            token.is_sent_start = token.i == 0  # one sentence: the course's sentence splitting
        spans = [doc.char_span(a, b, label="FINDING", alignment_mode="expand") for a, b in item["spans"]]
        doc.ents = filter_spans(spans)  # overlapping mentions ("hydropneumothorax") share one entity
        return doc, spans

    def entity_of(doc, span):
        return next(e for e in doc.ents if e.start < span.end and span.start < e.end)

    def status_context(item):
        doc, spans = doc_with_spans(context, item)
        context.get_pipe("medspacy_context")(doc)
        result = []
        for e in (entity_of(doc, sp) for sp in spans):
            result.append("negated" if e._.is_negated else
                          "uncertain" if e._.is_uncertain or e._.is_hypothetical else "affirmed")
        return result

    def status_negex(item):
        doc, spans = doc_with_spans(negex_nlp, item)
        negex(doc)
        return ["negated" if entity_of(doc, sp)._.negex else "affirmed" for sp in spans]

    json.dump({"medspaCy ConText": [status_context(it) for it in items],
               "negspacy": [status_negex(it) for it in items]}, sys.stdout)


def compare(cases: list[tuple[str, dict]], library_python: str | None) -> dict[str, dict]:
    """Scores of the course's labeler and, given an interpreter with them, of the libraries."""
    from medmm_lite.eval import label_report
    texts = [t for t, _ in cases]
    scores = {"course": score(cases, [label_report(t) for t in texts])}
    if library_python:
        items = _mentions_to_classify(texts)
        for name, decisions in _run_worker(library_python, items).items():
            scores[name] = score(cases, _label_with(decisions, items, len(texts)))
    return scores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library-python", help="an interpreter with medspacy and negspacy installed")
    parser.add_argument("--library-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.library_worker:
        return library_worker()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for title, cases in (("Real sentences, labels by someone else", real_set()),
                         ("Course set (hand-labelled, real report style)", course_set())):
        print(format_table(title, compare(cases, args.library_python)), end="\n\n")


if __name__ == "__main__":
    main()
