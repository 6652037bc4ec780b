"""SynthCXR's reports and labels agree when read by the course's full labeler (not only a regex reader)."""
import numpy as np

from medmm_lite.data import PATHOLOGIES, generate_cohort
from medmm_lite.eval import label_report, labels_matrix


def test_every_report_reads_back_as_its_labels():
    cohort = generate_cohort(400, image_size=32, seed=11, subtlety=1.5)
    read = labels_matrix(cohort.reports)  # uncertain mentions count as positive
    truth = cohort.true_labels.numpy()
    disagree = np.flatnonzero((read[:, :-1] != truth[:, :-1]).any(1))
    assert len(disagree) == 0, f"study {disagree[:1]}: {cohort.reports[disagree[0]]!r}" if len(disagree) else ""


def test_hedged_findings_read_as_uncertain_and_absent_ones_never_asserted():
    cohort = generate_cohort(400, image_size=32, seed=12)
    hedged = cohort.hedged.numpy() if hasattr(cohort.hedged, "numpy") else np.asarray(cohort.hedged)
    for i in range(len(cohort)):
        read = label_report(cohort.reports[i])
        for k, name in enumerate(PATHOLOGIES):
            if cohort.true_labels[i, k] == 0:
                assert read.get(name) in (None, 0), f"absent {name} asserted in {cohort.reports[i]!r}"
            elif hedged[i, k]:
                assert read.get(name) == -1, f"hedged {name} not read as uncertain in {cohort.reports[i]!r}"
