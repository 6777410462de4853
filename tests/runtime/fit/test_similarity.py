"""BLEU-4 and ROUGE as LLaMA-Factory's ComputeSimilarity reports them, checked against the formulas by hand.

ROUGE-1/2 are over distinct word n-grams (rouge-chinese keeps them in sets), ROUGE-L over the longest
common subsequence of words, each F = 2PR / (P + R + 1e-8); words are jieba's. BLEU-4 is nltk's sentence
BLEU over characters: (p1 p2 p3 p4)^(1/4) x brevity penalty, a zero n-gram precision replaced by
1 / (2^k x its n-gram count), k = 1, 2, … (SmoothingFunction().method3).
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("jieba", reason="the scorers: pip install jieba nltk rouge-chinese")
pytest.importorskip("nltk", reason="the scorers: pip install jieba nltk rouge-chinese")
pytest.importorskip("rouge_chinese", reason="the scorers: pip install jieba nltk rouge-chinese")


def _f(p: float, r: float) -> float:
    return round(2 * p * r / (p + r + 1e-8) * 100, 4)


CASES = [
    # identical text: every score 100
    ("a b c d", "a b c d", {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}),
    # one word each (jieba keeps "abcd" whole), different: no word overlap. Characters: p1 3/4, p2 2/3
    # (ab, bc), p3 1/2 (abc), p4 0/1 -> 1/2; same length, no penalty.
    (
        "abcd",
        "abce",
        {
            "rouge-1": 0.0,
            "rouge-2": 0.0,
            "rouge-l": 0.0,
            "bleu-4": round((3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25 * 100, 4),
        },
    ),
    # shorter than the label: brevity penalty exp(1 - 6/3); p1..p3 1, no 4-gram -> 0/1 -> 1/2
    (
        "abc",
        "abcdef",
        {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": round(math.exp(-1) * 0.5**0.25 * 100, 4)},
    ),
    # Chinese: jieba cuts 我/爱/北京/天安门 and 我/爱/北京. ROUGE-1: 3 of 4 and 3 of 3 words; ROUGE-2: 2 of 3
    # and 2 of 2 bigrams; LCS 3. Characters: 4/7, 3/6, 2/5, 1/4, longer than the label (no penalty).
    (
        "我爱北京天安门",
        "我爱北京",
        {
            "rouge-1": _f(3 / 4, 1),
            "rouge-2": _f(2 / 3, 1),
            "rouge-l": _f(3 / 4, 1),
            "bleu-4": round((4 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25 * 100, 4),
        },
    ),
    # distinct n-grams: {the cat sat on mat} vs {the cat is on mat}: 4 of 5 each way; bigrams 3 of 5; LCS
    # "the cat on the mat" 5 of 6 words
    (
        "the cat sat on the mat",
        "the cat is on the mat",
        {"rouge-1": 80.0, "rouge-2": 60.0, "rouge-l": _f(5 / 6, 5 / 6)},
    ),
    # an empty prediction: all zero (LLaMA-Factory's guard; nltk's BLEU without a unigram match is 0)
    ("", "abc", {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}),
]


@pytest.mark.parametrize(("prediction", "label", "want"), CASES, ids=[c[0] or "empty" for c in CASES])
def test_row_scores_by_hand(prediction: str, label: str, want: dict[str, float]) -> None:
    from runtime.fit.similarity import Similarity

    got = Similarity().row(prediction, label)
    assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-4)


def test_reported_score_is_the_mean_of_rounded_rows() -> None:
    """LLaMA-Factory rounds each row to 4 places, then averages (numpy)."""
    from runtime.fit.similarity import METRICS, similarity

    rows = [("abcd", "abce"), ("a b c d", "a b c d"), ("", "abc")]
    bleu = [round((3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25 * 100, 4), 100.0, 0.0]
    got = similarity([p for p, _ in rows], [label for _, label in rows])
    assert list(got) == list(METRICS)
    assert got["bleu-4"] == pytest.approx(sum(bleu) / 3, abs=1e-9)
    assert got["rouge-1"] == pytest.approx(100 / 3, abs=1e-9)
