"""F1 as an `evaluate` metric module, shipped with adapterhub so no hub download is needed."""

import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Harmonic mean of precision and recall; `average='macro'` weighs every class equally.",
            citation="",
            inputs_description="predictions: list of int class ids; references: list of int class ids; average: sklearn average.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None, average="binary", sample_weight=None):
        score = f1_score(
            references, predictions, labels=labels, average=average, sample_weight=sample_weight, zero_division=0
        )
        return {"f1": score.tolist() if hasattr(score, "tolist") and getattr(score, "ndim", 0) else float(score)}
