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
@click.option("--detector", "which", type=click.Choice(["prismops", "threshold", "both"]), default="both", show_default=True,
              help="prismops: the seasonal online detector; threshold: the naive fixed-threshold baseline")
@click.option("--min-severity", type=click.Choice(_SEVERITIES), default="warning", show_default=True,
              help="the least severity of a prismops result that counts as a detection")
@click.option("--threshold-k", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="the baseline fires above mean + k·std of the probationary period")
@FORMAT_OPTION
def evaluate_command(directory: Path, which: str, min_severity: str, threshold_k: float, fmt: str) -> None:
    """Print the NAB standard-profile score, precision and recall per file and overall.

    DIRECTORY holds `*.csv` files (timestamp,value) and combined_windows.json, as `detectors generate`
    writes them. Detections are scored as given (no threshold optimisation): see detectors/nab.py.
    """
    from prismops.detectors.evaluation import evaluate
    from prismops.detectors.nab import read_corpus
    from prismops.errors import FieldRuleError

    if not directory.is_dir():
        fail(f"{directory} is not a directory")
    names = ["prismops", "threshold"] if which == "both" else [which]
    try:
        corpus = read_corpus(directory)
        scores = evaluate(corpus, names, min_severity=min_severity, threshold_k=threshold_k,  # type: ignore[arg-type]
                          on_file=lambda name, path: stderr_console.print(f"{name}: {path}", style="dim", highlight=False))
    except FieldRuleError as exc:
        fail(str(exc))
    if fmt == "json":
        emit_json({
            "profile": "standard", "min_severity": min_severity, "threshold_k": threshold_k, "files": len(corpus),
            "detectors": {name: {"overall": _score_row(name, "(overall)", score),
                                 "files": [_score_row(name, f.relative_path, f) for f in score.files]}
                          for name, score in scores.items()},
        })
        return
    rows = [_score_row(name, f.relative_path, f) for name, score in scores.items() for f in score.files]
    rows += [_score_row(name, "(overall)", score) for name, score in scores.items()]
    note = f"; prismops detects at >= {min_severity}" if "prismops" in names else ""
    emit_table(rows, title=f"NAB standard profile, {len(corpus)} files{note}")


@command.command("generate")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--seed", type=int, required=True, help="the same seed writes the same files")
@click.option("--files-per-category", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--points", type=click.IntRange(min=100), default=2016, show_default=True)
@click.option("--interval-s", type=click.IntRange(min=1), default=600, show_default=True)
@FORMAT_OPTION
def generate_command(directory: Path, seed: int, files_per_category: int, points: int, interval_s: int, fmt: str) -> None:
    """Write labelled synthetic cost series (spikes, level shifts, drifts, none) in NAB format into DIRECTORY."""
    from prismops.detectors.synthetic import generate_corpus
    from prismops.errors import FieldRuleError

    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        fail(f"{directory} exists and is not an empty directory; choose a new one")
    try:
        corpus = generate_corpus(directory, seed, files_per_category, points, interval_s)
    except FieldRuleError as exc:
        fail(str(exc))
    rows = [{"file": s.relative_path, "points": len(s.values), "anomalies": ", ".join(a.kind for a in s.anomalies) or "-",
             "windows": len(s.windows)} for s in corpus]
    if fmt == "json":
        emit_json({"directory": directory, "seed": seed, "files": rows})
    else:
        emit_table(rows, title=f"{len(rows)} labelled series in {directory} (seed {seed})")
