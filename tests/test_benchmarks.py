"""Smoke test of the benchmark suite: every benchmark runs at TINY sizes and returns well-formed figures.

Speed is never asserted; only the structure of the results (keys, finite non-negative numbers, positive ratios,
``ratio`` in every time-ratio key) and that they serialise to strict JSON.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import run as bench_run  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _numbers(obj: Any, path: str = "") -> list[tuple[str, float]]:
    """Every numeric leaf as ``(dotted path, value)`` (booleans are not numbers here)."""
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in _numbers(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [item for i, v in enumerate(obj) for item in _numbers(v, f"{path}[{i}]")]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [(path, float(obj))]
    return []


def check_figures(result: dict[str, Any]) -> None:
    """Finite, non-negative numbers; ratios and times strictly positive."""
    numbers = _numbers(result)
    assert numbers, "no figures"
    for path, value in numbers:
        assert math.isfinite(value), path
        assert value >= 0, path
        leaf = path.rsplit(".", 1)[-1]
        if "ratio" in leaf or leaf.endswith("_ms") or leaf.endswith("_per_s"):
            assert value > 0, path
    json.loads(json.dumps(result, allow_nan=False))


def time_ratio_keys(result: dict[str, Any]) -> list[str]:
    return [p for p, _ in _numbers(result) if "time" in p.rsplit(".", 1)[-1] and "ratio" in p.rsplit(".", 1)[-1]]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny tensors gain nothing from threads, and OpenMP spinning on a busy 2-core machine slows tests a lot."""
    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the measurement children (their forkserver starts during these tests)
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def results(one_thread: Any) -> dict[str, Any]:
    names = [n for n in bench_run.REGISTRY if n not in ("gpu_step", "fsdp_step")]  # CUDA ones: own tests below
    return bench_run.run_all(names, quick=True, tiny=True, echo=False)


def test_registry_modules_expose_run_and_format_table() -> None:
    for name in bench_run.REGISTRY:
        module = bench_run.load(name)
        assert callable(module.run) and callable(module.format_table), name


def test_every_benchmark_ran(results: dict[str, Any]) -> None:
    for name, result in results.items():
        assert "error" not in result and "skipped" not in result, (name, result)
        check_figures(result)
        assert bench_run.render(name, result).strip()


def test_adapter_ops_structure(results: dict[str, Any]) -> None:
    from benchmarks.adapter_ops import MODES, SIDES, TINY_SIZES, VARIANTS

    figures = results["adapter_ops"]["results"]
    assert set(figures) == {str(n) for n in TINY_SIZES}
    for variants in figures.values():
        assert set(variants) == set(VARIANTS)
        for r in variants.values():
            for mode in MODES:
                for side in SIDES:
                    assert r[mode][f"{side}_ms"] > 0 and r[mode][f"{side}_peak_mib"] >= 0
                assert r[mode]["package_vs_reference_time_ratio"] > 0
                assert r[mode]["no_fast_vs_reference_time_ratio"] > 0
            assert r["max_abs_deviation"] < 1e-4  # the package and the reference chain agree
    assert len(time_ratio_keys(results["adapter_ops"])) == 3 * len(MODES) * len(VARIANTS) * len(TINY_SIZES)
    assert "ru_maxrss" in results["adapter_ops"]["memory_method"]


def test_step_overhead_structure(results: dict[str, Any]) -> None:
    from lit_hyperet.hyperet import SPACES, VARIANTS

    r = results["step_overhead"]
    for variant in VARIANTS:  # every variant in every space
        assert set(r[variant]) == set(SPACES), variant
        for space in SPACES:
            figures = r[variant][space]
            assert figures["time_ratio"] > 0 and figures["peak_mem_ratio"] > 0
            assert figures["time_ratio_vs_grad_baseline"] > 0
            assert figures["hyperet_work_ms"] > 0 and figures["isolated_time_ratio_vs_grad_baseline"] > 1
            for goal in ("goal_met", "goal_met_vs_grad_baseline", "goal_met_isolated"):
                assert isinstance(figures[goal], bool), goal
    assert r["grad_baseline"]["time_ratio_vs_baseline"] > 0 and r["baseline_copy"]["time_ratio_vs_baseline"] > 0
    flops = r["llava_7b_flops"]
    assert flops["baseline_tflop"] > 0
    for key in ("grad_baseline", *VARIANTS):
        assert flops[key]["flop_ratio"] >= 1.0  # training inside the tower only adds work
    assert flops["full"]["tflop"] > flops["diagonal"]["tflop"]  # the dense M's n³ products are counted
    assert r["machine"]["clock"] == "cpu" and r["machine"]["torch_threads"] == 1


def test_merged_inference_structure(results: dict[str, Any]) -> None:
    r = results["merged_inference"]
    assert r["time_ratio"] > 0 and r["unmerged_time_ratio"] > 0 and r["noise_time_ratio"] > 0
    q1, q3 = r["time_ratio_quartiles"]
    assert 0 < q1 <= q3
    assert isinstance(r["goal_met"], bool)
    assert r["max_logit_diff"] < 1e-3  # the exported (merged, saved, reloaded) model computes the same function


def test_step_overhead_batch_scaling_structure() -> None:
    from benchmarks import step_overhead

    result = step_overhead.batch_scaling([1, 2], tiny=True)
    check_figures(result)
    assert set(result["batch_scaling"]) == {"1", "2"}
    for row in result["batch_scaling"].values():
        assert row["time_ratio_vs_grad_baseline"] > 0 and isinstance(row["goal_met"], bool)
    assert "| 2 |" in step_overhead.format_table(result)


def test_data_throughput_structure(results: dict[str, Any]) -> None:
    r = results["data_throughput"]
    assert r["throughput_ratio"] > 0 and r["data_samples_per_s"] > 0 and r["step_samples_per_s"] > 0
    assert r["getitem_ms_per_sample"] > 0 and r["setup_ms_per_sample"] > 0 and r["collate_ms_per_batch"] > 0
    assert r["workers_for_goal"] >= 1
    assert isinstance(r["goal_met"], bool)


def test_retrieval_eval_structure(results: dict[str, Any]) -> None:
    from benchmarks import retrieval_eval

    r = results["retrieval_eval"]
    assert r["tiny"] and r["in_process"] and r["texts"] == r["images"] * r["captions"]
    figures = r["runs"][str(r["default_chunk_size"])]
    assert figures["eval_wall_s"] > 0 and figures["peak_rss_mib"] > 0 and figures["rss_before_update_mib"] > 0
    assert isinstance(figures["goal_met"], bool) and isinstance(r["goal_met"], bool)
    assert f"| {r['default_chunk_size']} (default) |" in retrieval_eval.format_table(r)
    # the path of the quick and full runs: a fresh spawned process per chunk size
    fresh = retrieval_eval.in_fresh_process(retrieval_eval.TINY, 7)
    check_figures(fresh)
    assert fresh["chunk_size"] == 7 and fresh["r_mean"] == pytest.approx(figures["r_mean"])


def test_gpu_step_code_path_on_cpu() -> None:
    from benchmarks import gpu_step

    result = gpu_step.run(tiny=True)
    check_figures(result)
    assert result["no_hyperet"]["tflops_per_step"] > 0 and result["time_ratio"] > 0
    assert gpu_step.format_table(result).strip()


def test_fsdp_step_on_two_cpu_processes(tmp_path: Path) -> None:
    """The FSDP2 benchmark's code path, launched as on GPUs (torchrun, 2 processes) at the tiny shape with gloo."""
    import subprocess

    out = tmp_path / "fsdp_step.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fsdp_step.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [str(script), "--tiny", "--activation-checkpointing", "--json", str(out)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    check_figures(figures)
    assert figures["world_size"] == 2 and figures["tflops_per_step_per_rank"] > 0
    assert figures["activation_checkpointing"] is True
    assert "| 2 |" in result.stdout  # rank 0 printed the table, once
    assert result.stdout.count("FSDP2 cpu") == 1


def test_gpu_step_is_skipped_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: gpu_step runs")
    assert bench_run.run_one("gpu_step", quick=True) == {"skipped": "no CUDA device"}


def test_time_ratios_are_named_with_ratio(results: dict[str, Any]) -> None:
    assert "time_ratio" in results["step_overhead"]["diagonal"]["hyperbolic"]
    assert "time_ratio" in results["merged_inference"] and "unmerged_time_ratio" in results["merged_inference"]
    for name in ("adapter_ops", "step_overhead", "merged_inference"):
        assert time_ratio_keys(results[name]), name
        assert "interleaved" in results[name]["time_method"], name


def test_skipped_and_failed_benchmarks_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import gpu_step

    monkeypatch.setattr(gpu_step, "available", lambda: "no CUDA device")
    assert bench_run.run_one("gpu_step", quick=True) == {"skipped": "no CUDA device"}
    assert "skipped" in bench_run.render("gpu_step", {"skipped": "no CUDA device"})


def test_script_entry_point_prints_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from benchmarks import adapter_ops, gpu_step

    out = tmp_path / "adapter_ops.json"
    assert adapter_ops.main(["--quick", "--sizes", "16", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    check_figures(figures)
    assert "machine: " in capsys.readouterr().out
    if gpu_step.available():  # no CUDA: the script says why and succeeds
        assert gpu_step.main([]) == 0
        assert "skipped: " in capsys.readouterr().out
