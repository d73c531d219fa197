"""`trainguard anomaly detect|eval|fit|score`: run the anomaly detectors on files.

* ``detect CSV``: ``timestamp,value`` in (NAB layout), ``timestamp,value,score,alert`` out, one
  row per input row, each decision from earlier rows only. The default text format *is* that
  CSV; ``--format json`` gives a JSON object with the rows and a summary. Exit 1 when any row
  alerts. Input that is not a NAB CSV (header, first row, empty input) leaves stdout empty
  (exit 2); a bad row further down stops with exit 2 after the rows before it were streamed, and
  the error says how many (JSON output is all or nothing).
* ``eval --nab DIR``: the selected detector's NAB standard score and event-level precision,
  recall, false-positive rows and F1 per category and pooled, next to the published detectors'
  numbers when DIR holds NAB's ``results/`` and ``config/thresholds.json``; ``--select`` runs
  the selection protocol instead (leave one category out, leave one file out, worst held-out
  fold; see trainguard.anomaly.selection) and prints its table; ``--gpu`` adds the synthetic
  GPU-misuse evaluation.
* ``fit CSV --out MODEL.skops`` / ``score CSV --model MODEL.skops``: IsolationForest on windowed
  features of a multivariate CSV (exit 1 when a row alerts).

scikit-learn and skops are imported inside the handlers only (the agent package rule).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainguard.anomaly.config import AnomalyConfig
from trainguard.cli.context import Context
from trainguard.core.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("anomaly", help="anomaly detection on metric files",
                       description="Run trainguard's anomaly detectors on files.")
    inner = p.add_subparsers(dest="anomaly_command", metavar="COMMAND")
    d = inner.add_parser(
        "detect", help="score a timestamp,value CSV (NAB layout) row by row",
        description="Write timestamp,value,score,alert for every input row; each decision uses "
        "only earlier rows. Text output is CSV, streamed row by row; --format json for JSON. "
        "Exit 1 if any alert, 2 on bad input: nothing is written when the header or first row is "
        "wrong; a bad row later stops the output there (the error says how many rows came "
        "before it).",
    )
    d.add_argument("csv", metavar="CSV", help="input file, - for stdin")
    d.add_argument("--threshold", type=float, help="alert threshold in (0, 1)")
    d.set_defaults(func=detect)
    e = inner.add_parser(
        "eval", help="NAB score and event metrics of the default detector",
        description="Run the selected streaming detector over a NAB-layout folder "
        "(data/<category>/*.csv, labels/combined_windows.json) and report the NAB standard "
        "score and event-level precision, recall, false-positive rows and F1 per category and "
        "pooled, with the published detectors' numbers when the folder has NAB's results/. "
        "--select runs the selection protocol over every candidate instead (minutes).",
    )
    e.add_argument("--nab", type=Path, metavar="DIR", help="NAB-layout folder")
    e.add_argument("--select", action="store_true",
                   help="leave-one-category-out and leave-one-file-out selection over the "
                   "candidate detectors; prints the per-fold table")
    e.add_argument("--gpu", action="store_true",
                   help="also run the synthetic GPU-misuse evaluation")
    e.set_defaults(func=evaluate)
    f = inner.add_parser("fit", help="fit an IsolationForest on a baseline CSV",
                         description="Fit an IsolationForest on windowed features of a numeric "
                         "CSV (a baseline period) and save it with skops.")
    f.add_argument("csv", type=Path, metavar="CSV", help="baseline rows (timestamp plus metric columns)")
    f.add_argument("--out", type=Path, required=True, metavar="MODEL.skops", help="where to save the model")
    f.add_argument("--columns", help="comma-separated columns (default: all but timestamp)")
    f.add_argument("--target-fpr", type=float, help="false-positive rate on the baseline")
    f.add_argument("--window", type=int, help="rows per windowed feature")
    f.set_defaults(func=fit)
    s = inner.add_parser("score", help="score a CSV with a fitted model",
                         description="Score every row of a numeric CSV with a model from "
                         "`anomaly fit` (loaded through skops' trusted-types check).")
    s.add_argument("csv", type=Path, metavar="CSV", help="rows to score (the model's columns)")
    s.add_argument("--model", type=Path, required=True, metavar="MODEL.skops", help="a model from `anomaly fit`")
    s.set_defaults(func=score)
    p.set_defaults(func=lambda args, ctx: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _anomaly_config(ctx: Context) -> AnomalyConfig:
    return ctx.config.section(AnomalyConfig)


def detect(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.anomaly.config import selected_detector
    from trainguard.anomaly.evaluate import detect_rows

    spec = selected_detector()
    threshold = spec.threshold
    if args.threshold is not None:
        if not 0.0 < args.threshold < 1.0:
            raise UsageError(
                f"--threshold must be in (0, 1), not {args.threshold}", tip="try --threshold 0.5"
            )
        threshold = args.threshold
    path = args.csv
    if path != "-" and not Path(path).is_file():
        raise UsageError(f"no such file: {path}", tip="give a timestamp,value CSV or - for stdin")
    try:
        fh = sys.stdin if path == "-" else open(path, newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}",
                         tip="give a readable timestamp,value CSV or - for stdin") from exc
    try:
        rows = _checked(detect_rows(fh, spec, threshold=threshold))
        alerts = (_detect_json(rows, threshold, ctx) if ctx.json
                  else _detect_csv(rows, threshold, ctx))
    finally:
        if fh is not sys.stdin:
            fh.close()
    return 1 if alerts else 0


_ROW_TIP = "NAB layout: a `timestamp,value` header, then one timestamp and one number per line"


def _checked(rows: Iterator[Any]) -> Iterator[Any]:
    """`rows`, with undecodable or non-CSV input turned into usage errors that carry a tip."""
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except UsageError as exc:
            raise UsageError(exc.message, tip=exc.tip or _ROW_TIP) from exc
        except (UnicodeDecodeError, csv.Error) as exc:
            raise UsageError(f"the input is not a text CSV file ({exc})", tip=_ROW_TIP) from exc
        yield row


def _detect_json(rows: Iterator[Any], threshold: float, ctx: Context) -> int:
    out = [{"timestamp": r.timestamp, "value": r.value, "score": round(r.score, 6),
            "alert": int(r.alert)} for r in rows]  # all rows first: one JSON document or none
    alerts = sum(int(r["alert"]) for r in out)
    ctx.emit({"threshold": threshold, "rows": len(out), "alerts": alerts, "data": out})
    return alerts


def _detect_csv(rows: Iterator[Any], threshold: float, ctx: Context) -> int:
    """Stream the CSV (a live feed piped in gets each decision at once), but only after the
    header and first row were read: input that is not a NAB CSV leaves stdout empty. A bad row
    later on stops with exit 2 and says how many rows were already written."""
    first = next(rows, None)
    writer = csv.writer(ctx.stdout, lineterminator="\n")
    writer.writerow(["timestamp", "value", "score", "alert"])
    alerts = written = 0
    pending = [first] if first is not None else []
    try:
        for r in itertools.chain(pending, rows):
            writer.writerow([r.timestamp, repr(r.value), f"{r.score:.6f}", int(r.alert)])
            alerts += r.alert
            written += 1
    except UsageError as exc:
        ctx.stdout.flush()
        raise UsageError(
            f"{exc.message} (the {written} rows before it are already on stdout; "
            "treat that output as incomplete)",
            tip=exc.tip,
        ) from exc
    ctx.stdout.flush()
    ctx.info(f"{written} rows, {alerts} alerts (threshold {threshold})")
    return alerts


def evaluate(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.anomaly.evaluate import evaluate_nab

    if args.nab is None and not args.gpu:
        raise UsageError("nothing to evaluate", tip="give --nab DIR and/or --gpu")
    if args.select and args.nab is None:
        raise UsageError("--select needs a NAB-layout folder", tip="give --nab DIR --select")
    acfg = _anomaly_config(ctx)
    data: dict[str, Any] = {}
    if args.nab is not None and args.select:
        data["selection"] = _select(args.nab, ctx)
    elif args.nab is not None:
        data["nab"] = evaluate_nab(args.nab)
    if args.gpu:
        from trainguard.anomaly.gpu_eval import evaluate as gpu_evaluate

        data["gpu_misuse"] = gpu_evaluate(target_fpr=acfg.target_fpr, config=acfg).as_dict()
    ctx.emit(data, _eval_text)
    return 0


def _select(root: Path, ctx: Context) -> dict[str, Any]:
    from trainguard.anomaly.evaluate import load_nab_folder
    from trainguard.anomaly.reference import load_references
    from trainguard.anomaly.selection import select

    files = load_nab_folder(root)
    report = select(files, references=load_references(root, files), progress=ctx.info)
    return report.as_dict()


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def _nab_lines(nab: dict[str, Any]) -> list[str]:
    lines = [f"NAB standard profile, detector {nab['detector']} (alert threshold "
             f"{nab['threshold']}):",
             f"{'detector':<18} {'category':<22} {'files':>5} {'win':>4} {'NAB':>6} {'NAB@thr':>7} "
             f"{'found':>5} {'FP rows':>7} {'prec':>5} {'recall':>6} {'F1':>5}"]
    rows = [("selected", nab)] + list(nab.get("references", {}).items())
    for det, res in rows:
        for name, g in {**res["categories"], "pooled": res["total"]}.items():
            lines.append(
                f"{det:<18} {name:<22} {g['files']:>5} {g['windows']:>4} "
                f"{_fmt(g['nab_score']):>6} {_fmt(g['nab_score_at_threshold']):>7} "
                f"{g['detected']:>5} {g['fp_rows']:>7} {_fmt(g['precision'], '.2f'):>5} "
                f"{_fmt(g['recall'], '.2f'):>6} {_fmt(g['f1'], '.2f'):>5}"
            )
    lines.append("NAB: threshold optimised over the group as NAB does (published detectors: "
                 "their standard-profile threshold); the rest at the alert threshold. "
                 "Groups without windows have no NAB score or F1: judge them by FP rows.")
    return lines


def _fold(f: dict[str, Any]) -> str:
    if not f["windows"]:
        return f"FP {f['fp_rows']}"
    return f"{_fmt(f['nab'])}/{_fmt(f['f1'], '.2f')} ({f['detected']}/{f['windows']}, FP {f['fp_rows']})"


def _selection_lines(sel: dict[str, Any]) -> list[str]:
    first = (sel["candidates"] or sel["references"])[0]
    loco = [f["group"] for f in first["loco"]]
    lofo = [f["group"] for f in first["lofo"]]
    head = ["detector", "objective", "5us", "thr"] + [f"LOCO {g}" for g in loco] + [
        f"LOFO {g}" for g in lofo]
    lines = [f"Selection: {sel['protocol']}", "cells: NAB / event F1 (windows found / windows, "
             "FP rows); groups without windows: FP rows", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for c in sel["candidates"] + sel["references"]:
        budget = "-" if c["objective"] is None else ("yes" if c["within_latency_budget"] else "no")
        cells = [c["name"], _fmt(c["objective"], ".3f"), budget, f"{c['threshold']:.3f}"]
        cells += [_fold(f) for f in c["loco"]] + [_fold(f) for f in c["lofo"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"chosen (best within the latency budget): {sel['chosen']['name']} at "
                 f"threshold {sel['chosen']['threshold']}; best overall: "
                 f"{sel['best_overall']['name']} at {sel['best_overall']['threshold']}")
    return lines


def _eval_text(data: dict[str, Any]) -> str:
    lines = []
    if "nab" in data:
        lines += _nab_lines(data["nab"])
    if "selection" in data:
        lines += _selection_lines(data["selection"])
    if "gpu_misuse" in data:
        g = data["gpu_misuse"]
        lines.append(
            f"GPU misuse (synthetic, {g['test_traces']} test traces): detection "
            f"{g['detection_rate']:.1%} at false-positive rate {g['false_positive_rate']:.1%} "
            f"(calibrated to {g['target_fpr']:.1%})"
        )
        for kind, rate in g["flagged_rate_by_kind"].items():
            lines.append(f"  {kind:<18} flagged {rate:.1%}")
    return "\n".join(lines)


def fit(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.anomaly.evaluate import read_table
    from trainguard.anomaly.learned import fit_detector, save_detector

    acfg = _anomaly_config(ctx)
    if not args.csv.is_file():
        raise UsageError(f"no such file: {args.csv}", tip=_FIT_TIP)
    _check_model_out(args.out)  # before fitting: a wrong --out should not cost a whole fit
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    try:
        names, data = read_table(args.csv, columns)
        det = fit_detector(
            data, names, window=args.window or acfg.window,
            target_fpr=args.target_fpr if args.target_fpr is not None else acfg.target_fpr,
            n_estimators=acfg.n_estimators, max_samples=acfg.max_samples,
        )
    except UsageError as exc:
        raise UsageError(exc.message, tip=exc.tip or _FIT_TIP) from exc
    try:
        save_detector(det, args.out)
    except OSError as exc:
        raise UsageError(f"cannot write the model to {args.out}: {exc.strerror or exc}",
                         tip="choose a writable --out file") from exc
    result = {"model": str(args.out), "rows": len(data), "columns": names,
              "window": det.window, "target_fpr": det.target_fpr, "threshold": det.threshold}
    ctx.emit(result, lambda d: f"fitted on {d['rows']} rows x {len(d['columns'])} columns; "
             f"threshold {d['threshold']:.4f} for FPR {d['target_fpr']}; saved {d['model']}")
    return 0


_FIT_TIP = ("give a numeric CSV of a baseline period: a header, then at least 10 rows "
            "(a timestamp column is ignored)")


def _check_model_out(out: Path) -> None:
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory", tip="give a file name, e.g. model.skops")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist",
                         tip="create the folder first or choose another --out")


def score(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.anomaly.evaluate import read_table
    from trainguard.anomaly.learned import load_detector

    if not args.csv.is_file():  # the input first: a typo there is the cheaper mistake to name
        raise UsageError(f"no such file: {args.csv}", tip="give a numeric CSV to score")
    try:
        det = load_detector(args.model)
    except UsageError as exc:
        raise UsageError(exc.message, tip=exc.tip or "pass a model written by `trainguard "
                         "anomaly fit` (a .skops file)") from exc
    try:
        _, data = read_table(args.csv, det.columns)
    except UsageError as exc:
        raise UsageError(exc.message, tip=exc.tip or _FIT_TIP) from exc
    scores = det.scores(data)
    alerts = scores > det.threshold
    rows = [{"row": i, "score": round(float(s), 6), "alert": int(a)}
            for i, (s, a) in enumerate(zip(scores, alerts, strict=True))]
    ctx.emit(
        {"model": str(args.model), "threshold": det.threshold, "rows": len(rows),
         "alerts": int(alerts.sum()), "data": rows},
        lambda d: "row,score,alert\n" + "\n".join(
            f"{r['row']},{r['score']},{r['alert']}" for r in d["data"]),
    )
    return 1 if alerts.any() else 0
