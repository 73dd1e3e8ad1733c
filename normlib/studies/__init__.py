"""The studies beyond the assignment, one module per study, each with its trials, its page function
`page(P)` (run the page's trials, glue its numbers, verdicts and figures, return the tables it shows)
and its declared family of verdicts. What every study uses (formats, the rows of a family, Holm over
it, the wording of verdicts, the effect-size rule) is in normlib.studies.common; what the literature
reports for a family's key rows, against what its tests detect, in normlib.studies.literature.

STUDIES lists them: the notebook of each (notebooks/<name>.ipynb, a chapter in _toc.yml) and its module.
"""
from normlib.studies import (activation_drift, batch_size, claims, init_scale, landscape, learning_rate, recurrent,
                             regularization, transformer)

STUDIES = {  # notebook -> module
    "study_batch_size": batch_size,
    "study_learning_rate": learning_rate,
    "study_init_scale": init_scale,
    "study_activation_drift": activation_drift,
    "study_landscape": landscape,
    "study_regularization": regularization,
    "study_recurrent": recurrent,
    "study_transformer": transformer,
    "study_claims": claims,
}
