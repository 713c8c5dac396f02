"""``labutils bench``'s report: the rows comparing the course's way with labutils' for each
lab, the notes that say how each was measured, and ``bench.md``/``bench.json``.

The measuring is :mod:`labutils.tools.bench`'s; this module only reads its results, a dict
per lab keyed by (configuration, phase), plus the machine's peak (:mod:`.bench_peak`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import torch

BASELINE, OURS = "baseline", "ours"   # the two configurations every lab is measured in


def _num(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if v >= 1 else f"{v:.3g}"


def _ms(st: Dict) -> str:
    return f"{_num(st['median'])} [{_num(st['min'])}-{_num(st['max'])}]"


def _ratio(b: Optional[float], o: Optional[float]) -> Optional[float]:
    return b / o if b and o else None


def _row(lab, measure, unit, b, o, b_text, o_text, estimated=False, note="", ratio=True):
    """``ratio``: baseline / ours means something (a time or a size, not a share)."""
    return {"lab": lab, "measure": measure, "unit": unit, "baseline": b, "ours": o,
            "ratio": _ratio(b, o) if ratio else None, "baseline_text": b_text,
            "ours_text": o_text, "estimated": estimated, "note": note}


def _failed(res: Optional[Dict]) -> bool:
    return res is None or "error" in res


def peak_text(peak: Dict) -> str:
    """``fp32 matmul 2048x2048: 160 GFLOP/s; bf16: 1,020 GFLOP/s`` (the fastest repetition)."""
    parts = [f"{prec} {_num(peak[prec]['gflops'])} GFLOP/s" for prec in ("fp32", "bf16")
             if prec in peak]
    n = peak["fp32"]["n"]
    return (f"matmul {n}x{n}: " + "; ".join(parts) + (" (TF32 allowed)" if peak.get("tf32")
                                                        else "")
            + ("" if "bf16" in peak else "; bf16 not native here"))


def _share_of_peak(gflop: float, step: Dict, peak: Optional[Dict], prec: str):
    """(percent or None, text): a step's arithmetic rate against the same precision's peak."""
    rate = gflop / (step["step_ms"]["median"] / 1e3)
    limit = (peak or {}).get(prec)
    if not limit:
        return None, f"{_num(rate)} GFLOP/s ({prec}; no {prec} peak measured)"
    pct = 100 * rate / limit["gflops"]
    return pct, f"{_num(rate)} GFLOP/s = **{pct:.0f}%** of the {prec} peak"


def lab_rows(lab: str, results: Dict, device: torch.device,
             peak: Optional[Dict] = None) -> List[Dict]:
    """The report's rows for one lab from its measurements (missing ones are skipped);
    ``peak``: the machine's measured matmul throughput (:func:`.bench_peak.machine_peak`)."""
    rows = []
    mem_key = "peak_cuda_mb" if device.type == "cuda" else "peak_rss_mb"
    mem_name = "peak GPU memory" if device.type == "cuda" else "peak RSS"
    b, o = results.get((BASELINE, "train")), results.get((OURS, "train"))
    if not _failed(b) and not _failed(o):
        prec = "bf16" if o["bf16"] else "fp32"
        rows.append(_row(lab, f"train step, batch {b['batch']} (ms, median [min-max])", "ms",
                         b["step_ms"]["median"], o["step_ms"]["median"],
                         f"{_ms(b['step_ms'])}, {_num(b['images_per_s'])} img/s",
                         f"{_ms(o['step_ms'])}, {_num(o['images_per_s'])} img/s ({prec})"))
        if "step_gflop" in o and not _failed(peak):
            b_pct, b_text = _share_of_peak(o["step_gflop"], b, peak, "fp32")
            o_pct, o_text = _share_of_peak(o["step_gflop"], o, peak, prec)
            rows.append(_row(lab, f"arithmetic: {_num(o['step_gflop'])} GFLOP a step (forward + "
                                  "backward), its rate against the measured matmul peak", "%",
                             b_pct, o_pct, b_text, o_text, ratio=False))
        for name, key in (("ours + channels_last", "ours+channels_last"),
                          ("ours + torch.compile", "ours+compile")):
            k = results.get((key, "train"))
            if k is None:
                continue
            if _failed(k):
                rows.append(_row(lab, f"train step, {name} (ms)", "ms", None, None, "",
                                 "failed", note=k.get("error", "").splitlines()[0]))
                continue
            note = (f"compile {k['compile_s']:.1f} s (first step less a steady one)"
                    if "compile_s" in k else "")
            rows.append(_row(lab, f"train step, {name} (ms)", "ms", b["step_ms"]["median"],
                             k["step_ms"]["median"], _ms(b["step_ms"]), _ms(k["step_ms"]),
                             note=note))
        if "epoch" in b and "epoch" in o:
            be, oe = b["epoch"], o["epoch"]

            def ep(e, r):
                how = ("measured" if e["exact"]
                       else f"est. from {e['steps_timed']} of {r['steps_per_epoch']} steps")
                return f"{_num(e['seconds'])} ({how})"
            rows.append(_row(lab, f"epoch incl. data, {o['images']:,} images (s)", "s",
                             be["seconds"], oe["seconds"], ep(be, b), ep(oe, o),
                             estimated=not (be["exact"] and oe["exact"])))
        rows.append(_row(lab, "data preparation, once (s)", "s", b["data_prep_s"],
                         o["data_prep_s"], _num(b["data_prep_s"]), _num(o["data_prep_s"])))
        rows.append(_row(lab, f"{mem_name}, training (MB)", "MB", b.get(mem_key), o.get(mem_key),
                         _num(b.get(mem_key, 0)), _num(o.get(mem_key, 0))))
    b, o = results.get((BASELINE, "sample")), results.get((OURS, "sample"))
    if not _failed(b) and not _failed(o):
        pic = o["picture"]
        what = (f"{pic['rows']} x {pic['cols']} grid" if pic["kind"] == "guided"
                else f"{pic['images']} images")
        base = b["runs"][0]
        by_kind = {r["sampler"]: r for r in o["runs"]}

        def st(r):
            how = ("measured" if r["exact"]
                   else f"est. from {r['timed_steps']} of {r['steps']} steps")
            return f"{_num(r['seconds'])} ({how}; {_num(r['step_ms']['median'])} ms/step)"
        for kind in ("ddim", "ddpm"):
            r = by_kind.get(kind)
            if r is None:
                continue
            label = (f"sample {what}: course DDPM T={base['steps']} fp32 vs ours DDIM "
                     f"{r['steps']}" if kind == "ddim" else
                     f"sample {what}: DDPM T={base['steps']}, course fp32 vs ours (precision "
                     "only)")
            prec = "bf16" if r["bf16"] else "fp32"
            rows.append(_row(lab, f"{label} [{prec}] (s)", "s", base["seconds"], r["seconds"],
                             st(base), st(r), estimated=not (base["exact"] and r["exact"])))
        rows.append(_row(lab, f"{mem_name}, sampling (MB)", "MB", b.get(mem_key), o.get(mem_key),
                         _num(b.get(mem_key, 0)), _num(o.get(mem_key, 0))))
    for (config, phase), res in results.items():
        if _failed(res):
            err = (res or {}).get("error", "not run").strip().splitlines()
            rows.append(_row(lab, f"{phase} ({config})", "", None, None, "failed", "failed",
                             note=err[0] if err else ""))
    return rows


CLIP_NOTE = ("flowers-clip: lab.dataset() needs CLIP; fixed random 512-d vectors stand in for "
             "the image and prompt encodings in both configurations (ours reads the same "
             "photos with our own flowers loader, load_flowers_tensors).")
NOTES = [
    "baseline = the course's way: fp32, eager, default memory format, plain torch.optim.Adam, "
    "a DataLoader(batch_size=B, shuffle=True, drop_last=True) transforming each item "
    "(Fashion-MNIST: PIL Resize(16), ToTensor, RandomHorizontalFlip, 2t-1 over train+test; "
    "flowers: pre-transformed once, per item RandomCrop(32) + RandomHorizontalFlip on the "
    "device), sampling with DDPM over all T steps in fp32. The course wraps its models in "
    "torch.compile; the baseline here is eager (--knobs measures compile).",
    "ours = labutils: Lab's model/optimizer (fused Adam on CUDA)/loss, BatchLoader over "
    "lab.dataset() with lab.augment(), labutils.training.train, bf16 autocast where "
    "use_bf16() says so; sampling with lab.sampler(50, 'ddim') and DDPM over all T steps.",
    "ratio = baseline / ours: above 1, ours is faster (or smaller).",
    "train step: one fixed batch, warm-up steps untimed, then timed steps (synchronized on "
    "CUDA); median [min-max]; img/s = batch / median. Epoch: K steps through the data path as "
    "one block, scaled to the epoch's steps (est.), or a whole epoch (--full-epoch).",
    "sampling: one untimed warm-up reverse step, then timed steps (a pre-forward hook; "
    "synchronized on CUDA); est. = their mean x all steps (--exact-sampling runs them all).",
    "arithmetic: the floating-point operations of one training step's forward and backward "
    "(torch.utils.flop_counter: matrix multiplies and convolutions, counted at batch 2 and 4 "
    "and extrapolated to the batch) over the median step time, against the machine's peak: "
    "the fastest of repeated n x n matrix multiplies in the step's precision (fp32; bf16 where "
    "native). Near 100%, only less arithmetic or faster hardware makes the step faster.",
    "each (lab, configuration, training | sampling) ran in its own spawned process: peak "
    "memory is its own (RSS: ru_maxrss; GPU: torch.cuda.max_memory_allocated).",
]


def render_markdown(report: Dict) -> str:
    h = report["header"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in h["cpu_flags"].items())
    lines = [f"# labutils bench ({h['date']})", "",
             f"- device: {h['device']} ({h['device_name']})" +
             (f", CPU {h['cpu']}" if h["device"].startswith("cuda") else ""),
             f"- torch {h['torch']}, Python {h['python']}",
             f"- threads: {h['threads']} ({h['threads_reason']})",
             f"- CPU flags: {flags}; native bf16: {'yes' if h['native_bf16'] else 'no'}; "
             f"ours uses bf16: {'yes' if h['ours_bf16'] else 'no'}",
             *([f"- measured peak: {peak_text(report['peak'])}"]
               if not _failed(report.get("peak")) else []),
             f"- command: `{h['command']}`" + ("  (smoke: tiny sizes, numbers mean nothing)"
                                               if report["options"]["smoke"] else ""),
             "", "| lab | measure | baseline (course) | ours | baseline/ours |",
             "|---|---|---|---|---|"]
    for r in report["rows"]:
        ratio = f"**{r['ratio']:.2f}x**" if r["ratio"] else "-"
        measure = r["measure"] + (f" ({r['note']})" if r["note"] else "")
        lines.append(f"| {r['lab']} | {measure} | {r['baseline_text']} | {r['ours_text']} "
                     f"| {ratio} |")
    lines += ["", "Plans (per lab): " + "; ".join(
        f"{lab}: batch {p['batch']}, {p['warmup']} warm-up + {p['reps']} timed steps, "
        f"K = {p['epoch_steps'] or 'a whole epoch'}, sampling "
        f"{'all steps' if p['sample_steps'] is None else str(p['sample_steps']) + ' timed steps'}"
        for lab, p in report["plans"].items()), "", "Notes:", ""]
    lines += [f"- {n}" for n in NOTES + report.get("notes", [])]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: Dict) -> None:
    """``bench.json`` (everything measured) and ``bench.md`` (the table), each written whole."""
    from ..files import write_text_atomic
    write_text_atomic(out / "bench.json", json.dumps(report, indent=2, default=str))
    write_text_atomic(out / "bench.md", render_markdown(report))
