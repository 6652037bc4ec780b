"""The course's label space: CheXpert's names for the findings SynthCXR draws."""

FINDINGS = (
    "Cardiomegaly",
    "Pleural Effusion",
    "Pneumothorax",
    "Consolidation",
    "Lung Lesion",
    "Atelectasis",
    "Edema",
    "Support Devices",
    "Fracture",
    "No Finding",
)
PATHOLOGIES = FINDINGS[:-1]          # everything but "No Finding"
FINDING_INDEX = {name: i for i, name in enumerate(FINDINGS)}

LAB_NAMES = ("BNP", "WBC", "Temperature", "SpO2")
