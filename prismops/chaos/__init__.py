"""`prismops chaos`: named fault scenarios against a stack of the harness's own, each checked for lost,
duplicated and mispriced events, budget totals, dead letters and personal data at rest.

- `harness`: the chaos stack (own home, ports and namespaces), paced traffic, measurements
- `verdict`: expectations and results, plain data
- `scenarios`: kill-worker, kill-sink, kill-gateway, broker-down, clickhouse-stop, clickhouse-kill, fuzz,
  rebalance, namespaces (and cluster, a 3-broker KRaft cluster)
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from prismops.chaos.harness import ChaosStack
from prismops.chaos.scenarios import SCENARIOS, ChaosOptions
from prismops.chaos.verdict import ScenarioResult
from prismops.settings import Settings

__all__ = ["SCENARIOS", "ChaosOptions", "ScenarioResult", "run_scenarios"]


def run_scenarios(base: Settings, names: Sequence[str], options: ChaosOptions, progress: Callable[[str], None],
                  *, keep: bool = False) -> list[ScenarioResult]:
    """Start a chaos stack, run the named scenarios one after another on it, stop it; the results in order."""
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    root = Path(base.stack.home).expanduser().resolve() / "chaos"
    root.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix=f"{dt.datetime.now():%Y%m%d-%H%M%S}-", dir=root))
    logs = home / "logs" / "components"
    results = []
    progress(f"starting the chaos stack under {home}…")
    with ChaosStack(base, home, progress, keep=keep) as chaos:
        try:
            for name in names:
                progress(f"scenario {name}…")
                results.append(SCENARIOS[name](chaos, logs, options, progress))
                if not results[-1].passed:
                    chaos.keep = True  # the logs say why
                    progress(f"scenario {name} FAILED: {'; '.join(results[-1].failures())} (logs in {logs / name})")
                else:
                    progress(f"scenario {name} passed")
        except BaseException:
            chaos.keep = True
            progress(f"component and server logs kept in {home}")
            raise
    return results
