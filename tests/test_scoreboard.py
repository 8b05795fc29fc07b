"""The scoreboard's measuring code, run for real on a short evaluation (the full board is a benchmark)."""
import json

import pytest

from conftest import run_cli
from jlcm_gguf import scoreboard


def test_f16_reference_bits_per_weight(f16):
    s = scoreboard.tensor_stats(f16)
    assert s["bpw_linear"] == 16.0
    assert s["linear_types"] == {"F16": 1.0}
    # every byte counts: header, tokenizer and the F32 norms push the file above 16 bpw
    assert 16.0 < s["bpw_file"] < 16.3
    assert s["file_bytes"] == f16.stat().st_size


def test_fallbacks_name_the_other_types():
    assert scoreboard.fallbacks({"IQ2_XS": 0.225, "IQ4_NL": 0.775}, "IQ2_XS") == {"IQ4_NL": 0.775}
    assert scoreboard.fallbacks({"Q4_K": 0.2, "Q5_0": 0.8}, "Q4_K_M") == {"Q5_0": 0.8}
    assert scoreboard.fallbacks({"F16": 1.0}, "F16") == {}


def test_measure_quantize_perplexity_kld_bench(build, f16, novels, tmp_path):
    runner = scoreboard.Runner(build)
    q8 = scoreboard.quantize(runner, f16, tmp_path / "q8.gguf", "Q8_0", None)
    ev = scoreboard.EvalSettings(text=novels["prideprejudice"], ctx=256, chunks=3)
    entries = [scoreboard.Entry("F16", "stock", f16), scoreboard.Entry("Q8_0", "stock", q8, {"nominal": "Q8_0"})]
    rows = scoreboard.measure(runner, entries, f16, ev, tmp_path, speed=False)
    f16_row, q8_row = rows
    assert f16_row["kld"] == 0.0 and 5 < f16_row["ppl"] < 100
    assert 0 < q8_row["kld"] < 0.05                      # Q8_0 is close to F16, never equal
    assert abs(q8_row["ppl"] - f16_row["ppl"]) / f16_row["ppl"] < 0.05
    assert q8_row["bpw_linear"] == 8.5 and q8_row["fallbacks"] == {}
    assert any("llama-perplexity" in c and "--kl-divergence" in c for c in runner.commands)


def test_merge_rows_keeps_other_rows_and_plot(tmp_path):
    path = tmp_path / "board.json"
    row = {"name": "A", "kind": "stock", "bpw_linear": 4.5, "kld": 0.1}
    header = {"model": "m", "eval": {"text": "t.txt", "ctx": 512, "chunks": 60}, "commands": ["x"]}
    scoreboard.merge_rows(path, header, [row, {**row, "name": "F16", "kld": 0.0}])
    doc = scoreboard.merge_rows(path, header, [{"name": "J", "kind": "jlcm", "bpw_linear": 2.5, "kld": 0.09}])
    assert [r["name"] for r in doc["rows"]] == ["A", "F16", "J"]
    assert json.loads(path.read_text()) == doc
    doc = scoreboard.merge_rows(path, header, [{**row, "kld": 0.2}])      # measured again: in its place
    assert [(r["name"], r["kld"]) for r in doc["rows"]] == [("A", 0.2), ("F16", 0.0), ("J", 0.09)]
    scoreboard.plot(doc, tmp_path / "board.png")
    assert (tmp_path / "board.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_and_table():
    rows = [{"name": n, "kind": "stock", "bpw_linear": b, "kld": k, "file_bytes": 1e6, "bpw_file": b + 1,
             "ppl": 20.0, "fallbacks": {}} for n, b, k in (("A", 4.0, 0.4), ("B", 4.1, 0.2), ("C", 4.5, 0.3), ("D", 5.0, 0.1))]
    assert [r["name"] for r in scoreboard.pareto(rows)] == ["A", "B", "D"]
    doc = {"model": "m", "eval": {"text": "t.txt", "ctx": 512, "chunks": 60}, "rows": rows,
           "machine": {"cores": 2, "cpu": "cpu", "date": "2026-01-01"}}
    table = scoreboard.markdown_table(doc)
    assert table.count("\n| ") == 4 and "| C | stock | 1.00 | 5.50 | 4.50 | 20.000 | 0.3000 | — | — | — |" in table


def test_bench_command_writes_json_plot_and_table(build, f16, novels, tmp_path):
    """`jlcm-gguf bench` end to end on one stock type (the JLCM rows go through `jlcm-gguf convert`,
    tested on its own): rows in the JSON with the exact commands, the PNG and the markdown table."""
    out = tmp_path / "board.json"
    r = run_cli("bench", "--types", "Q8_0", "--jlcm", "", "--ctx", "256", "--chunks", "2", "--out", out, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [row["name"] for row in doc["rows"]] == ["Q8_0"]
    row = doc["rows"][0]
    assert 0 < row["kld"] < 0.05 and row["tg128"] > 0 and row["bpw_linear"] == 8.5
    assert doc["commands"][0].startswith("jlcm-gguf bench --types Q8_0")
    assert any("llama-bench" in c for c in doc["commands"])
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "| Q8_0 | stock |" in out.with_suffix(".md").read_text()
    assert sum("llama-bench" in c for c in doc["commands"]) == 2      # forward and reversed order
    # --speed-only measures pp/tg again and keeps the rest of each row
    r = run_cli("bench", "--speed-only", "--out", out, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(out.read_text())["rows"][0]
    assert again["tg128"] > 0 and len(again["tg128_runs"]) == 2
    speed = ("pp512", "tg128")
    assert {k: v for k, v in again.items() if not k.startswith(speed)} == \
        {k: v for k, v in row.items() if not k.startswith(speed)}


def test_bench_refuses_unknown_rows(tmp_path):
    r = run_cli("bench", "--jlcm", "JLCM9", "--out", tmp_path / "b.json")
    assert r.returncode == 2 and "--jlcm" in r.stderr and "JLCM9" in r.stderr


def test_run_measured_reports_time_rss_and_output(capfd):
    import sys
    code = "import sys; b = bytearray(64 << 20); print('out'); print('progress', file=sys.stderr)"
    stats, err = scoreboard.run_measured([sys.executable, "-c", code])
    assert err == "progress\n" and stats["peak_rss_bytes"] > 64 << 20
    stats, both = scoreboard.run_measured([sys.executable, "-c", code], echo=True)
    assert "out\n" in both and "progress\n" in both
    assert "progress" in capfd.readouterr().err          # passed through as it came
    with pytest.raises(RuntimeError, match="boom"):
        scoreboard.run_measured([sys.executable, "-c", "raise SystemExit('boom')"], echo=True)


def test_speed_only_refuses_rows_without_their_file(tmp_path):
    """--speed-only measures every row in one run or none: a row whose file is gone (a cleared cache)
    stops it with the command that remakes the file, rather than leaving two runs' speeds mixed."""
    out = tmp_path / "board.json"
    row = {"name": "IQ2_XS", "kind": "stock", "file": "no-such-file.gguf", "bpw_linear": 3.96, "kld": 0.4}
    header = {"model": "m", "eval": {"text": "t.txt", "ctx": 512, "chunks": 60}, "commands": ["x"]}
    scoreboard.merge_rows(out, header, [row, {**row, "name": "JLCM2", "kind": "jlcm"}])
    before = out.read_bytes()
    r = run_cli("bench", "--speed-only", "--out", out)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "IQ2_XS, JLCM2" in r.stderr and "--types 'IQ2_XS' --jlcm ''" in r.stderr \
        and "--types '' --jlcm 'JLCM2'" in r.stderr
    assert out.read_bytes() == before
