"""Measured quality, offline: judges (small classifiers trained here on the real data), metrics
(conditional accuracy, Frechet distance with its real-vs-real floor, class histograms), and
``evaluate`` (what ``labutils eval`` and the notebooks call)."""
from .evaluate import evaluate, format_report, judge_for
from .grader import grade, report
from .judges import Judge, JudgeUnavailable, get_judge
from .metrics import (class_histogram, conditional_accuracy, frechet_distance, real_floor)

__all__ = ["evaluate", "format_report", "judge_for", "grade", "report", "Judge",
           "JudgeUnavailable", "get_judge", "class_histogram", "conditional_accuracy",
           "frechet_distance", "real_floor"]
