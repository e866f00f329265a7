from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from cvmharness.errors import InputError
from cvmharness.importer import import_logs
from cvmharness.report import COORDINATED_OMISSION, write_report

DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURE = DATA / "runs" / "local-smoke"
EN_DASH = "\u2013"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return shutil.copytree(FIXTURE, tmp_path / "run")


def fixture_samples() -> list[dict]:
    return [json.loads(line) for line in (FIXTURE / "samples.ndjson").read_text().splitlines()]


def rps_of(cell_id: str) -> list[float]:
    return [s["metrics"]["requests_per_sec"] for s in fixture_samples()
            if s["cell_id"] == cell_id and s["status"] == "ok"]


def test_report_tables_and_numbers(run_dir):
    md_path, html_path = write_report(run_dir)
    assert (md_path, html_path) == (run_dir / "report.md", run_dir / "report.html")
    md = md_path.read_text()
    # the median of the fixture's host-local.http repetitions, formatted as in the table
    median = statistics.median(rps_of("host-local.http"))
    assert f"| host-local | {median:,.0f} |" in md
    assert "| host-local-ipv6 | 27,154 |" in md
    assert "## Workload http" in md and "## Workload http-100k" in md
    # the seeds' columns: latency, socket errors by kind, repetitions, noisy
    for header in ("requests/sec median", "requests/sec 95% CI", "latency, ms † p99.9",
                   "socket errors (sum) timeout", "socket errors (sum) non-2xx/3xx",
                   "repetitions ok/total", "repetitions noisy"):
        assert header in md
    assert "| 4/5 |" in md  # host-local-ipv6.http-100k: one failed repetition
    assert COORDINATED_OMISSION in md
    # ratio to the default baseline host-local
    assert "req/s ÷ host-local [95% CI]" in md
    assert re.search(r"\| host-local-ipv6 \| 0\.\d{3} \[0\.\d{3}\u2013\d\.\d{3}\] \| -1\.5% \|", md)
    # exclusions with reasons
    assert (f"| host-to-td.http | skipped | 1{EN_DASH}5 | server td:td0: lab 'local' "
            "declares no td") in md
    assert "| host-local-ipv6.http-100k | failed | 5 | warm-up: wrk exited 1" in md
    assert "| host-local.http-missing | invalid | 1 | error rate 100.00%" in md
    # facts and run metadata
    assert "| CPU model | AMD EPYC |" in md
    assert "| microcode | 0x1000065 |" in md
    assert "| version: wrk | debian/4.1.0-3+b2 |" in md
    assert "20261123T150500Z-smoke-5e1f" in md
    assert "matrices/smoke.yml" in md
    # plots: files for the Markdown, embedded in the HTML
    assert "](report-plots/http-throughput.png)" in md
    assert (run_dir / "report-plots" / "http-latency.png").read_bytes().startswith(b"\x89PNG")
    html = html_path.read_text()
    assert html.count('src="data:image/png;base64,') == 4
    assert "<table" in html and "27,154" in html


def test_html_is_self_contained(run_dir):
    _, html_path = write_report(run_dir)
    html = html_path.read_text()
    for attr in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html):
        assert attr.startswith(("#", "data:")), attr
    lowered = html.lower()
    for forbidden in ("<script", "<link", "@import", "url(", "<iframe", "http://", "https://"):
        assert forbidden not in lowered, forbidden


def test_report_is_deterministic(run_dir):
    first = write_report(run_dir)[1].read_bytes()
    assert write_report(run_dir)[1].read_bytes() == first


def test_explicit_baseline_and_unknown_baseline(run_dir):
    md = write_report(run_dir, baseline="host-local-ipv6")[0].read_text()
    assert "req/s ÷ host-local-ipv6 [95% CI]" in md
    with pytest.raises(InputError, match="no scenario 'nope'"):
        write_report(run_dir, baseline="nope")


def test_run_with_only_skipped_cells(tmp_path):
    run = tmp_path / "skipped"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(
        {"schema": 1, "run_id": "skipped", "status": "ok", "plan": {"repetitions": 2}}))
    lines = [s for s in fixture_samples() if s["status"] == "skipped"]
    (run / "samples.ndjson").write_text("".join(json.dumps(s) + "\n" for s in lines))
    md_path, html_path = write_report(run)
    md = md_path.read_text()
    assert "No cell has an ok repetition" in md
    assert "| host-to-td | skipped |" in md
    assert "No facts were gathered" in md
    assert not (run / "report-plots").exists()
    assert "<table" in html_path.read_text()


def test_run_in_progress_with_a_cut_last_line(tmp_path):
    run = shutil.copytree(FIXTURE, tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    meta.update(status="running", ended_at=None)
    (run / "run.json").write_text(json.dumps(meta))
    lines = (run / "samples.ndjson").read_text().splitlines(keepends=True)[:12]
    cut = lines[-1][: len(lines[-1]) // 2]  # a write cut by a kill: no newline
    (run / "samples.ndjson").write_text("".join(lines[:-1]) + cut)
    shutil.rmtree(run / "facts")
    md = write_report(run)[0].read_text()
    assert "still in progress" in md
    assert "11 of 25 planned repetitions" in md
    assert "No facts were gathered" in md


def test_empty_run_and_missing_run_json(tmp_path):
    run = tmp_path / "new"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"schema": 1, "run_id": "new",
                                              "status": "running"}))
    md = write_report(run)[0].read_text()
    assert "still in progress" in md
    with pytest.raises(InputError):
        write_report(tmp_path / "absent")


def test_corrupt_sample_line_is_an_input_error(run_dir):
    with (run_dir / "samples.ndjson").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(InputError, match=r"samples\.ndjson"):
        write_report(run_dir)


def test_report_of_imported_seed_logs(tmp_path):
    logs = [DATA / "wrk_text" / "seed003_wrk-t30-c20000-3m.log",
            DATA / "wrk_text" / "seed003_wrk-t120-c20000-3m.log"]
    run = import_logs(logs, tmp_path, None)
    md = write_report(run, baseline="host")[0].read_text()
    assert "| host threads-30 | 229,243 |" in md
    assert "| kata-60c100gi threads-120 | 8,113 |" in md
    assert "1,274,911" in md and "18,253" in md  # socket errors of seed 003
    assert "No latency distribution was recorded" in md
    assert "| runc-60c100gi threads-30 | 0.412 |" in md  # 94544.10 / 229242.62


def test_sweep_gets_a_line_plot(tmp_path):
    run = tmp_path / "sweep"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"schema": 1, "run_id": "sweep", "status": "ok"}))
    lines = []
    for scenario, scale in (("host-local", 1.0), ("host-to-td", 0.3)):
        for conns in (10, 100, 1000):
            for rep in (1, 2, 3):
                lines.append(json.dumps({
                    "cell_id": f"{scenario}.http.connections-{conns}", "scenario": scenario,
                    "workload": "http", "tool": "wrk", "params": {"connections": conns},
                    "repetition": rep, "status": "ok",
                    "metrics": {"requests_per_sec": scale * conns * (10 + rep),
                                "latency_ms": {"p50": 1.0, "p99": 2.0 + rep}}}))
    (run / "samples.ndjson").write_text("\n".join(lines) + "\n")
    md = write_report(run)[0].read_text()
    assert "by `connections`" in md
    assert "| host-to-td connections-1000 | 0.300 [" in md


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    from PIL import Image

    _, html_path = write_report(run_dir)
    browser = _chromium()
    assert browser is not None
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
              "--window-size=1200,3000"]
    url = html_path.resolve().as_uri()
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert dom.count("<table") >= 8
    assert "Workload http-100k" in dom
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom)) == 4
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=120,
                   check=True)
    assert shot.read_bytes().startswith(b"\x89PNG")
    with Image.open(shot) as image:
        assert image.size == (1200, 3000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and plots, not blank
