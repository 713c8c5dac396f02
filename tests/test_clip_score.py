"""The CLIP score of prompt/image pairs (lab 05's eval) and how the report names its CLIP."""
import pytest
import torch

from labutils.evaluation.evaluate import format_report
from labutils.evaluation.metrics import clip_score


def test_clip_score_is_100_cosine_floored_at_zero():
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert clip_score(t * 3, t) == pytest.approx(100.0)            # scale does not matter
    assert clip_score(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])) == 0.0
    assert clip_score(-t, t) == 0.0                                # negative cosines count 0
    half = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert clip_score(half, torch.tensor([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="one text row per image"):
        clip_score(t, t[:2])


@pytest.mark.parametrize("standin, says", [(True, "LOCAL STAND-IN"), (False, "OpenAI's CLIP")])
def test_the_report_says_which_clip_scored(standin, says):
    per_class = {"daisy": 1.0, "roses": 0.5, "sunflowers": 0.0}
    report = {"lab": "flowers-clip", "profile": "ci", "sampler": "ddpm", "sampling_steps": 2,
              "T": 400, "seed": 0, "n": 6,
              "judge": {"name": "j", "heldout_accuracy": 0.85, "n_heldout": 10, "source": "s",
                        "note": None},
              "real_floor": {"frechet": 1.0, "n": 6},
              "weights": [{"w": 1.0, "frechet": 2.0, "n": 6, "clip_score": 23.45,
                           "accuracy": {"overall": 0.5, "per_class": per_class, "n": 6}}],
              "best_w": 1.0, "clip": {"model_id": "ViT-B/32", "standin": standin}}
    table = format_report(report)
    assert says in table and ("w=1 23.4" in table or "w=1 23.5" in table)
