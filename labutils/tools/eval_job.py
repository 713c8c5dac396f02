"""``labutils eval RUN_OR_CHECKPOINT``: how good a trained model's images are, in numbers.

Loads the newest readable checkpoint of a run folder (or a checkpoint file), with its EMA
weights unless ``--no-ema``, samples it and scores the samples with the judge of the lab's data
(:mod:`labutils.evaluation`). Prints a table and writes the same numbers as JSON into the run
folder: ``eval-step<step>-<ema|raw>.json`` (or ``--json``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import ConfigError, LabSettings, get_device
from ..ema import load_for_sampling
from .checkpoint import find_checkpoint
from ..files import check_writable, write_text_atomic


def run_eval(args) -> int:
    from ..evaluation.evaluate import evaluate, format_report
    from ..evaluation.judges import JudgeUnavailable
    from ..labs import Lab

    path, state, run = find_checkpoint(args.checkpoint)
    out = Path(args.json) if args.json else None
    if out is not None:
        check_writable(out, "--json")
    device = get_device(args.device)
    settings = LabSettings(**state["settings"])
    lab = Lab(settings, device, clip_model=args.clip_model, data_dir=args.data_dir)
    if lab.spec.conditioning == "clip-text":
        lab.check_clip(state.get("clip"), "pass --clip-model with the same weights")
    model = lab.build_model()
    which = load_for_sampling(model, state, args.ema)
    print(f"labutils eval: {settings.lab}, checkpoint {path} (step {state['step']}), "
          f"{which} weights", flush=True)
    try:
        report = evaluate(lab, model, n=args.n, weights=args.w, steps=args.steps,
                          sampler=args.sampler, eta=args.eta, seed=args.seed)
    except JudgeUnavailable as err:
        raise ConfigError(f"cannot judge {settings.lab}: {err}") from None
    report.update(checkpoint=str(path), step=int(state["step"]), weights_used=which,
                  threads=args.thread_info)
    print(format_report(report))
    if out is None:
        out = run / f"eval-step{int(state['step']):08d}-{which}.json"
        try:
            check_writable(out, "the report")
        except ConfigError:
            out = Path.cwd() / out.name
            print(f"labutils eval: {run} is not writable: the report goes to {out}",
                  file=sys.stderr)
    write_text_atomic(out, json.dumps(report, indent=2))
    print(f"report: {out}")
    return 0
