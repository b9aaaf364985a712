"""Smoke test of the benchmark harness: every area imports, one runs at minimal sizes, run.py writes a table.

Speed itself is measured by ``python benchmarks/run.py``, never asserted here.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

AREAS = ["bench_forward", "bench_compile", "bench_splice", "bench_memory", "bench_revision", "bench_growth",
         "bench_diff", "bench_validate", "bench_hostile", "bench_check", "bench_branches"]


@pytest.fixture
def quick():
    import benchutil

    benchutil.set_quick(True)
    yield
    benchutil.set_quick(False)


@pytest.mark.parametrize("name", AREAS)
def test_each_area_imports_and_has_run(name: str) -> None:
    module = importlib.import_module(name)
    assert callable(module.run) and module.__doc__


def test_splice_area_at_minimal_sizes(quick: None) -> None:
    import bench_splice

    rows = bench_splice.run()
    chain_rows = [r for r in rows if r["case"].startswith("Chain")]
    assert chain_rows[0]["ratio"] == 1.0  # the first size is its own baseline
    last = chain_rows[-1]
    assert last["target"] == 2.0 and last["ok"] == (last["ratio"] <= 2.0)
    assert all(r["value"] > 0 and r["base"] > 0 for r in rows)


def test_revision_spec_text_fits_the_loader_and_diffs_to_one_insert() -> None:
    import bench_revision

    import chainspec

    old = chainspec.loads(bench_revision.spec_text(50))
    new = chainspec.loads(bench_revision.spec_text(50, extra_after=25))
    plan = chainspec.diff(old, new)
    assert [(op.kind, op.node_id, op.after) for op in plan.ops] == [("insert", "extra", old.resolved().nodes[25].id)]
    assert len(bench_revision.spec_text(10_000, extra_after=5_000).encode()) < 256 * 1024


def test_check_area_at_minimal_sizes(quick: None) -> None:
    import bench_check

    [result] = bench_check.run()
    assert result["area"] == "check" and "pggan_tiny.yaml" in result["case"] and result["ok"] is True


def test_naive_list_dies_where_chain_does_not() -> None:
    import bench_forward
    import torch
    from torch import nn

    layers = [nn.Identity() for _ in range(sys.getrecursionlimit())]
    limit = bench_forward.naive_limit(layers, torch.zeros(1))
    assert 1 < limit < len(layers)  # the exact depth depends on the caller's own stack depth
    assert bench_forward._naive_runs(layers[: limit // 2], torch.zeros(1))
    assert not bench_forward._naive_runs(layers, torch.zeros(1))


def test_run_py_writes_a_results_table(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--quick", "--only", "splice", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text(encoding="utf-8")
    assert "Machine: " in text and "torch " in text
    assert "| splice | Chain insert_after + remove, 1,000 nodes" in text
    assert "Chain insert_after + remove" in proc.stdout


def test_run_py_rejects_an_unknown_area() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--only", "nope"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "unknown area" in proc.stderr


def test_run_py_only_keeps_the_other_areas_of_the_results_file() -> None:
    import benchutil
    import run

    info = {"cpu": "test cpu", "cores": "2"}
    first = [benchutil.row("splice", "insert, 10 nodes", "itself", base=1e-6, value=1e-6, ratio=1.0),
             benchutil.row("validate", "chainspec validate", "check-jsonschema", base=0.4, value=0.2, ratio=0.5,
                           target="< 1", ok=True)]
    full = run.render_markdown(first, {}, info, 10.0, [])
    again = [benchutil.row("validate", "chainspec validate", "check-jsonschema", base=0.4, value=0.3, ratio=0.75,
                           target="< 1", ok=True)]
    merged = run.render_markdown(again, {}, info, 5.0, ["--only", "validate"], previous=full)
    cells = run.parse_table(merged)
    assert [c[0] for c in cells] == ["splice", "validate"]  # area order; the splice line kept
    assert cells[0] == run.parse_table(full)[0]
    assert cells[1][5] == "0.75"  # the validate line replaced, not added
    assert "`python benchmarks/run.py`," in merged and "`python benchmarks/run.py --only validate`," in merged
    assert "- **splice**:" in merged and "- **validate**:" in merged
    # A second --only run of the same areas replaces its own line in the header, too.
    twice = run.render_markdown(again, {}, info, 5.0, ["--only", "validate"], previous=merged)
    assert twice.count("--only validate`") == 1


def test_validate_area_sets_validate_against_check_jsonschema_and_torch() -> None:
    import bench_validate
    import run

    raw = [{"name": n, "median_s": s, "ratio": s / 0.4, "files": 1, "repeats": 7}
           for n, s in [("chainspec validate", 0.2), ("check-jsonschema", 0.4), ("chainspec validate --deep", 3.0),
                        (bench_validate.INVALID, 0.14), (bench_validate.TORCH, 1.6), (bench_validate.PYTHON, 0.04),
                        (bench_validate.PYDANTIC, 0.1)]]

    class Fake:
        BASELINE, TORCH, DEFAULT_FILES = bench_validate.BASELINE, bench_validate.TORCH, bench_validate.DEFAULT_FILES
        PYTHON, PYDANTIC = bench_validate.PYTHON, bench_validate.PYDANTIC
        INVALID, INVALID_FILE = bench_validate.INVALID, bench_validate.INVALID_FILE
        against_torch = staticmethod(bench_validate.against_torch)

        @staticmethod
        def run(repeats: int) -> list[dict]:
            return raw

    rows = run._validate_rows(Fake, quick=True)
    plain = [r for r in rows if r["case"] == "chainspec validate"]
    assert [(r["baseline"], r["ratio"]) for r in plain] == [("check-jsonschema", 0.5), (bench_validate.TORCH, 0.125)]
    assert plain[0]["target"] == "≤ 0.3" and plain[0]["ok"] is False  # the target: 0.5 misses it
    floor = {r["case"]: round(r["ratio"], 6) for r in rows if "floor" in r["note"]}
    assert floor == {bench_validate.PYTHON: 0.1}
    notes = {r["case"]: (round(r["ratio"], 6), r["note"]) for r in rows}
    assert notes[bench_validate.PYDANTIC] == (0.25, "not imported to validate a valid spec, median of 7")
    assert notes[bench_validate.INVALID][0] == 0.35 and "exit 1" in notes[bench_validate.INVALID][1]
    assert bench_validate.DEFAULT_FILES == ["specs/pggan.yaml"]


def test_hostile_area_at_minimal_sizes(quick: None) -> None:
    """The hostile area: its refusal rows, then per entry point the worst time and memory over (three) corpus cases."""
    import bench_hostile

    rows = bench_hostile.run(quick=True)
    corpus = [r for r in rows if "hostile specs" in r["case"]]
    assert {r["case"].split(":")[0] for r in corpus} == set(bench_hostile.ENTRIES)
    assert {r["unit"] for r in corpus} == {"s", "B"}
    for r in corpus:
        assert r["target"] in ("< 1 s", "< 200 MB") and r["note"].startswith("worst: "), r
        assert r["base"] is not None and r["value"] is not None, r
        limit = bench_hostile.TIME_TARGET if r["unit"] == "s" else bench_hostile.MEMORY_TARGET
        assert r["ok"] == (r["value"] < limit), r
    assert any(r["case"].startswith("loads: ") for r in rows)  # the refusal rows are still there


def test_hostile_rows_name_the_worst_case_and_miss_on_a_kill() -> None:
    import bench_hostile

    def figures(seconds: float | None, rss: int | None, peak: int | None, outcome: str = "ok") -> dict:
        return {entry: {"seconds": seconds, "rss": rss, "peak": peak, "outcome": outcome}
                for entry in bench_hostile.ENTRIES}

    data = {"baseline": figures(0.01, 1 << 20, 1 << 20),
            "cases": {"tree-10x6": figures(0.5, 300 * 10**6, 10**6),
                      "exponent-round-neg-1e18": figures(0.02, 10**6, 250 * 10**6)}}
    rows = {(r["case"].split(":")[0], r["unit"], r["case"].split(": ")[1].split(",")[0]): r
            for r in bench_hostile.corpus_rows(data)}
    time_row = rows[("load", "s", "worst time")]
    assert time_row["value"] == 0.5 and time_row["ok"] and "tree-10x6 (expansion)" in time_row["note"]
    rss_row = rows[("load", "B", "worst peak RSS growth")]
    assert rss_row["value"] == 300 * 10**6 and rss_row["ok"] is False and "tree-10x6" in rss_row["note"]
    peak_row = rows[("load", "B", "worst Python peak (tracemalloc)")]
    assert peak_row["ok"] is False and "exponent-round-neg-1e18 (exponent)" in peak_row["note"]
    data["cases"]["tree-10x6"] = figures(60.0, None, None, "killed after 60 s")
    killed = [r for r in bench_hostile.corpus_rows(data) if r["case"].startswith("load: worst time")]
    assert killed[0]["ok"] is False and "killed or died: tree-10x6" in killed[0]["note"]


@pytest.mark.parametrize("name", ["bench_startup", "bench_build"])
def test_startup_and_build_areas_are_registered(name: str) -> None:
    import run

    module = importlib.import_module(name)
    area = name.removeprefix("bench_")
    assert callable(module.run) and module.__doc__ and run.AREAS[area][0] == name and area in run.NOTES


def test_startup_area_at_minimal_sizes(quick: None) -> None:
    """One round of the tiny PG-GAN's build, the deep validate and the import, each a fresh process."""
    import bench_startup

    rows = bench_startup.run(quick=True)
    assert [r["case"] for r in rows] == ["chainspec build specs/pggan_tiny.yaml",
                                         "chainspec validate --deep specs/blog.yaml", bench_startup.IMPORT_CASE]
    assert {(r["area"], r["baseline"], r["base"]) for r in rows} == {("startup", bench_startup.TORCH, rows[0]["base"])}
    for r in rows:
        assert r["base"] > 0 and r["value"] > 0 and r["ratio"] == pytest.approx(r["value"] / r["base"]), r
    last = rows[-1]
    assert last["target"] == "< 0.2 s" and last["ok"] == (last["value"] < 0.2)
    assert "specs/pggan.yaml" in bench_startup.commands()[bench_startup.TARGET_CASE]


def test_startup_rows_hold_the_pggan_build_to_its_target() -> None:
    import bench_startup

    times = {bench_startup.TORCH: [2.0], bench_startup.TARGET_CASE: [2.8], "chainspec build specs/blog.yaml": [2.4]}
    rows = {r["case"]: r for r in bench_startup.rows_from(times, [0.3])}
    assert rows[bench_startup.TARGET_CASE]["target"] == 1.3 and rows[bench_startup.TARGET_CASE]["ok"] is False
    assert rows["chainspec build specs/blog.yaml"]["target"] is None
    assert rows[bench_startup.IMPORT_CASE]["ok"] is False


def test_build_area_at_minimal_sizes(quick: None) -> None:
    import bench_build

    rows = bench_build.run()
    assert [r["case"] for r in rows] == ["spec.build(), 20 x Linear(16, 16)",
                                         "spec.build('net', stage='final'), blog.yaml"]
    for r in rows:
        assert r["area"] == "build" and r["baseline"] == bench_build.BASELINE and r["target"] == 2.0, r
        assert r["base"] > 0 and r["value"] > 0 and r["ok"] == (r["ratio"] <= 2.0), r


def test_build_area_builds_the_same_modules_by_hand() -> None:
    import bench_build

    import chainspec

    spec = chainspec.load(BENCH.parent / "specs" / "pggan_tiny.yaml")
    for chain in spec.chain_names:
        stage = spec.stage_index("final")
        built, written = spec.build(chain, stage=stage), bench_build.by_hand(spec, chain, stage)()
        assert bench_build._leaf_types(built) == bench_build._leaf_types(written)
        assert sum(p.numel() for p in built.parameters()) == sum(p.numel() for p in written.parameters())


def test_grow_gpt_area_trains_scratch_once_and_reports_three_rows_per_operator(quick: None) -> None:
    """Every operator's rows compare against the same scratch run, handed on through the example's resume."""
    import bench_grow_gpt

    rows = bench_grow_gpt.run(("copy", "widen-deep"))
    assert len(rows) == 6
    headline = [r for r in rows if r["case"].startswith("FLOPs to reach scratch's")]
    assert len(headline) == 2 and headline[0]["base"] == headline[1]["base"] > 0  # one scratch run's FLOPs
    assert all(r["target"] == 0.70 and r["ok"] == (r["ratio"] is not None and r["ratio"] <= 0.70) for r in headline)
    mirrored = [r for r in rows if r["case"].startswith("FLOPs spent, against")]
    for r in mirrored:
        assert (r["ratio"] is None) == (r["base"] is None)
        if r["ratio"] is not None:
            assert r["ratio"] == pytest.approx(r["value"] / r["base"])
