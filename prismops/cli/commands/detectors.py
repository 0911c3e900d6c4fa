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
@FORMAT_OPTION
def evaluate_command(directory: Path, which: str, min_severity: str, threshold_k: float, per_file: bool, fmt: str) -> None:
    """Print NAB scores (standard, reward_low_fp, reward_low_fn), per category and per file, and false alerts
    per 10,000 points on files without anomalies.

    DIRECTORY holds `*.csv` files (timestamp,value) and combined_windows.json, as `detectors generate`
    writes them. Timestamps that repeat or go back are sorted and merged with a warning on stderr.
    Detections are scored as given (no threshold optimisation): see detectors/nab.py.
    """
    from prismops.detectors.evaluation import evaluate_report
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
    except FieldRuleError as exc:
        fail(str(exc))

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
                "files": [_score_row(name, f.relative_path, f) for f in report.profiles["standard"].files]}
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
               title=f"overall: NAB profiles and false alerts on anomaly-free files{note}")


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
