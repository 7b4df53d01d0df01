from __future__ import annotations

import csv
import importlib.util
import os

from r0kit.kernels.bench import FIELDS, OPS, main

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_harness_runs_tiny_on_cpu_and_appends_rows(tmp_path, capsys):
    out = tmp_path / "k.csv"
    args = ["--sizes", "tiny", "--device", "cpu", "--providers", "eager,auto", "--csv", str(out),
            "--warmup-ms", "1", "--rep-ms", "2"]
    assert main(args) == 0
    assert main(args + ["--ops", "cosine_head", "--modes", "full"]) == 0  # appends, header once
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == FIELDS
    assert {r["op"] for r in rows} == set(OPS)
    assert {r["provider"] for r in rows} == {"eager", "auto"}
    assert {r["mode"] for r in rows} == {"forward", "backward", "full"}
    assert all(r["check"] in ("ok", "ref") for r in rows), [r for r in rows if r["check"] not in ("ok", "ref")]
    for r in rows:
        assert float(r["ms_p20"]) <= float(r["ms_p50"]) <= float(r["ms_p80"])
        assert int(r["bytes"]) > 0 and float(r["gbps"]) > 0 and float(r["copy_gbps"]) > 0
        assert r["device"].startswith("cpu") and r["torch"] and r["date"]
    assert len(rows) == 5 * 2 * 3 - 2 + 2  # weight_l2 has no backward mode; then 2 cosine_head rows

    spec = importlib.util.spec_from_file_location("kernels_plot", os.path.join(ROOT, "benchmarks", "kernels", "plot.py"))
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    assert plot.main(["--csv", str(out), "--out", str(tmp_path), "--summary"]) == 0
    assert len(list(tmp_path.glob("kernels_*.png"))) == len(OPS)
    assert "cosine_head" in capsys.readouterr().out


def test_bad_choice_is_rejected(capsys):
    assert main(["--ops", "nope", "--device", "cpu"]) == 2
    assert "unknown choice" in capsys.readouterr().err


def test_large_preset_is_one_headline_size_per_op():
    from r0kit.kernels.bench import OPS, _bytes, _sizes

    for op in OPS:
        large = _sizes(op, "large")
        assert len(large) == 1 and large[0] == _sizes(op, "full")[-1], op
    p = _sizes("eta_step", "large")[0]
    assert p["B"] * p["C"] * p["R"] ** 2 >= 64 * 2**20  # bandwidth-scale: ≥ 64M elements
    assert _bytes("eta_step", p, 4)["full"] == 6 * p["B"] * p["C"] * p["R"] ** 2 * 4
