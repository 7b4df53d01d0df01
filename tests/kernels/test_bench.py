from __future__ import annotations

import csv
import importlib.util
import math
import os

import pytest

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


def test_real_preset_covers_the_sizes_r0kit_runs():
    from r0kit.kernels.bench import _sizes, _weight_shapes

    assert [p["B"] for p in _sizes("grad_combine", "real")] == [1, 4, 8]
    assert {p["R"] for p in _sizes("preprocess", "real")} == {512}
    eta = _sizes("eta_step", "real")
    assert {(p["C"], p["R"]) for p in eta} == {(4, 64), (4, 128)} and {p["B"] for p in eta} == {1, 2, 4, 8, 16}
    numels = {}
    for p in _sizes("weight_l2", "real"):
        label, shapes = _weight_shapes(p)
        numels[p.get("kind")] = numels.get(p.get("kind"), []) + [sum(math.prod(s) for s in shapes)]
    assert [round(n / 1e6) for n in numels["lora"]] == [1, 10, 50]
    pytest.importorskip("diffusers")
    assert numels["sd15"] == [859_520_964] and numels["sdxl"] == [2_567_463_684]  # the real UNets' parameter counts


def test_crossover_is_the_smallest_size_from_which_the_kernels_win():
    spec = importlib.util.spec_from_file_location("kernels_plot", os.path.join(ROOT, "benchmarks", "kernels", "plot.py"))
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)

    def rows(op, times):  # {numel: (eager, compile, triton)}
        return [dict(device="GPU", op=op, dtype="float32", mode="full", check="ok", numel=str(n), provider=prov, ms_p50=str(t))
                for n, ts in times.items() for prov, t in zip(("eager", "compile", "triton"), ts)]

    data = plot.crossover(
        rows("a", {10: (1.0, 1.0, 2.0), 100: (1.0, 3.0, 2.0), 1000: (5.0, 3.0, 2.0)})  # wins from 1000 / 100
        + rows("b", {10: (1.0, 1.0, 0.5), 100: (2.0, 2.0, 1.0)})  # wins everywhere: not listed
        + rows("c", {10: (1.0, 1.0, 2.0), 100: (2.0, 1.0, 3.0)})  # loses at the largest size: reference everywhere
    )
    assert data == {"devices": {"GPU": {"a": {"eager": 1000, "compile": 100}, "c": {"eager": 2**62, "compile": 2**62}}}}
