"""`prismops detectors`: score the anomaly detectors on NAB-format data, and write labelled synthetic series."""

from __future__ import annotations

from pathlib import Path

import click

from prismops.cli.output import FORMAT_OPTION, emit_json, emit_table, fail, stderr_console

_SEVERITIES = ("info", "warning", "critical")


@click.group("detectors")
def command() -> None:
    """Anomaly detectors: evaluate them on a Numenta Anomaly Benchmark corpus, generate one to evaluate on."""


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _g(value: float) -> float:
    """A grid threshold as printed: 3 significant digits (3e-05, not 3.0000000000000004e-05)."""
    return float(f"{value:.3g}")


def _score_row(detector: str, file: str, score) -> dict:  # type: ignore[no-untyped-def]
    normalized = score.normalized
    return {
        "detector": detector, "file": file, "nab_score": None if normalized is None else round(normalized, 2),
        "precision_pct": _percent(score.precision), "recall_pct": _percent(score.recall),
        "tp": score.true_positives, "fp": score.false_positives, "fn": score.false_negatives,
    }


@command.command("eval")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--detector", "which", type=click.Choice(["prismops", "legacy", "threshold", "both", "all"]), default="both",
              show_default=True,
              help="prismops: the calibrated online detector; legacy: the detector before issue 15 (before/after); "
                   "threshold: the naive fixed-threshold baseline; both: prismops + threshold; all: the three")
@click.option("--min-severity", type=click.Choice(_SEVERITIES), default="warning", show_default=True,
              help="the least severity of a prismops result that counts as a detection")
@click.option("--threshold-k", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="the baseline fires above mean + k·std of the probationary period")
@click.option("--per-file/--no-per-file", default=True, show_default=True, help="list every file in the table")
@click.option("--sweep/--no-sweep", default=True, show_default=True,
              help="also run prismops and the threshold baseline over a grid of thresholds and report each profile's "
                   "best score (NAB's reference protocol) beside the operating point we ship")
@FORMAT_OPTION
def evaluate_command(directory: Path, which: str, min_severity: str, threshold_k: float, per_file: bool, sweep: bool,
                     fmt: str) -> None:
    """Print NAB scores (standard, reward_low_fp, reward_low_fn), per category and per file, and false alerts
    per 10,000 points on files without anomalies.

    DIRECTORY holds `*.csv` files (timestamp,value) and combined_windows.json, as `detectors generate`
    writes them. Timestamps that repeat or go back are sorted and merged with a warning on stderr.
    The main tables score the operating point we ship (prismops: the default severity ladder, warning p <= 1e-5;
    threshold: --threshold-k). With --sweep (default) prismops is also run with its whole severity ladder moved
    by each factor of a grid (reported as the warning tail probability p) and the baseline with each k of a grid;
    the best score of every profile over the grid is NAB's reference protocol (detectors/evaluation.py).
    """
    from prismops.detectors.evaluation import SWEPT_DETECTORS, evaluate_report, sweep_report
    from prismops.detectors.nab import read_corpus
    from prismops.errors import FieldRuleError

    if not directory.is_dir():
        fail(f"{directory} is not a directory")
    names = {"both": ["prismops", "threshold"], "all": ["prismops", "legacy", "threshold"]}.get(which, [which])
    try:
        corpus = read_corpus(directory)
        for series in corpus:
            for warning in series.warnings:
                stderr_console.print(f"warning: {warning}", style="yellow", highlight=False)
        reports = evaluate_report(corpus, names, min_severity=min_severity, threshold_k=threshold_k,  # type: ignore[arg-type]
                                  on_file=lambda name, path: stderr_console.print(f"{name}: {path}", style="dim", highlight=False))
        sweeps = {name: sweep_report(corpus, name, min_severity=min_severity, threshold_k=threshold_k,  # type: ignore[arg-type]
                                     shipped=reports[name],
                                     on_point=lambda n, t: stderr_console.print(f"sweep {n}: {t:g}", style="dim", highlight=False))
                  for name in names if sweep and name in SWEPT_DETECTORS}
    except FieldRuleError as exc:
        fail(str(exc))

    def sweep_rows(name: str) -> list[dict]:
        result = sweeps[name]
        return [{"detector": name, result.parameter: _g(point.threshold), "shipped": point.shipped,
                 **{p: None if s.normalized is None else round(s.normalized, 2) for p, s in point.report.profiles.items()},
                 "anomaly_free_false_alerts": point.report.clean_false_alerts,
                 "anomaly_free_per_10k_points": false_alerts(point.report)["per_10k_points"]} for point in result.points]

    def best_rows(name: str) -> list[dict]:
        result = sweeps[name]
        rows = []
        for profile in result.points[0].report.profiles:
            best, shipped = result.best(profile), result.shipped
            rows.append({"detector": name, "profile": profile, "parameter": result.parameter,
                         "best_score": _round(best.report.profiles[profile].normalized), "best_at": _g(best.threshold),
                         "shipped_score": None if shipped is None else _round(shipped.report.profiles[profile].normalized),
                         "shipped_at": None if shipped is None else _g(shipped.threshold)})
        return rows

    def false_alerts(report) -> dict:  # type: ignore[no-untyped-def]
        rate = report.false_alerts_per_10k
        return {"clean_points": report.clean_points, "false_alerts": report.clean_false_alerts,
                "per_10k_points": None if rate is None else round(rate, 2)}

    if fmt == "json":
        emit_json({
            "profile": "standard", "min_severity": min_severity, "threshold_k": threshold_k, "files": len(corpus),
            "warnings": [w for series in corpus for w in series.warnings],
            "detectors": {name: {
                "overall": _score_row(name, "(overall)", report.profiles["standard"]),
                "profiles": {p: _score_row(name, "(overall)", score) for p, score in report.profiles.items()},
                "categories": {c: _score_row(name, c, score) for c, score in report.categories.items()},
                "false_alerts_anomaly_free": false_alerts(report),
                "files": [_score_row(name, f.relative_path, f) for f in report.profiles["standard"].files],
                **({"operating_point": {sweeps[name].parameter: _g(sweeps[name].shipped.threshold),  # type: ignore[union-attr]
                                        "profiles": {r["profile"]: r["shipped_score"] for r in best_rows(name)},
                                        "false_alerts_anomaly_free": false_alerts(report)},
                    "sweep": {"parameter": sweeps[name].parameter, "points": sweep_rows(name),
                              "best": {r["profile"]: {sweeps[name].parameter: r["best_at"],
                                                      "nab_score": r["best_score"]} for r in best_rows(name)}}}
                   if name in sweeps else {})}
                for name, report in reports.items()},
        })
        return
    note = f"; prismops detects at >= {min_severity}" if "prismops" in names else ""
    if per_file:
        rows = [_score_row(name, f.relative_path, f) for name, r in reports.items() for f in r.profiles["standard"].files]
        rows += [_score_row(name, "(overall)", r.profiles["standard"]) for name, r in reports.items()]
        emit_table(rows, title=f"NAB standard profile, {len(corpus)} files{note}")
    emit_table([_score_row(name, c, score) for name, r in reports.items() for c, score in r.categories.items()],
               title="per category, NAB standard profile")
    emit_table([{"detector": name, **{p: None if s.normalized is None else round(s.normalized, 2) for p, s in r.profiles.items()},
                 **{f"anomaly_free_{k}": v for k, v in false_alerts(r).items()}} for name, r in reports.items()],
               title=f"overall (operating point we ship): NAB profiles and false alerts on anomaly-free files{note}")
    for name in sweeps:
        emit_table(sweep_rows(name), title=f"threshold sweep, {name} ({sweeps[name].parameter}; shipped = our operating point)")
    if sweeps:
        emit_table([row for name in sweeps for row in best_rows(name)],
                   title="NAB reference protocol: best score per profile over the grid, beside the shipped operating point")


@command.command("generate")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--seed", type=int, required=True, help="the same seed writes the same files")
@click.option("--files-per-category", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--points", type=click.IntRange(min=100), default=2016, show_default=True)
@click.option("--interval-s", type=click.IntRange(min=1), default=600, show_default=True)
@click.option("--category", "categories", multiple=True, help="only these categories (repeatable); default: all")
@FORMAT_OPTION
def generate_command(directory: Path, seed: int, files_per_category: int, points: int, interval_s: int,
                     categories: tuple[str, ...], fmt: str) -> None:
    """Write labelled synthetic cost series in NAB format into DIRECTORY: spikes, level shifts, drifts, none, and the
    issue-15 phenomena (bursts, 09:00/18:00 steps, sparse quantized, an HH:09 sub-hourly job, and anomaly-free twins)."""
    from prismops.detectors.synthetic import CATEGORIES, generate_corpus
    from prismops.errors import FieldRuleError

    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        fail(f"{directory} exists and is not an empty directory; choose a new one")
    try:
        unknown = [c for c in categories if c not in CATEGORIES]
        if unknown:
            fail(f"unknown category {', '.join(unknown)}; known: {', '.join(CATEGORIES)}")
        corpus = generate_corpus(directory, seed, files_per_category, points, interval_s, tuple(categories) or CATEGORIES)
    except FieldRuleError as exc:
        fail(str(exc))
    rows = [{"file": s.relative_path, "points": len(s.values), "anomalies": ", ".join(a.kind for a in s.anomalies) or "-",
             "windows": len(s.windows)} for s in corpus]
    if fmt == "json":
        emit_json({"directory": directory, "seed": seed, "files": rows})
    else:
        emit_table(rows, title=f"{len(rows)} labelled series in {directory} (seed {seed})")


@command.command("rca-eval")
@click.option("--seed", type=int, default=15, show_default=True, help="the same seed gives the same cost cubes")
@click.option("--cases", type=click.IntRange(min=1), default=300, show_default=True,
              help="anomalous windows (cost cubes with 1 or 2 injected root causes)")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="predictions kept per case")
@click.option("--baseline-windows", type=click.IntRange(min=1), default=12, show_default=True,
              help="windows the baseline covers (scaled to one window)")
@click.option("--explainer", "explainers", type=click.Choice(["prismops", "largest_delta"]), multiple=True,
              help="prismops: detectors/rca.py; largest_delta: the naive largest-change ranking (repeatable; default both)")
@FORMAT_OPTION
def rca_eval_command(seed: int, cases: int, top: int, baseline_windows: int, explainers: tuple[str, ...], fmt: str) -> None:
    """F1 of the top-N root-cause hints on seeded multi-dimensional cost cubes with injected root causes (one or two
    (dimension, value) pairs: a model_version, a deployment, a feature...; increases, new values and decreases).
    Micro precision/recall/F1 over cases, per case kind and cause count: see detectors/rca_eval.py."""
    from prismops.detectors.rca_eval import CAUSE_KINDS, EXPLAINERS, generate_cases, score_rca
    from prismops.errors import FieldRuleError

    try:
        generated = generate_cases(seed, cases, baseline_windows)
    except FieldRuleError as exc:
        fail(str(exc))

    def row(name: str, group: str, subset) -> dict:  # type: ignore[no-untyped-def]
        score = score_rca(subset, EXPLAINERS[name](top), top)
        return {"explainer": name, "cases": group, "count": len(subset), "f1_pct": _percent(score.f1),
                "precision_pct": _percent(score.precision), "recall_pct": _percent(score.recall),
                "mean_case_f1_pct": _percent(score.mean_case_f1), f"hit_at_{top}_pct": _percent(score.hit_rate),
                "tp": score.true_positives, "fp": score.false_positives, "fn": score.false_negatives}

    rows = []
    for name in explainers or ("prismops", "largest_delta"):
        rows.append(row(name, "(all)", generated))
        for kind in CAUSE_KINDS:
            for count in (1, 2):
                subset = [c for c in generated if c.kind == kind and len(c.causes) == count]
                if subset:
                    rows.append(row(name, f"{kind}, {count} cause{'s' if count > 1 else ''}", subset))
    if fmt == "json":
        emit_json({"seed": seed, "cases": cases, "top": top, "baseline_windows": baseline_windows, "rows": rows})
    else:
        emit_table(rows, title=f"RCA top-{top} on {cases} cost cubes with injected root causes (seed {seed})")
