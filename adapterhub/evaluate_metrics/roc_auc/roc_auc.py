"""ROC-AUC as an `evaluate` metric module (binary and one-vs-rest multiclass), shipped so no hub download is needed."""

import datasets
import evaluate
from sklearn.metrics import roc_auc_score


class RocAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Area under the ROC curve; for more than two classes, one-vs-rest over class probabilities.",
            citation="",
            inputs_description="references: int class ids; prediction_scores: per-row class probabilities (multiclass) or positive-class score.",
            features=datasets.Features(
                {"prediction_scores": datasets.Sequence(datasets.Value("float")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, references, prediction_scores, multi_class="ovr", average="macro", labels=None):
        scores = prediction_scores
        if len(scores) and len(scores[0]) == 2:  # binary: sklearn wants the positive-class score only
            scores = [row[1] for row in scores]
        return {
            "roc_auc": float(roc_auc_score(references, scores, multi_class=multi_class, average=average, labels=labels))
        }
