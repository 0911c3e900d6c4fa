"""`prismops collect dcgm|slurm|k8s` (to a JSON-lines file) and `prismops recommend gpu`, without a stack."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from prismops.cli.app import main
from prismops.settings import Settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), obj=Settings())


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_collect_slurm_once_then_resume_from_the_cursor(tmp_path):
    out, cursor = tmp_path / "events.jsonl", tmp_path / "cursor.json"
    common = ["collect", "slurm", "--cluster", "hpc1", "--input", str(FIXTURES / "slurm" / "sacct.json"),
              "--cursor", str(cursor), "--output", str(out), "--since", "2026-12-05T10:00:00", "--format", "json"]
    first = invoke(*common, "--until", "2026-12-05T11:30:00")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["windows"] == 1
    assert json.loads(cursor.read_text())["window_end"] == "2026-12-05T11:00:00+00:00"
    second = invoke(*common, "--until", "2026-12-05T12:10:00")
    assert second.exit_code == 0, second.output
    document = json.loads(second.stdout)
    assert document["windows"] == 1 and document["first_window"] == "2026-12-05T11:00:00+00:00"
    events = lines(out)
    assert len({e["event_id"] for e in events}) == len(events)  # no window twice
    assert sum(Decimal(e["requested_gpu_seconds"]) for e in events if e["job"] == "48213") == 4 * 5400


def test_collect_dcgm_and_k8s_from_files_with_a_table(tmp_path):
    out = tmp_path / "dcgm.jsonl"
    result = invoke("collect", "dcgm", "--cluster", "prod", "--metrics-file", str(FIXTURES / "dcgm" / "metrics.txt"),
                    "--cursor", str(tmp_path / "c1.json"), "--output", str(out), "--since", "2026-12-05T10:00:00",
                    "--until", "2026-12-05T11:00:00")
    assert result.exit_code == 0, result.output
    assert "collect dcgm" in result.stdout and len(lines(out)) == 3
    out = tmp_path / "k8s.jsonl"
    result = invoke("collect", "k8s", "--cluster", "prod", "--pods", str(FIXTURES / "k8s" / "podlist.json"),
                    "--metrics-file", str(FIXTURES / "dcgm" / "metrics.txt"), "--cursor", str(tmp_path / "c2.json"),
                    "--output", str(out), "--since", "2026-12-05T10:00:00", "--until", "2026-12-05T11:00:00")
    assert result.exit_code == 0, result.output
    assert {e["tenant"] for e in lines(out)} == {"acme", "globex", "inference"}
    assert "notebook-dave" in result.stderr  # requests GPUs, no DCGM series


def test_collect_bad_input_fails_on_stderr_naming_field_and_rule(tmp_path):
    bad = tmp_path / "sacct.json"
    bad.write_text(json.dumps({"jobs": [{"job_id": 1, "time": {"start": "noon"}}]}))
    cursor = tmp_path / "cursor.json"
    result = invoke("collect", "slurm", "--cluster", "hpc1", "--input", str(bad), "--cursor", str(cursor),
                    "--output", str(tmp_path / "o.jsonl"), "--since", "2026-12-05T10:00:00", "--until", "2026-12-05T11:00:00")
    assert result.exit_code == 1
    assert "jobs[0].time.start" in result.stderr and "[epoch_seconds]" in result.stderr
    assert "Traceback" not in result.output and not cursor.exists()


def test_collect_refuses_a_window_longer_than_attribution():
    result = invoke("collect", "slurm", "--cluster", "c", "--window-s", "7200", "--input", str(FIXTURES / "slurm" / "sacct.json"))
    assert result.exit_code == 1 and "--window-s" in result.stderr


def test_recommend_gpu_from_profiles_and_from_collected_events(tmp_path):
    profiles = tmp_path / "profiles.jsonl"
    profiles.write_text(json.dumps({
        "tenant": "acme", "job": "j1", "gpu_model": "A100-SXM4-80GB", "capacity_type": "on_demand", "gpus": 1,
        "duration_s": "7200", "peak_memory_bytes": 8 * 2**30, "util_mean": "0.08", "util_p50": "0.07",
        "util_p95": "0.10", "checkpoint_cost_s": "100"}) + "\n")
    result = invoke("recommend", "gpu", "--profiles", str(profiles), "--at", "2026-12-01", "--format", "json")
    assert result.exit_code == 0, result.output
    (rec,) = json.loads(result.stdout)
    assert rec["recommended"]["gpu_model"] == "A100-SXM4-40GB" and rec["recommended"]["mig_profile"] == "1g.10gb"
    assert rec["savings_usd"] == "9.068571428571" and rec["spot"]["checkpoint_interval_s"] == 3000
    table = invoke("recommend", "gpu", "--profiles", str(profiles), "--at", "2026-12-01")
    assert table.exit_code == 0 and "1g.10gb" in table.stdout

    events = tmp_path / "events.jsonl"
    invoke("collect", "slurm", "--cluster", "hpc1", "--input", str(FIXTURES / "slurm" / "sacct.json"),
           "--cursor", str(tmp_path / "c.json"), "--output", str(events), "--since", "2026-12-05T10:00:00",
           "--until", "2026-12-05T12:00:00")
    result = invoke("recommend", "gpu", "--events", str(events), "--checkpoint-cost-s", "60", "--format", "json")
    assert result.exit_code == 0, result.output
    by_job = {r["job"]: r for r in json.loads(result.stdout)}
    assert by_job["48213"]["profile"]["gpus"] == 4 and by_job["48213"]["profile"]["util_p95"] == "0.720000"


def test_recommend_gpu_bad_profile_fails_on_stderr(tmp_path):
    profiles = tmp_path / "p.jsonl"
    profiles.write_text('{"tenant": "a", "job": "j", "gpu_model": "L4-24GB", "gpus": 1}\n')
    result = invoke("recommend", "gpu", "--profiles", str(profiles))
    assert result.exit_code == 1 and "p.jsonl:1.util_mean: is missing" in result.stderr and "[required]" in result.stderr
    profiles.write_text("not json\n")
    result = invoke("recommend", "gpu", "--profiles", str(profiles))
    assert result.exit_code == 1 and "[json_line]" in result.stderr and "Traceback" not in result.output


def test_the_demo_shows_one_gpu_recommendation():
    import datetime as dt

    from prismops.cli.demo import demo_gpu_recommendation

    shown = demo_gpu_recommendation(now=dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))
    assert shown is not None and shown["recommended"] and shown["spot_checkpoint_every_s"] > 0
    assert shown["spot_saves_usd"] > 0


def test_collect_dcgm_scrapes_an_exporter_for_one_window(tmp_path):
    import http.server
    import threading

    page = (FIXTURES / "dcgm" / "metrics.txt").read_bytes()

    class Exporter(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "scraped.jsonl"
        result = invoke("collect", "dcgm", "--cluster", "prod", "--metrics-url", f"http://127.0.0.1:{server.server_address[1]}/metrics",
                        "--window-s", "2", "--scrape-interval", "0.5", "--once", "--cursor", str(tmp_path / "c.json"),
                        "--output", str(out), "--format", "json")
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    events = lines(out)
    assert {e["job"] for e in events} == {"llm-train-0", "embedder-7d9f8-x2k4q", "chat-6b5c4-p9z8w"}
    train = next(e for e in events if e["job"] == "llm-train-0")
    window = (dt_parse(train["window_end"]) - dt_parse(train["window_start"])).total_seconds()
    assert window == 2 and Decimal(train["used_gpu_seconds"]) == Decimal(train["requested_gpu_seconds"]) * Decimal("0.85")


def dt_parse(text):
    import datetime as dt

    return dt.datetime.fromisoformat(text)
