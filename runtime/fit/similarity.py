"""BLEU-4 and ROUGE-1/2/L of generated replies, as LLaMA-Factory 0.9.5 reports them (its train/sft/metric.py,
ComputeSimilarity), computed by the same packages: jieba, nltk and rouge-chinese.

Why its packages and not a reimplementation or another library: jieba's Chinese word segmentation is a
dictionary and an HMM (no short formula to reproduce), and rouge-score, the well-kept ROUGE, tokenizes
differently and drops non-ASCII text, so its numbers are not LLaMA-Factory's. With the same packages the
numbers are LLaMA-Factory's on the same text (tests/runtime/fit/test_similarity.py checks them against the
formulas by hand). The config refuses do_predict at start, in one line with the pip command, where they
are missing (runtime/config/prediction.py).

Per row, prediction p and label l decoded without special tokens:

    words(t)          jieba.cut(t), joined with single spaces
    rouge-1, -2, -l   rouge_chinese.Rouge().get_scores(words(p), words(l)): F-scores; all three 0 when
                      either side has no word (rouge-1/2 count distinct n-grams, rouge-l is the LCS of words)
    bleu-4            nltk sentence_bleu([chars(l)], chars(p)), 4-gram weights, SmoothingFunction().method3,
                      on characters, not words
each x 100 and rounded to 4 places; the reported score is the mean over rows (numpy's, as LLaMA-Factory).
"""

from __future__ import annotations

import logging
from typing import Any

METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")  # LLaMA-Factory's order and names


class Similarity:
    """Scores rows one at a time (the scorers load once); `mean()` is LLaMA-Factory's reported dict."""

    def __init__(self) -> None:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge

        jieba.setLogLevel(logging.WARNING)  # its dictionary-loading lines on stderr, on every run
        self._cut, self._bleu, self._rouge = jieba.cut, sentence_bleu, Rouge
        self._smooth = SmoothingFunction().method3
        self.scores: dict[str, list[float]] = {name: [] for name in METRICS}

    def row(self, prediction: str, label: str) -> dict[str, float]:
        """One row's scores (x 100, rounded to 4 places), also kept for mean()."""
        hypothesis, reference = list(self._cut(prediction)), list(self._cut(label))
        if not " ".join(hypothesis).split() or not " ".join(reference).split():
            result: dict[str, Any] = {name: {"f": 0.0} for name in METRICS[:3]}
        else:
            result = self._rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        row = {name: round(result[name]["f"] * 100, 4) for name in METRICS[:3]}
        bleu = self._bleu([list(label)], list(prediction), smoothing_function=self._smooth)
        row["bleu-4"] = round(bleu * 100, 4)
        for name, value in row.items():
            self.scores[name].append(value)
        return row

    def mean(self) -> dict[str, float]:
        import numpy as np

        return {name: float(np.mean(values)) for name, values in self.scores.items()}


def similarity(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """The mean scores of rows (prediction, label), LLaMA-Factory's `bleu-4`, `rouge-1`, … keys."""
    scorer = Similarity()
    for prediction, label in zip(predictions, labels, strict=True):
        scorer.row(prediction, label)
    return scorer.mean()
