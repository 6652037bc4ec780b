"""SynthCXR's reports: FINDINGS and IMPRESSION written by a small grammar.

Real reports say the same thing many ways, and the lessons need that variety
(a tokenizer, a text encoder and a captioner should not just memorise one
template). So each of five radiologists has a style: terse or verbose, lists
of negations ("No pleural effusion or pneumothorax.") or one per sentence,
lobes or zones, a favourite hedge and favourite synonyms.

The grammar keeps three promises, which the labeler (medmm_lite.data.labeler, read through
medmm_lite.eval) and the tests rely on:

1. every present finding is stated, positively or with an uncertainty cue
   ("possible", "cannot exclude", "may represent", "likely") when it is faint;
2. an absent finding is never asserted: it is either not mentioned or negated;
3. each sentence is about one finding (negation lists excepted, which only ever
   hold absent findings), and every statement uses one of the standard phrases
   in :data:`MENTION_PHRASES`, so a CheXpert-style labeler reads them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


# Phrases the grammar uses to mention each finding (every positive or hedged statement contains
# one of them; negations use them too). The labeler's tests check it recognises all of them.
MENTION_PHRASES = {
    "Cardiomegaly": ("cardiomegaly", "enlarged cardiac silhouette", "the heart is enlarged", "heart size"),
    "Pleural Effusion": ("pleural effusion", "pleural effusions", "effusion", "effusions",
                         "blunting of the costophrenic angle"),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation", "airspace consolidation"),
    "Lung Lesion": ("nodule", "pulmonary nodule", "mass", "nodular opacity"),
    "Atelectasis": ("atelectasis", "atelectatic change"),
    "Edema": ("pulmonary edema", "interstitial edema", "vascular congestion"),
    "Support Devices": ("endotracheal tube", "central venous catheter", "nasogastric tube", "pacemaker",
                        "PICC line"),
    "Fracture": ("rib fracture", "fracture"),
}
# The cues around them: a labeler reading these reports needs exactly these.
UNCERTAINTY_CUES = ("possible", "cannot exclude", "may represent", "likely")
NEGATION_CUES = ("no", "normal")
NO_FINDING_IMPRESSIONS = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.")

_HEDGES = {"possible": "Possible {}.", "cannot exclude": "Cannot exclude {}.",
           "may represent": "Findings may represent {}.", "likely": "Likely {}."}


@dataclass(frozen=True)
class RadiologistStyle:
    name: str
    verbose: bool                  # view line, "There is ...", numbered impression
    list_negations: bool           # "No pleural effusion or pneumothorax." vs one sentence each
    habitual_negations: tuple      # absent findings this reader nearly always rules out
    zone_words: bool               # "right lung base" instead of "right lower lobe"
    hedges: tuple                  # preferred uncertainty cues
    normal_impression: str
    synonym: int                   # which synonym this reader reaches for first


RADIOLOGISTS = (
    RadiologistStyle("Reader A (terse)", False, True, ("Pleural Effusion", "Pneumothorax"), False,
                     ("possible", "cannot exclude"), NO_FINDING_IMPRESSIONS[0], 0),
    RadiologistStyle("Reader B (verbose)", True, False,
                     ("Pleural Effusion", "Pneumothorax", "Consolidation", "Edema", "Cardiomegaly"), True,
                     ("may represent", "cannot exclude"), NO_FINDING_IMPRESSIONS[1], 1),
    RadiologistStyle("Reader C (terse, lists)", False, True,
                     ("Pleural Effusion", "Pneumothorax", "Consolidation", "Cardiomegaly"), False,
                     ("likely", "possible"), NO_FINDING_IMPRESSIONS[0], 2),
    RadiologistStyle("Reader D (verbose, lists)", True, True,
                     ("Pleural Effusion", "Pneumothorax", "Consolidation", "Edema", "Lung Lesion"), False,
                     ("possible", "may represent"), NO_FINDING_IMPRESSIONS[1], 1),
    RadiologistStyle("Reader E (plain)", False, False, ("Pneumothorax", "Cardiomegaly", "Pleural Effusion"), True,
                     ("cannot exclude", "likely"), NO_FINDING_IMPRESSIONS[0], 0),
)

# What a negation says, per finding (the noun for lists, the sentence when alone).
_NEGATED_NOUN = {
    "Pleural Effusion": ("pleural effusion", "effusion"),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("focal consolidation", "airspace consolidation"),
    "Edema": ("pulmonary edema", "interstitial edema"),
    "Lung Lesion": ("suspicious pulmonary nodule", "pulmonary nodule"),
    "Atelectasis": ("atelectasis",),
    "Fracture": ("acute rib fracture", "displaced rib fracture"),
}
_NORMAL_HEART = ("Heart size is normal.", "Normal heart size.", "No cardiomegaly.")
_ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}


def _ordinal(k: int) -> str:
    return _ORDINAL.get(k, f"{k}th")


def _pick(rng: random.Random, options, preferred: int = 0, bias: float = 0.6):
    """A reader's favourite option most of the time, any option otherwise."""
    options = tuple(options)
    if rng.random() < bias:
        return options[preferred % len(options)]
    return rng.choice(options)


def _location(side: str | None, zone: str | None, style: RadiologistStyle) -> str:
    if side is None or side == "bilateral":
        return "both lungs"
    if style.zone_words:
        return {"upper": f"{side} upper zone", "middle": f"{side} mid lung zone", "lower": f"{side} lung base",
                None: f"{side} lung"}[zone]
    lobes = {"upper": "upper lobe", "middle": "middle lobe" if side == "right" else "lingula", "lower": "lower lobe"}
    if zone is None:
        return f"{side} lung"
    return f"{side} {lobes[zone]}" if not (side == "left" and zone == "middle") else "lingula"


def _noun_phrase(entry: dict, style: RadiologistStyle, rng: random.Random) -> str:
    """The finding as a noun phrase, with severity, laterality and location, e.g.
    'small right pleural effusion'. Always contains a MENTION_PHRASES phrase."""
    name, sev, side, zone = entry["finding"], entry["severity"], entry["laterality"], entry["zone"]
    pick = lambda opts: _pick(rng, opts, style.synonym)    # noqa: E731
    if name == "Cardiomegaly":
        return pick((f"{sev} cardiomegaly", f"{sev}ly enlarged cardiac silhouette" if sev != "severe"
                     else "markedly enlarged cardiac silhouette", "cardiomegaly"))
    if name == "Pleural Effusion":
        if side == "bilateral":
            return pick((f"{sev} bilateral pleural effusions", f"bilateral {sev} effusions"))
        return pick((f"{sev} {side} pleural effusion", f"{sev} {side} effusion", f"{side} pleural effusion, {sev}"))
    if name == "Pneumothorax":
        where = f"{side} apical" if zone == "upper" else side
        return pick((f"{sev} {where} pneumothorax", f"{where} pneumothorax, {sev}"))
    if name == "Consolidation":
        loc = _location(side, zone, style)
        kind = {"small": "small focal", "moderate": "patchy", "large": "extensive"}[sev]
        noun = pick((f"{kind} consolidation", f"{kind} airspace consolidation"))
        return f"{noun} in the {loc}" + (" with air bronchograms" if entry.get("air_bronchograms") and style.verbose
                                          else "")
    if name == "Lung Lesion":
        loc = _location(side, zone, style)
        size = entry.get("size_cm")
        noun = "mass" if sev == "large" else pick(("nodule", "pulmonary nodule", "nodular opacity"))
        if size and style.verbose:
            return f"{size:.1f} cm {noun} in the {loc}"
        return f"{'small ' if sev == 'small' else ''}{noun} in the {loc}"
    if name == "Atelectasis":
        base = f"{side} lung base" if style.zone_words else f"{side} base"
        if sev == "large":
            return pick((f"{side} lower lobe atelectasis", f"atelectasis of the {side} lower lobe"))
        kind = "linear" if sev == "small" else "plate-like"
        return pick((f"{kind} atelectasis at the {base}", f"{kind} atelectatic change at the {base}"))
    if name == "Edema":
        if sev == "mild":
            return pick(("mild interstitial edema", "mild pulmonary vascular congestion", "mild pulmonary edema"))
        return pick((f"{sev} pulmonary edema", f"{sev} interstitial edema"))
    if name == "Fracture":
        rib = _ordinal(entry.get("rib") or 6)
        state = "healing" if entry.get("healing") else "acute"
        return pick((f"{state} {side} {rib} rib fracture", f"{state} fracture of the {side} {rib} rib"))
    raise ValueError(f"no noun phrase for {name!r}")


def _capital(s: str) -> str:
    return s[:1].upper() + s[1:]


def _statement(entry: dict, style: RadiologistStyle, rng: random.Random) -> str:
    """One sentence stating a present finding (hedged when it is faint)."""
    np_ = _noun_phrase(entry, style, rng)
    if entry.get("uncertain"):
        return _HEDGES[_pick(rng, style.hedges, 0, 0.7)].format(np_)
    if entry["finding"] == "Cardiomegaly" and not style.verbose and rng.random() < 0.3:
        return "The heart is enlarged."
    if entry["finding"] == "Pleural Effusion" and entry["laterality"] != "bilateral" and rng.random() < 0.2:
        return (f"Blunting of the costophrenic angle on the {entry['laterality']}, consistent with a "
                f"{entry['severity']} effusion.")
    if style.verbose:
        if entry["finding"] == "Pleural Effusion" and entry["laterality"] == "bilateral":
            return f"There are {np_}."
        if entry["finding"] in ("Cardiomegaly", "Consolidation", "Atelectasis", "Edema"):   # mass nouns
            return f"There is {np_}."
        return f"There is {'an' if np_[0] in 'aeiou8' else 'a'} {np_}."
    return _capital(np_) + "."


def _device_sentences(entry: dict, rng: random.Random) -> list[str]:
    side = entry.get("laterality") or "right"
    out = []
    for device in entry.get("devices", ()):
        if device == "endotracheal tube":
            out.append(f"Endotracheal tube terminates {rng.choice((3, 4, 5, 6))} cm above the carina.")
        elif device == "nasogastric tube":
            out.append(rng.choice(("Nasogastric tube courses below the diaphragm.",
                                   "Nasogastric tube with tip in the stomach.")))
        elif device == "central venous catheter":
            route = "internal jugular" if side == "right" else "subclavian"
            out.append(f"{_capital(side)} {route} central venous catheter with tip in the SVC.")
        elif device == "PICC line":
            out.append(f"{_capital(side)} PICC line terminates in the SVC.")
        elif device == "pacemaker":
            out.append(f"{_capital(side)}-sided pacemaker with leads in the right atrium and right ventricle.")
    return out


def _join_or(nouns: list[str]) -> str:
    if len(nouns) <= 2:
        return " or ".join(nouns)
    return ", ".join(nouns[:-1]) + ", or " + nouns[-1]


def write_report(entries: list[dict], absent: set, style: RadiologistStyle, rng: random.Random,
                 portable: bool = False) -> str:
    """A report for one study.

    entries: the study's present findings (dicts as in ``Cohort.boxes``, plus ``uncertain``,
    and for some findings ``devices``, ``rib``, ``healing``, ``size_cm``, ``air_bronchograms``);
    absent: the pathologies the study does not have (some get negated, none asserted).
    """
    by_name = {e["finding"]: e for e in entries}
    sentences = []
    if style.verbose:
        sentences.append("Portable AP view of the chest." if portable else "PA and lateral views of the chest.")
    if "Support Devices" in by_name:
        sentences += _device_sentences(by_name["Support Devices"], rng)

    def negate(names: list[str]):
        names = [n for n in names if n in absent and
                 (n in style.habitual_negations and rng.random() < 0.9 or rng.random() < 0.15)]
        if not names:
            return
        nouns = [_pick(rng, _NEGATED_NOUN[n], style.synonym) for n in names]
        if style.list_negations:
            sentences.append(f"No {_join_or(nouns)}.")
        else:
            sentences.extend(rng.choice((f"No {x}.", f"There is no {x}.")) for x in nouns)

    lung_findings = ("Consolidation", "Lung Lesion", "Atelectasis", "Edema")
    for name in lung_findings:
        if name in by_name:
            sentences.append(_statement(by_name[name], style, rng))
    lungs_normal = not any(n in by_name for n in lung_findings + ("Pleural Effusion", "Pneumothorax"))
    if lungs_normal and rng.random() < (0.8 if style.verbose else 0.4):
        sentences.append(rng.choice(("The lungs are clear.", "Lungs are well expanded and clear.")))
    negate(["Consolidation", "Edema", "Lung Lesion"])
    for name in ("Pleural Effusion", "Pneumothorax"):
        if name in by_name:
            sentences.append(_statement(by_name[name], style, rng))
    negate(["Pleural Effusion", "Pneumothorax"])
    if "Cardiomegaly" in by_name:
        sentences.append(_statement(by_name["Cardiomegaly"], style, rng))
    elif "Cardiomegaly" in absent and ("Cardiomegaly" in style.habitual_negations or rng.random() < 0.4):
        sentences.append(_pick(rng, _NORMAL_HEART, style.synonym))
    if "Fracture" in by_name:
        sentences.append(_statement(by_name["Fracture"], style, rng))
    else:
        negate(["Fracture"])

    if not sentences:                       # a terse reader with nothing to say still says something
        sentences.append("The lungs are clear.")

    impression = []
    pathologies = [e for e in entries if e["finding"] != "Support Devices"]
    order = {name: i for i, name in enumerate(("Pneumothorax", "Edema", "Consolidation", "Pleural Effusion",
                                               "Cardiomegaly", "Lung Lesion", "Atelectasis", "Fracture"))}
    for e in sorted(pathologies, key=lambda e: order[e["finding"]]):
        np_ = _noun_phrase(e, style, rng)
        impression.append(_HEDGES[_pick(rng, style.hedges, 0, 0.7)].format(np_) if e.get("uncertain")
                          else _capital(np_) + ".")
    if not pathologies:
        if "Support Devices" in by_name and style.verbose:
            names = by_name["Support Devices"]["devices"]
            impression.append(f"{_capital(' and '.join(names))} in standard position.")
        impression.append(style.normal_impression)
    if style.verbose and len(impression) > 1:
        impression = [f"{i}. {s}" for i, s in enumerate(impression, 1)]
    return "FINDINGS: " + " ".join(sentences) + " IMPRESSION: " + " ".join(impression)

