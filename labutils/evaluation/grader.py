"""The assessment's grader, in the open: the course grades lab 06 with a hidden classifier; here the
judge of the lab's data at 28x28 (:mod:`.judges`) plays that part.

The rule is the course's: ``per_class`` generations (5) of every digit at the learner's chosen
guidance weight ``w``; the assessment passes when the judge recognises at least ``bar`` (95%) of
them as the digit asked for.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..config import seeded
from .evaluate import generate_guided, judge_for
from .metrics import conditional_accuracy

PASS_BAR = 0.95
PER_CLASS = 5


def grade(lab, model, w: float, *, per_class: int = PER_CLASS, bar: float = PASS_BAR,
          steps: Optional[int] = None, sampler=None, seed: int = 0, judge=None,
          progress=print) -> Dict:
    """Generate ``per_class`` images of every class at ``w`` and judge them: a dict with
    ``passed``, ``accuracy``, ``per_class``, the ``images`` and the judge's ``predicted`` labels.
    ``sampler``: a schedule from ``lab.sampler(...)`` (default: ``lab.sampler(steps)``)."""
    judge = judge or judge_for(lab, progress)
    classes = list(lab.spec.classes)
    rows, _ = lab.context(classes=list(range(len(classes))))
    requested = torch.arange(len(classes)).repeat_interleave(per_class)
    with seeded(seed, lab.device):
        images = generate_guided(lab, model, rows[requested.to(rows.device)], float(w), steps,
                                 sampler=sampler)
    predicted = judge.predict(images)
    acc = conditional_accuracy(predicted, requested, classes)
    return {"passed": acc["overall"] >= bar, "accuracy": acc["overall"], "bar": bar, "w": w,
            "per_class": acc["per_class"], "n": acc["n"], "images": images,
            "requested": requested, "predicted": predicted, "judge": judge}


def report(result: Dict) -> str:
    """The grader's verdict, one line per class, for printing."""
    judge = result["judge"]
    classes = list(result["per_class"])
    lines = [f"grader: {judge.describe()}"]
    if judge.note:
        lines.append(judge.note)
    per = result["n"] // len(classes)
    for k, name in enumerate(classes):
        got = result["predicted"][result["requested"] == k].tolist()
        seen = ", ".join(judge.classes[i] for i in got)
        ok = round(result["per_class"][name] * per)
        lines.append(f"  {name:>10}: {ok}/{per} recognised   (judge saw: {seen})")
    verdict = "PASS" if result["passed"] else "FAIL"
    lines.append(f"{verdict}: {100 * result['accuracy']:.0f}% of {result['n']} generations at "
                 f"w = {result['w']:g} recognised (the bar: {100 * result['bar']:.0f}%)")
    return "\n".join(lines)
