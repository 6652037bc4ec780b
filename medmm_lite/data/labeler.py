"""A rule-based chest X-ray report labeler, in the manner of the CheXpert labeler.

It sits in the data layer because loading a real dataset uses it (IU X-ray's labels are its
reading of the reports); evaluation reads generated reports with it too, through
``medmm_lite.eval`` (``label_report``, ``labels_matrix``, ``clinical_f1``).

The CheXpert labeler (Irvin et al. 2019, github.com/stanfordmlgroup/chexpert-labeler,
built on NegBio) turns a free-text report into one label per finding:

    1   positive     "Small left pleural effusion."
    0   negative     "No pleural effusion."
   -1   uncertain    "Cannot exclude a small pleural effusion."
    (absent)         the report does not mention the finding at all

It works in three stages, and so does this file:

1. **Mention extraction.** Phrase tables (below) say which words mention
   which finding: "effusion" and "pleural fluid" mention Pleural Effusion.
   Some phrases that contain a finding's words are *unmentions* and are
   ignored ("pericardial effusion" is not a pleural effusion).
2. **Mention classification.** Each mention is checked against three rule
   lists, in order, and the first that applies wins:
   pre-negation uncertainty ("cannot exclude X"; it must come first, because
   "cannot exclude" contains a negation), negation ("no X", "X has
   resolved"), post-negation uncertainty ("possible X", "X versus Y").
   A mention no rule touches is positive. A rule reaches a mention only
   inside its *scope*: the same sentence, the same clause ("but", ";",
   "which", "with" end a clause) and, for a list, the list ("No effusion,
   pneumothorax or consolidation." negates all three items).
3. **Aggregation.** A finding mentioned several times gets: 1 if any mention
   is positive, else -1 if any is uncertain, else 0 (CheXpert's rule).
   "No Finding" is 1 when no pathology other than Support Devices is positive
   or uncertain, counting also abnormalities outside our nine labels
   (emphysema, granuloma, opacity, ...); otherwise it is left out, as CheXpert
   leaves it blank. An empty report gives an empty dict.

**It reads English.** Each sentence is read only if it is English clinical
prose: it holds words of the tables below or of common report English, and
few of the everyday function words of French, German, Spanish, Italian or
Dutch. "Pas de pneumothorax." is therefore not read at all (rather than read as
a positive pneumothorax), and a report with no English sentence gets no labels
(an empty dict, not "No Finding").

CheXpert classifies with a dependency parse of every sentence; we use word
windows instead (a cue's scope runs to the next clause break, verb or new
list item), which keeps the labeler a few hundred readable lines and fast
enough to label a whole cohort in seconds. Its time grows linearly with a
report's length: a run of more than ``MAX_SENTENCE_CHARS`` characters without
a full stop is cut at its last clause break, comma or space.

Which parts are the course's, and why. Mention tables, scopes, rules and
aggregation are all written here rather than taken from medspaCy's ConText or
negspacy (NegEx). Both libraries were run on the development sets
(``tests/labeler_devset.py``; numbers in ``docs/labeler.md``) with the same
mentions, deciding only negation and uncertainty: they read "cannot exclude X"
as negated (CheXpert: uncertain), do not read "heart size is normal",
"X has resolved", "X or Y" or "no new X" as CheXpert does, and scored a macro F1
of 0.65 (ConText) and 0.53 (negspacy) on the course set and 0.90 / 0.90 on the
real sentences, where the course's rules, written on both sets, score 1.00.
The one kind of sentence
ConText read better ("Lines/tubes: None.") is one rule below. medspaCy 1.3 also
pins spaCy < 3.8 on Python 3.11, so numpy < 2: installing it would downgrade
the course environment's numpy 2.

Decisions where CheXpert's rules were followed, and some departures:

* Lists survive size and quality words: "No focal consolidation, large pleural
  effusion, or pneumothorax is identified" and "clear without consolidation,
  large effusion or pneumothorax" negate every item (CheXpert reads the
  coordination from the parse; a list still ending with "or"/"nor" is our
  stand-in), while "No effusion, small pneumothorax." negates only the effusion.
* A participle before the finding does not end a negation ("No visualized
  pneumothorax"); "does not demonstrate/show X or Y", "neither X nor Y" negate;
  "differential diagnosis includes/including X" and "X difficult to (entirely)
  exclude" are uncertain, as in CheXpert's pattern files.
* Comparison words follow CheXpert: "stable", "unchanged" or "similar" to prior
  said of the heart, cardiac silhouette or cardiomediastinum is uncertain, but
  a sentence that also says it is normal or enlarged decides ("Heart size is
  similar to comparison exam and within normal limits" -> 0); a stable or
  unchanged finding ("unchanged small effusions", "stable cardiomegaly") is
  present (1).
* A structured field "Lines/tubes: None." or "Heart: Normal size." negates.
* "Lungs are clear" creates no mention (as in CheXpert): it does not negate
  Consolidation, Edema or Lung Lesion.
* "No new consolidation" is uncertain (-1): CheXpert's rule files list
  "no new XXX" under uncertainty, since an old consolidation may persist.
* "Pulmonary vascular congestion", "vascular prominence" and blunting of a
  costophrenic angle are uncertain by themselves (CheXpert's post-negation
  rules hedge them) but still negate ("no vascular congestion" -> Edema 0).
* "Heart size", "the heart", "cardiac silhouette" are *neutral* mentions:
  with "normal"/"not enlarged" they give Cardiomegaly 0, with "enlarged" 1,
  with "stable"/"unchanged" -1 (CheXpert hedges a stable heart size: stable
  does not say whether it is large). Unlike CheXpert, a neutral mention with
  none of these cues is dropped rather than counted positive.
* "Cardiomediastinal silhouette is normal" gives Cardiomegaly 0. An abnormal
  or stable cardiomediastinal silhouette counts toward CheXpert's Enlarged
  Cardiomediastinum, which is not one of our labels but blocks No Finding.
* "Heart failure"/"CHF" mention Edema and, when not negated, make
  Cardiomegaly uncertain (CheXpert's exception).
* Calcified granulomas and calcified nodules are not Lung Lesions (CheXpert
  unmentions them) but are abnormalities that block No Finding.
* "Likely X" is uncertain (CheXpert has no rule for it; the course's
  synthetic reports use "likely" as a hedge).
* Sections headed INDICATION, HISTORY, COMPARISON, TECHNIQUE or EXAMINATION
  are skipped (CheXpert reads only the impression; we read findings and
  impression, and any text without a header).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import numpy as np

from .findings import FINDINGS, PATHOLOGIES

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"

# --------------------------------------------------------------------------------------
# 1. Phrase tables. Patterns are regular expressions matched on lowercased text in
#    which hyphens between words became spaces ("left-sided" -> "left sided") and
#    "and/or" became "or"; every pattern is wrapped in word boundaries.
# --------------------------------------------------------------------------------------

MENTIONS: dict[str, list[str]] = {
    "Cardiomegaly": [
        r"cardiomegaly", r"cardiac enlargement", r"enlarged heart",
        r"enlarged cardiac (?:silhouette|shadow|contours?)",
        r"enlargement of the (?:cardiac silhouette|heart)",
    ],
    "Pleural Effusion": [
        r"pleural effusions?", r"effusions?", r"pleural fluid", r"hydrothorax",
        r"hydropneumothorax",
    ],
    "Pneumothorax": [r"pneumothorax", r"pneumothoraces", r"hydropneumothorax"],
    "Consolidation": [r"consolidat\w*"],  # consolidation(s), consolidative, consolidated
    "Lung Lesion": [
        r"nodules?", r"nodular (?:opacity|opacities|opacification|density|densities)",
        r"mass(?:es)?", r"lump", r"(?:cavitary|lung|pulmonary|parenchymal|spiculated) lesions?",
        r"tumou?rs?", r"neoplasms?", r"carcinoma",
    ],
    "Atelectasis": [r"atelecta\w*", r"collapsed?"],  # atelectasis, atelectatic; lobar collapse
    "Edema": [r"(?:pulmonary |interstitial |alveolar )?o?edema", r"heart failure", r"chf"],
    "Support Devices": [
        r"(?:endotracheal|et|tracheostomy|trach|nasogastric|ng|orogastric|og|enteric|feeding|"
        r"chest|dobhoff) tubes?", r"ett", r"tubes?", r"tubes and lines", r"lines and tubes",
        r"(?:central venous|central|venous|pigtail|swan ganz|pulmonary artery|dialysis|"
        r"midline|picc) catheters?", r"catheters?", r"central (?:venous )?lines?",
        r"(?:picc|arterial|ij|subclavian) lines?", r"picc", r"cvc", r"(?:port a cath|mediport|port)",
        r"pacemaker", r"pacer", r"aicd", r"icd", r"defibrillator",
        r"(?:pacing|pacemaker|pacer) (?:leads?|wires?)", r"(?:ecg|ekg|monitoring) leads",
        r"(?:median )?sternotomy wires?", r"sternal wires?", r"(?:median )?sternotomy",
        r"(?:prosthetic|mechanical|bioprosthetic) (?:aortic |mitral |tricuspid )?valves?",
        r"(?:aortic|mitral) valve replacement", r"stents?", r"drains?", r"hardware", r"screws?",
        r"support devices?", r"tracheostomy",
    ],
    "Fracture": [r"fractures?", r"fractured"],
}

# Mentions that are uncertain unless negated (CheXpert's post-negation rules hedge them).
HEDGED_MENTIONS: dict[str, list[str]] = {
    "Pleural Effusion": [
        r"blunt(?:ing|ed)? (?:of )?(?:the )?(?:(?:left|right|bilateral|both|lateral|posterior) )*"
        r"costophrenic (?:angles?|sulci|sulcus|recess(?:es)?)",
        r"costophrenic (?:angles?|sulci|sulcus) blunting",
        r"costophrenic (?:angles?|sulci|sulcus) (?:(?:is|are|remains?|appears?|\w+ly) )*blunted",
    ],
    "Edema": [
        r"(?:pulmonary )?(?:vascular|venous) congestion", r"pulmonary congestion",
        r"vascular prominence", r"(?:vascular )?indistinctness",
    ],
}

# Neutral mentions name an organ, not a finding: "Heart size is normal" (-> 0),
# "The heart is enlarged" (-> 1), "Heart size is stable" (-> -1), "The heart." (dropped).
# Each entry: (patterns, finding when normal, finding when enlarged or uncertain).
NEUTRAL_MENTIONS: list[tuple[list[str], str, str]] = [
    ([r"heart(?: size)?", r"cardiac (?:silhouette|size|contours?|shadow|configuration)"],
     "Cardiomegaly", "Cardiomegaly"),
    ([r"cardiomediastinal (?:silhouettes?|contours?|size|structures|shadow)", r"cardiomediastinum",
      r"cardiac and mediastinal (?:silhouettes?|contours?)"],
     "Cardiomegaly", "Enlarged Cardiomediastinum"),
    ([r"mediastinal (?:silhouette|contours?|configuration)", r"mediastinum"],
     "Enlarged Cardiomediastinum", "Enlarged Cardiomediastinum"),
]

# Observations outside our nine labels. They are never reported, but when positive or
# uncertain they mean the study is not normal, so No Finding stays off (as in CheXpert,
# whose "no finding" phrase list and four extra labels play this role).
OTHER_OBSERVATIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [r"widen(?:ed|ing) (?:of )?(?:the )?(?:superior )?mediastin\w*",
                                   r"mediastinal widening"],
    "Lung Opacity": [
        r"opaci\w*", r"infiltrat\w*", r"air ?space (?:disease|process)", r"decreased translucency",
        r"increased density", r"interstitial (?:markings?|pattern|lung disease)",
        r"reticular (?:pattern|markings?)", r"reticulation", r"parenchymal scarring",
        r"peribronchial thickening", r"wall thickening", r"scar(?:s|ring)?",
    ],
    "Pneumonia": [r"pneumonias?", r"infection", r"infectious(?: process)?"],
    "Pleural Other": [r"pleural thickening", r"fibrosis", r"fibrothorax",
                      r"pleural (?:parenchymal )?scar(?:ring)?", r"pleuro parenchymal scar(?:ring)?"],
    "Other Abnormality": [
        r"emphysema", r"density", r"densities", r"elevat\w*", r"eventration", r"scoliosis",
        r"degenera\w*", r"calcifi\w*", r"hyperinflat\w*", r"hyperexpan\w*", r"bronchospasm",
        r"asthma", r"hernia", r"copd", r"plaques?", r"osteophyt\w*", r"aortic disease",
        r"bronchiolitis", r"airways? disease", r"thickening", r"cephalization", r"aspiration",
        r"bullae", r"bulla", r"contusion", r"atherosclero\w*", r"osteopenia", r"metastas[ie]s",
        r"granulomas?", r"pneumomediastinum", r"pneumoperitoneum", r"osteodystrophy",
        r"cuffing", r"irregular lucency", r"inflam\w*", r"fissure", r"hypertension",
        r"prominen\w*", r"kyphosis", r"bullet", r"reticula\w*", r"thoracentesis", r"bronchitis",
        r"volume loss", r"deformity", r"hemorrhage", r"hematoma", r"radiopaque",
        r"aerophagia", r"arthropathy",
    ],
}

# Text that contains a finding's words but does not mention it.
UNMENTIONS: dict[str, list[str]] = {
    "Pleural Effusion": [r"pericardial effusions?"],
    "Lung Lesion": [r"calcified (?:nodules?|granulomas?)", r"mass effect"],
    "Cardiomegaly": [
        r"(?:over(?:lying)?|overlies|in|into|within|behind|projects? over|projecting over|"
        r"obscur(?:es|ing)|through) the (?:(?:superior|inferior|left|right|upper|lower) )?"
        r"(?:heart|cardiac silhouette|cardiac shadow)",
        r"heart (?:failure|borders?|disease|valves?|rate)", r"(?:left|right) heart",
    ],
    "Lung Opacity": [r"pleural scar(?:ring)?"],
}

# --------------------------------------------------------------------------------------
# 2. Rule tables. Each cue reaches FORWARD (the words after it: "no X"), BACKWARD
#    (the words before it: "X is not seen") or BOTH ("X versus Y").
# --------------------------------------------------------------------------------------

FORWARD, BACKWARD, BOTH = "forward", "backward", "both"

# Verbs and adverbs that may stand between a finding and a cue after it
# ("X is now no longer seen", "the heart is mildly enlarged"); part of the cue.
_LEAD = (r"(?:(?:is|are|was|were|has|have|had|been|be|to|appears?|appeared|remains?|remained|"
         r"seems?|looks?|now|again|otherwise|still|also|\w+ly) )*")

PRE_NEGATION_UNCERTAINTY: list[tuple[str, str]] = [
    (r"(?:cannot|can not|can't|could not|couldn't|unable to|difficult to|does not|do not) "
     r"(?:\w+ly )?(?:exclude|rule out)", FORWARD),
    (_LEAD + r"(?:cannot|can not|can't|could not|couldn't|may not|might not|not) (?:be )?"
     r"(?:\w+ly )?(?:excluded|ruled out)", BACKWARD),
    (_LEAD + r"(?:difficult|hard|impossible) to (?:\w+ly )?(?:exclude|rule out)", BACKWARD),
    (r"(?:no|without) (?:evidence|findings?) to (?:exclude|rule out)", FORWARD),
    (r"no new", FORWARD),  # CheXpert: "no new X" is uncertain, an old X may remain
]

_NOT_A_CHANGE = r"(?! (?:(?:significant|interval|appreciable|substantial|major|definite|other) )*change)"

NEGATION: list[tuple[str, str]] = [
    # "no X to suggest Y": Y is negated too (CheXpert), before "suggest" can hedge it.
    (r"(?:no|without) [^;:]*?(?:to (?:suggest|indicate|explain)|suggestive of|suspicious for|"
     r"concerning for|worrisome for|diagnostic of)", FORWARD),
    (r"not (?:\w+ly )?(?:suggestive of|consistent with|compatible with|diagnostic of|"
     r"concerning for|suspicious for)", FORWARD),
    (r"(?:does|do|did) not (?:\w+ly )?(?:demonstrate|show|reveal|depict|identify|"
     r"see|visualize|visualise|suggest|indicate)|(?:doesn't|don't|didn't) (?:\w+ly )?(?:demonstrate|show|"
     r"reveal|depict|identify|see|visualize|visualise|suggest|indicate)", FORWARD),
    (r"no" + _NOT_A_CHANGE, FORWARD),  # "no change in the effusion" is not a negation
    (r"without" + _NOT_A_CHANGE, FORWARD),
    (r"neither|nor", FORWARD),
    (r"negative for", FORWARD),
    (r"(?:free|clear) of", FORWARD),
    (r"absence of", FORWARD),
    (r"(?:interval |complete |near complete )?(?:resolution|clearing|disappearance|removal|drainage) of",
     FORWARD),
    (r"history of", FORWARD),
    (r"rather than", FORWARD),
    (r"(?:normal|unremarkable)(?= (?!and\b|or\b|in\b|for\b|with\b|but\b|to\b)\w)", FORWARD),  # normal heart size
    (_LEAD + r"(?:resolved|removed|cleared|ruled out|excluded)", BOTH),
    (_LEAD + r"(?:not|no longer) (?:be )?(?:seen|identified|present|visualized|visualised|"
     r"demonstrated|evident|detected|noted|apparent|visible|enlarged|dilated)", BACKWARD),
    (_LEAD + r"absent", BACKWARD),
    # A structured field: "Lines/tubes: None.", "Heart: Normal size." (the colon ends other scopes).
    (r": (?:none|normal|unremarkable|negative|absent|within normal limits)(?: (?:in )?size)?$", BACKWARD),
    (r"(?:is|are|was|were|appears?|remains?|seems?|looks?) (?:(?!not\b)\w+ ){0,2}?"
     r"(?:normal|unremarkable)", BACKWARD),
    (r"(?:normal|unremarkable)(?= ?(?:$|[,;:]|and\b|but\b|with\b|for\b))", BACKWARD),  # "heart size normal."
    (_LEAD + r"normal in (?:size|caliber|appearance|contour|configuration)", BACKWARD),
    (_LEAD + r"(?:within|at|upper|top)(?: the)?(?: upper| top)?(?: limits? of| range of)? normal"
     r"(?: limits)?", BACKWARD),
    (r"(?:with )?(?:interval |complete )?resolution(?! of)", BACKWARD),
]

POST_NEGATION_UNCERTAINTY: list[tuple[str, str]] = [
    (r"possible|possibly|probable|probably|likely|presumed|presumably|questionable|"
     r"question of|suspect(?:ed)?|suspicious for|suspicion (?:of|for)|concern(?:ing)? for|"
     r"worrisome for|suggestive of|suggest(?:s|ing)?|secondary to|equivocal|indeterminate|"
     r"uncertain|cannot be certain|"
     r"differential (?:diagnosis |diagnoses |considerations? )?(?:includes?|including|would include|of)|"
     r"(?:correlate|correlation) (?:clinically )?for|(?:clinical )?correlation|"
     r"(?:to )?(?:evaluate|assess) for|evaluation for", FORWARD),
    (r"(?:may|might|could|would|can)(?: also| possibly| potentially)? (?:be|represent|reflect|"
     r"indicate|include|have|relate|appear|signify|favor)", BOTH),
    (_LEAD + r"(?:possible|likely|probable|suspected|questionable|suspicious|uncertain|"
     r"equivocal|favored|not (?:well|clearly) (?:seen|visualized|evaluated|assessed)|"
     r"poorly (?:seen|visualized|evaluated|assessed)|incompletely (?:seen|evaluated|assessed)|"
     r"obscured|not appreciated|(?:difficult|hard) to (?:assess|evaluate|see))", BACKWARD),
    (_LEAD + r"borderline", BOTH),
    (r"versus|or", BOTH),  # CheXpert: "X or Y" and "X versus Y" are both uncertain
]

# Only for neutral mentions (the heart, the mediastinum): is the organ said to be large?
ENLARGEMENT: list[tuple[str, str]] = [
    (_LEAD + r"(?:enlarged|enlargement|large|larger|increased|prominent|prominence|widened|"
     r"widening|dilated)", BOTH),
]
STABILITY: list[tuple[str, str]] = [
    (_LEAD + r"(?:stable|unchanged|similar|not changed)", BOTH),
    (r"(?:no|without) (?:(?:significant|interval|appreciable) )*change", BOTH),
]

# Where a cue's reach ends. Clause breaks end it in both directions.
_CLAUSE_BREAK = re.compile(r";|:|\b(?:but|however|although|though|which|whereas|while|except|"
                           r"otherwise|apart from|aside from|with|and (?:the|there))\b")
# A verb ends a forward reach ("no effusion is seen, ..."); copulas end a backward reach.
_FORWARD_STOP = re.compile(r"\b(?:is|are|was|were|be|been|being|has|have|had|remains?|remained|"
                           r"appears?|appeared|seems?|persists?|persisted|there|seen|noted|identified|"
                           r"demonstrated|present|visualized|measures?|measuring|projects?|"
                           r"projecting|terminates?|terminating|overlies|overlying)\b")
_BACKWARD_STOP = re.compile(r"\b(?:is|are|was|were|be|been|has|have|had|remains?|remained|"
                            r"appears?|appeared|seems?|there)\b")
# After a comma or "and", these words start a new item rather than continue a list:
# "No effusion, small pneumothorax." negates only the effusion.
_NEW_ITEM = re.compile(r"(?:,|\band\b) ?(?:and )?(?=(?:a|an|the|this|these|that|there|small|moderate|"
                       r"moderately|large|mild|mildly|minimal|minimally|trace|tiny|severe|severely|"
                       r"marked|markedly|extensive|slight|slightly|subtle|minor|massive|left|right|"
                       r"bilateral|bibasilar|bibasal|biapical|stable|unchanged|persistent|new|"
                       r"newly|increased|increasing|decreased|decreasing|improved|improving|"
                       r"worsened|worsening|interval|again|residual|possible|possibly|probable|"
                       r"likely|questionable|\d+)\b)")
_SIZE_WORD = re.compile(r"(?:small|moderate|large|mild|minimal|trace|tiny|severe|marked|extensive|"
                        r"slight|subtle|massive)\b")
# ... unless the list still ends with "or"/"nor" and the item starts with a size, quality or side
# word: "No focal consolidation, large pleural effusion, or pneumothorax is identified" negates all
# three (CheXpert reads the coordination from the parse; a closing "or" is our word-level stand-in).
_ADJECTIVE_ITEM = re.compile(r"(?:,|\band\b) ?(?:and )?(?:small|moderate|moderately|large|mild|mildly|minimal|"
                             r"trace|tiny|severe|marked|extensive|slight|subtle|massive|sizable|significant|"
                             r"focal|suspicious|acute|definite|discrete|left|right|bilateral|bibasilar|"
                             r"layering|loculated|pulmonary|pleural|apical|basilar)\b")
_CLOSING_OR = re.compile(r"\b(?:or|nor)\b")
# Participles end a forward reach after the finding ("no effusion is seen, ...") but not when they
# stand before it as adjectives: "No visualized pneumothorax", "no demonstrated effusion".
_PARTICIPLES = {"seen", "noted", "identified", "demonstrated", "present", "visualized"}
_PREMODIFIERS = re.compile(r"(?:\s*\b(?:definite|definitive|other|any|obvious|acute|new|significant|focal|"
                           r"additional|visible|radiographic|discrete|convincing|appreciable|gross|frank|"
                           r"overt|large|small|sizable|measurable)\b)*\s*")
# "Heart size is similar to prior and within normal limits": the cue after "and" shares the
# subject before the copula, so a backward reach may pass that copula.
_SHARED_SUBJECT = re.compile(r"\s*(?:[\w']+\s+){1,8}and\s*")

# Section headers whose text is not about this study's findings.
_SECTION_HEADER = re.compile(r"\b(indication|clinical history|history|comparisons?|technique|"
                             r"examination|exam|reason for (?:exam|examination|study)|procedure|"
                             r"findings|impression|conclusion|summary)\s*:")
_SKIPPED_SECTIONS = {"indication", "clinical history", "history", "comparison", "comparisons",
                     "technique", "examination", "exam", "procedure"}


# The labeler reads English. A sentence counts as English when it holds English clinical words
# (those of the tables above and the common words of report prose below) and few words that are
# the everyday function words of other European languages: "Pas de pneumothorax" has one English
# word and two French ones, so it is not read (rather than read as a positive pneumothorax).
_ENGLISH_PROSE = """
a an the of in on at to for from by with without and or nor but not no there is are was were be been
has have had this that these those it its as than then both either neither any all each other
chest lung lungs heart cardiac pleural pulmonary lobe lobes base bases apex apices zone upper lower
mid middle left right bilateral clear normal abnormal size stable unchanged change changes new
prior previous comparison compared study exam examination view views frontal lateral portable pa ap
radiograph radiographs film films findings impression acute evidence seen noted identified appear
appears appearance silhouette contour contours mediastinal mediastinum hilar hila osseous bony
structures soft tissues visualized visible limits within interval increased decreased
small moderate large mild minimal trace severe focal diffuse patchy streaky linear process disease
airspace vascular vasculature markings volume volumes low high well expanded inflated
spine thoracic rib ribs clavicle shoulder diaphragm hemidiaphragm costophrenic angle angles
position tip line tube catheter unremarkable intact grossly again demonstrate demonstrated shows
show showing suggest possible likely probable cannot exclude may represent could
""".split()
# Not "et" (an ET tube) nor "met": words that are also report English stay out of this list.
_FOREIGN_FUNCTION_WORDS = frozenset("""
de du des le la les pas sans aucun aucune est ou une avec dans sur pour au aux ni
der die das den dem kein keine keinen keiner nicht und oder ist sind mit ohne ein eine einer zum zur
el los las sin con del hay una ningun ninguna sono di il della senza nessun nessuna
geen niet het een van zonder
""".split())


def _english_vocabulary() -> tuple[frozenset, re.Pattern]:
    """Whole words and word stems ("consolidat" of ``consolidat\\w*``) of every table above."""
    tables = [MENTIONS, HEDGED_MENTIONS, OTHER_OBSERVATIONS, UNMENTIONS]
    sources = [p for t in tables for ps in t.values() for p in ps]
    sources += [p for ps, _, _ in NEUTRAL_MENTIONS for p in ps]
    sources += [p for table in (PRE_NEGATION_UNCERTAINTY, NEGATION, POST_NEGATION_UNCERTAINTY,
                                ENLARGEMENT, STABILITY) for p, _ in table]
    words, stems = set(_ENGLISH_PROSE), set()
    for pattern in sources:
        for word, optional in re.findall(r"([a-z]{2,})(\??)", pattern):
            words.update((word, word[:-1]) if optional else (word,))  # "effusions?": effusion(s)
        stems.update(re.findall(r"([a-z]{4,})\\w[*+]", pattern))
    return frozenset(words), re.compile("|".join(sorted(stems)))


_ENGLISH_WORDS, _ENGLISH_STEMS = _english_vocabulary()


def _is_english(sentence: str) -> bool:
    """Whether a (normalised) sentence is English clinical prose the rules can read."""
    words = re.findall(r"[^\W\d_]{2,}", sentence)
    foreign = [w for w in words if w in _FOREIGN_FUNCTION_WORDS or not w.isascii()]
    english = [w for w in words if w not in foreign and (w in _ENGLISH_WORDS or _ENGLISH_STEMS.match(w))]
    # Mostly English words, and at least three for every foreign one: a stray "de novo" is read,
    # "Pas de pneumothorax" is not.
    return len(english) >= max(1, 3 * len(foreign), 0.3 * len(words))


def _compile(patterns: Iterable[str]) -> re.Pattern:
    # Longest alternatives first, so "pleural effusion" wins over "effusion" at one position.
    ordered = sorted(patterns, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(f"(?:{p})" for p in ordered) + r")\b")


def _compile_cues(table: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile(r"\b(?:" + pattern + r")\b"), direction) for pattern, direction in table]


_MENTION_RE = {name: _compile(p) for name, p in {**MENTIONS, **OTHER_OBSERVATIONS}.items()}
_HEDGED_RE = {name: _compile(p) for name, p in HEDGED_MENTIONS.items()}
_NEUTRAL_RE = [(_compile(p), normal, abnormal) for p, normal, abnormal in NEUTRAL_MENTIONS]
_UNMENTION_RE = {name: _compile(p) for name, p in UNMENTIONS.items()}
_RULES = {
    "pre-negation uncertainty": _compile_cues(PRE_NEGATION_UNCERTAINTY),
    "negation": _compile_cues(NEGATION),
    "post-negation uncertainty": _compile_cues(POST_NEGATION_UNCERTAINTY),
    "enlargement": _compile_cues(ENLARGEMENT),
    "stability": _compile_cues(STABILITY),
}


# --------------------------------------------------------------------------------------
# Text preparation: normalise, drop history-like sections, split into sentences.
# --------------------------------------------------------------------------------------

def _normalise(text: str) -> str:
    t = text.lower()
    t = re.sub(r"\bw/o\b", " without ", t)
    t = re.sub(r"\bw/(?=\s|\w)", " with ", t)
    t = re.sub(r"\bs/p\b", " status post ", t)
    t = re.sub(r"\band ?/ ?or\b", " or ", t)
    t = re.sub(r"\bvs\.?(?=\s)", " versus ", t)
    t = re.sub(r"(?<=[a-z])/(?=[a-z])", " or ", t)       # "atelectasis/consolidation"
    t = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", t)          # "left-sided", "air-space"
    t = re.sub(r"(?:^|(?<=\s))\d{1,2}[.)](?=\s)", ". ", t)  # numbered lists "1. ... 2. ..."
    return t


# Longest piece of text the rules read at once. Scopes are searched within a sentence, so a
# "sentence" of 100,000 characters (a report without full stops) would cost time quadratic in its
# length; real sentences are far shorter, and a longer run is cut at its last clause break, comma
# or space before this length, which keeps labelling linear in the report's length.
MAX_SENTENCE_CHARS = 400


def _pieces(sentence: str) -> list[str]:
    """Cut an over-long sentence into pieces of at most MAX_SENTENCE_CHARS characters."""
    pieces = []
    while len(sentence) > MAX_SENTENCE_CHARS:
        head = sentence[:MAX_SENTENCE_CHARS]
        cut = max(head.rfind(";"), head.rfind(":"))
        if cut < MAX_SENTENCE_CHARS // 2:
            cut = max(cut, head.rfind(","))
        if cut < MAX_SENTENCE_CHARS // 2:
            cut = max(cut, head.rfind(" "))
        cut = cut if cut > 0 else MAX_SENTENCE_CHARS
        pieces.append(sentence[:cut].strip(" .,;:"))
        sentence = sentence[cut + 1:].strip()
    return pieces + [sentence]


def split_sentences(text: str) -> list[str]:
    """Normalise a report and cut it into sentences (history-like sections dropped).

    A sentence longer than ``MAX_SENTENCE_CHARS`` is cut at clause breaks, so that the
    time to label a report grows linearly with its length.
    """
    t = _normalise(text)
    kept, last, last_header = [], 0, None
    for match in _SECTION_HEADER.finditer(t):
        if last_header not in _SKIPPED_SECTIONS:
            kept.append(t[last:match.start()])
        last, last_header = match.end(), match.group(1)
    if last_header not in _SKIPPED_SECTIONS:
        kept.append(t[last:])
    sentences = []
    for part in kept:
        for sentence in re.split(r"[.!?]+(?:\s+|$)|[\r\n]+", part):
            sentence = " ".join(sentence.split()).strip(" .,")
            sentences += [p for p in _pieces(sentence) if re.search(r"[a-z]", p)]
    return sentences


def _english_sentences(text: str) -> list[str]:
    """The sentences of a report the labeler reads: those in English (see ``_is_english``)."""
    return [s for s in split_sentences(text) if _is_english(s)]


# --------------------------------------------------------------------------------------
# Scope: which words a cue reaches.
# --------------------------------------------------------------------------------------

def _forward_end(s: str, start: int) -> int:
    """Where a cue ending at ``start`` stops reaching forward: a clause break, a verb or a new item."""
    end = len(s)
    for m in _CLAUSE_BREAK.finditer(s, start):
        if m.group(0) == "with" and not s[start:m.start()].strip():
            continue  # "possibly with effusion": the cue leads into the "with"
        end = m.start()
        break
    for m in _FORWARD_STOP.finditer(s, start, end):
        if m.group(0) in _PARTICIPLES and _PREMODIFIERS.fullmatch(s, start, m.start()):
            continue  # "no visualized pneumothorax": an adjective, not the verb of the clause
        end = m.start()
        break
    for m in _NEW_ITEM.finditer(s, start, end):
        if _ADJECTIVE_ITEM.match(s, m.start()) and _CLOSING_OR.search(s, m.end(), end):
            continue  # "no consolidation, large effusion, or pneumothorax": still the same list
        return m.start()
    return end


def _backward_start(s: str, cue_start: int, cue_end: int) -> int:
    """Where a cue spanning ``[cue_start, cue_end)`` stops reaching backward.

    It stops at a clause break or a copula. Commas stop it too, unless the words
    between the last comma and the cue hold "and"/"or"/"nor": then the commas
    separate list items ("Effusion, pneumothorax, or consolidation is not seen")
    back to an item that starts with a size word ("Small effusion, ...").
    """
    clause = max((m.end() for m in _CLAUSE_BREAK.finditer(s, 0, cue_start)), default=0)
    copulas = [m.end() for m in _BACKWARD_STOP.finditer(s, clause, cue_start)]
    start = copulas[-1] if copulas else clause
    if copulas and _SHARED_SUBJECT.fullmatch(s, copulas[-1], cue_start):
        start = copulas[-2] if len(copulas) > 1 else clause
    commas = [i for i in range(start, cue_start) if s[i] == ","]
    if not commas:
        return start
    if not re.search(r"\b(?:and|or|nor)\b", s[commas[-1] + 1:cue_end]):
        return commas[-1] + 1
    bounds = [start] + [c + 1 for c in commas]
    for item_start in reversed(bounds[:-1]):
        if _SIZE_WORD.match(s[item_start:].lstrip()):
            return s.index(",", item_start) + 1
    return start


@dataclass(frozen=True)
class _Cue:
    rule: str
    text: str
    start: int
    end: int
    forward_end: int | None
    backward_start: int | None

    def reaches(self, start: int, end: int) -> bool:
        if self.forward_end is not None and self.end <= start < self.forward_end:
            return True
        return self.backward_start is not None and self.backward_start <= start and end <= self.start


def _find_cues(s: str, rule: str) -> list[_Cue]:
    cues = []
    for pattern, direction in _RULES[rule]:
        for m in pattern.finditer(s):
            forward = _forward_end(s, m.end()) if direction in (FORWARD, BOTH) else None
            backward = _backward_start(s, m.start(), m.end()) if direction in (BACKWARD, BOTH) else None
            cues.append(_Cue(rule, m.group(0).strip(), m.start(), m.end(), forward, backward))
    return cues


# --------------------------------------------------------------------------------------
# Stages 1 and 2, per sentence.
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mention:
    """One mention of a finding in one sentence, and how it was classified."""

    finding: str    # a name in FINDINGS, or an observation outside them (OTHER_OBSERVATIONS)
    phrase: str     # the words that mentioned it
    sentence: str   # the normalised sentence
    label: int      # 1 positive, 0 negative, -1 uncertain
    reason: str     # the rule that decided, e.g. "negation: 'no'"


def _candidates(s: str) -> list[tuple[int, int, str, str, str]]:
    """(start, end, finding if normal, finding if abnormal, kind) for each mention."""
    found = []
    for name, pattern in _MENTION_RE.items():
        found += [(m.start(), m.end(), name, name, "direct") for m in pattern.finditer(s)]
    for name, pattern in _HEDGED_RE.items():
        found += [(m.start(), m.end(), name, name, "hedged") for m in pattern.finditer(s)]
    for pattern, normal, abnormal in _NEUTRAL_RE:
        found += [(m.start(), m.end(), normal, abnormal, "neutral") for m in pattern.finditer(s)]

    def unmentioned(start, end, name):
        pattern = _UNMENTION_RE.get(name)
        return pattern is not None and any(m.start() < end and start < m.end() for m in pattern.finditer(s))

    found = [c for c in found if not unmentioned(c[0], c[1], c[2])]
    # Overlapping mentions of one finding count once: direct before hedged before neutral, then longest.
    priority = {"direct": 0, "hedged": 1, "neutral": 2}
    found.sort(key=lambda c: (priority[c[4]], -(c[1] - c[0]), c[0]))
    kept: list[tuple[int, int, str, str, str]] = []
    for c in found:
        if not any(k[2] == c[2] and k[0] < c[1] and c[0] < k[1] for k in kept):
            kept.append(c)
    return sorted(kept)


@lru_cache(maxsize=200_000)
def _sentence_mentions(s: str) -> tuple[Mention, ...]:
    candidates = _candidates(s)
    if not candidates:
        return ()
    cues: dict[str, list[_Cue]] = {}  # found on first use: most mentions are settled by the first rules

    def first_cue(rule, start, end):
        if rule not in cues:
            cues[rule] = _find_cues(s, rule)
        return next((c for c in cues[rule] if c.reaches(start, end)), None)

    mentions = []
    for start, end, normal, abnormal, kind in candidates:
        phrase = s[start:end]
        if cue := first_cue("pre-negation uncertainty", start, end):
            finding, label, reason = abnormal, -1, f"pre-negation uncertainty: '{cue.text}'"
        elif cue := first_cue("negation", start, end):
            finding, label, reason = normal, 0, f"negation: '{cue.text}'"
        elif cue := first_cue("post-negation uncertainty", start, end):
            finding, label, reason = abnormal, -1, f"uncertainty: '{cue.text}'"
        elif kind == "hedged":
            finding, label, reason = abnormal, -1, "hedged phrase"
        elif kind == "neutral":
            if cue := first_cue("enlargement", start, end):
                finding, label, reason = abnormal, 1, f"enlargement: '{cue.text}'"
            elif cue := first_cue("stability", start, end):
                finding, label, reason = abnormal, -1, f"stable size says nothing about enlargement: '{cue.text}'"
            else:
                continue  # "the heart" with no cue says nothing
        else:
            finding, label, reason = abnormal, 1, "positive (no rule applied)"
        mentions.append(Mention(finding, phrase, s, label, reason))
        # CheXpert's exception: heart failure that is present or possible hedges Cardiomegaly.
        if finding == "Edema" and label != 0 and re.fullmatch(r"(?:congestive )?heart failure|chf", phrase):
            mentions.append(Mention("Cardiomegaly", phrase, s, -1, "heart failure implies possible cardiomegaly"))
    return tuple(mentions)


# --------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------

def _check_text(text, what: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a report string, got {type(text).__name__}: {text!r:.80}")
    return text


def extract_mentions(text: str) -> list[Mention]:
    """Every mention in a report with its label and the rule that decided it.

    Use it to see *why* the labeler said what it said::

        >>> for m in extract_mentions("No effusion. Possible small pneumothorax."):
        ...     print(m.finding, m.label, m.reason)
        Pleural Effusion 0 negation: 'no'
        Pneumothorax -1 uncertainty: 'possible'
    """
    _check_text(text)
    return [m for s in _english_sentences(text) for m in _sentence_mentions(s)]


def aggregate(mentions: Iterable[Mention], nonempty: bool = True) -> dict[str, int]:
    """Stage 3: one label per finding, and No Finding (CheXpert's rules).

    A finding with several mentions is 1 if any mention is positive, else -1 if
    any is uncertain, else 0. No Finding is 1 when nothing but Support Devices
    is positive or uncertain, and is left out otherwise.
    """
    per_finding: dict[str, list[int]] = {}
    for m in mentions:
        per_finding.setdefault(m.finding, []).append(m.label)
    labels = {}
    for name in PATHOLOGIES:
        if name in per_finding:
            values = per_finding[name]
            labels[name] = 1 if 1 in values else (-1 if -1 in values else 0)
    abnormal = any(v != 0 for name, values in per_finding.items() if name != SUPPORT_DEVICES for v in values)
    if nonempty and not abnormal:
        labels[NO_FINDING] = 1
    return labels


def label_report(text: str) -> dict[str, int]:
    """Label one English report: ``{finding: 1 | 0 | -1}`` for every finding it mentions.

    Sentences that are not English are not read, so a report with no English
    clinical vocabulary gets ``{}`` (no labels, not "No Finding").

    >>> label_report("No pleural effusion, pneumothorax or consolidation. Heart size is normal.")
    {'Cardiomegaly': 0, 'Pleural Effusion': 0, 'Pneumothorax': 0, 'Consolidation': 0, 'No Finding': 1}
    >>> label_report("Small left effusion. Cannot exclude pneumonia.")
    {'Pleural Effusion': 1}
    """
    _check_text(text)
    sentences = _english_sentences(text)
    mentions = [m for s in sentences for m in _sentence_mentions(s)]
    return aggregate(mentions, nonempty=bool(sentences))


def check_reports(reports, what: str) -> list[str]:
    """``reports`` as a list, after checking it is an iterable of strings (not one string); ``what`` names it."""
    if isinstance(reports, str):
        raise TypeError(f"{what} must be a list of report strings, got a single str; wrap it in a list")
    try:
        reports = list(reports)
    except TypeError:
        raise TypeError(f"{what} must be a list of report strings, got {type(reports).__name__}") from None
    for i, r in enumerate(reports):
        _check_text(r, f"{what}[{i}]")
    return reports


def labels_matrix(reports: Iterable[str], uncertain_as: int = 1) -> np.ndarray:
    """Label many reports into an ``(N, len(FINDINGS))`` float32 matrix of 1/0.

    Columns follow ``FINDINGS``. Positive is 1; negative and not mentioned are 0;
    uncertain is ``uncertain_as`` (1: CheXpert's "U-Ones" policy, the default; 0: "U-Zeros").
    No Finding is 1 where the labeler set it.
    """
    if uncertain_as not in (0, 1):
        raise ValueError(f"uncertain_as must be 0 or 1, got {uncertain_as!r}")
    reports = check_reports(reports, "reports")
    out = np.zeros((len(reports), len(FINDINGS)), dtype=np.float32)
    for i, report in enumerate(reports):
        for name, value in label_report(report).items():
            out[i, FINDINGS.index(name)] = 1.0 if value == 1 else float(uncertain_as if value == -1 else 0)
    return out


__all__ = ["NO_FINDING", "SUPPORT_DEVICES", "MENTIONS", "HEDGED_MENTIONS", "NEUTRAL_MENTIONS", "OTHER_OBSERVATIONS",
           "UNMENTIONS", "PRE_NEGATION_UNCERTAINTY", "NEGATION", "POST_NEGATION_UNCERTAINTY", "ENLARGEMENT",
           "STABILITY", "MAX_SENTENCE_CHARS", "Mention", "split_sentences", "extract_mentions", "aggregate",
           "label_report", "check_reports", "labels_matrix"]
