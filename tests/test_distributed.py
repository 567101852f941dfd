"""Distributed training that runs: DDP and FSDP2 with 2 CPU processes (gloo, loopback), resume, bf16, two nodes; the
alignment module (BLIP-2 retrieval) under DDP and FSDP2.

One run of each kind is shared by the tests (module-scoped cache). The demo data of the session has 72 training
problems: 36 per rank, 3 batches of 16 / 16 / 4 (padded batches), so step 3 ends the first epoch; the killed run's
checkpoint at step 2 lies inside it.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
STEPS = 5
EPOCH_STEPS = 3  # steps per epoch per rank (see the module docstring)
KILL_AFTER = 2  # a checkpoint inside the first epoch
# Large enough that clamps fire: the HyperET report at validation end runs the clamped chain and has non-zero numbers.
CURVATURE = 1000.0
TIMEOUT_S = 240  # each launch; a hung collective fails the test instead of the CI job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_flags(out: Path, steps: int, val_every: int) -> list[str]:
    """The trainer flags every 2-process CPU fit here shares: output dirs, CPU fp32, ``steps`` steps, one validation
    batch per rank every ``val_every`` steps, no progress bar."""
    return [
        *("--trainer.default_root_dir", str(out), "--checkpoint.dirpath", str(out / "checkpoints")),
        *("--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"),
        *("--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(val_every)),
        *("--trainer.limit_val_batches", "1"),
    ]


def fit_args(tiny_model_dir: Path, data_dir: Path, out: Path, strategy: str, steps: int) -> list[str]:
    """A 2-process CPU fit of the demo with the strategy config; validation (1 batch per rank) at step 3."""
    return [
        "fit",
        "--config",
        str(CONFIGS / "demo.yaml"),
        "--config",
        str(CONFIGS / "strategy" / f"{strategy}.yaml"),
        "--model.init_args.model.init_args.path",
        str(tiny_model_dir),
        "--data.init_args.data_dir",
        str(data_dir),
        *run_flags(out, steps, EPOCH_STEPS),
        "--trainer.log_every_n_steps",
        "1",
        "--model.init_args.hyperet.curvature",
        str(CURVATURE),
        "--trainer.logger.init_args.run_name",
        out.name,
        "--trainer.callbacks+=helpers.rank_state.SaveTrainableStatePerRank",
        f"--trainer.callbacks.out_dir={out / 'ranks'}",
    ]


#: Set by a launcher that already ran (a scheduler's job, an in-process Lightning run): a child inheriting them would
#: wait for ranks nobody starts.
LAUNCHER_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def _env(out: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES},
        "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "GLOO_SOCKET_IFNAME": "lo",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }


def _check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])


def launch(args: list[str], out: Path, killed: bool = False) -> None:
    """One node: Lightning starts the second process itself. ``killed``: the run must die (SIGKILL), not finish."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "lit_hyperet", *args, "--trainer.devices", "2"]
    result = subprocess.run(command, cwd=out, env=_env(out), capture_output=True, text=True, timeout=TIMEOUT_S)
    if killed:
        assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-4000:])
    else:
        _check(result)


def launch_two_nodes(args: list[str], out: Path) -> None:
    """Two nodes on one machine: two torchrun launchers meeting at a c10d rendezvous on 127.0.0.1. Both start on a
    fresh sqlite MLflow store at the same moment (created under a file lock)."""
    out.mkdir(parents=True, exist_ok=True)
    env, port = _env(out), _free_port()
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        f"two-nodes-{port}",
        "--local-addr",
        "127.0.0.1",
        "--max-restarts",
        "0",
        "-m",
        "lit_hyperet",
        *args,
        "--trainer.num_nodes",
        "2",
        "--trainer.devices",
        "1",
    ]
    nodes = [
        subprocess.Popen(torchrun, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        results = [node.communicate(timeout=TIMEOUT_S) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (stdout, stderr) in zip(nodes, results, strict=True):
        _check(subprocess.CompletedProcess(torchrun, node.returncode, stdout, stderr))


class Run:
    """A finished run's outputs: per-rank losses and final trainable tensors, checkpoint, MLflow record."""

    def __init__(self, out: Path) -> None:
        self.out = out
        files = [out / "ranks" / f"rank{r}.pt" for r in (0, 1)]
        self.ranks = [torch.load(f, weights_only=True) for f in files if f.exists()]  # none for a killed run
        self.last = out / "checkpoints" / "last.ckpt"

    @property
    def losses(self) -> dict[int, torch.Tensor]:
        return self.ranks[0]["losses"]

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.ranks[0]["state"]

    def mlflow_run(self, experiment_name: str = "lit_hyperet_demo") -> Any:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{self.out / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(experiment_name)
        (run,) = client.search_runs([experiment.experiment_id])
        return run


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    """``runs(name)``: the named run, launched on first use and shared by every test of this module."""
    base = tmp_path_factory.mktemp("distributed")
    done: dict[str, Run] = {}

    def args(name: str, strategy: str, steps: int) -> list[str]:
        return fit_args(tiny_model_dir, demo_data_dir, base / name, strategy, steps)

    recipes: dict[str, Callable[[], None]] = {
        "ddp": lambda: launch(args("ddp", "ddp", STEPS), base / "ddp"),
        "fsdp": lambda: launch(args("fsdp", "fsdp", STEPS), base / "fsdp"),
        "fsdp_killed": lambda: launch(
            [
                *args("fsdp_killed", "fsdp", STEPS),
                "--checkpoint.every_n_train_steps",
                str(KILL_AFTER),
                "--trainer.callbacks+=helpers.rank_state.KillAtStep",
                f"--trainer.callbacks.step={KILL_AFTER}",
            ],
            base / "fsdp_killed",
            killed=True,
        ),
        "fsdp_bf16": lambda: launch(
            [*args("fsdp_bf16", "fsdp", 2), "--trainer.precision", "bf16-mixed"], base / "fsdp_bf16"
        ),
        "fsdp_two_nodes": lambda: launch_two_nodes(args("fsdp_two_nodes", "fsdp", STEPS), base / "fsdp_two_nodes"),
    }

    def get(name: str) -> Run:
        if name == "fsdp_resumed":
            killed = get("fsdp_killed")
            resumed = base / "fsdp_resumed"
            launch([*args("fsdp_resumed", "fsdp", STEPS), "--ckpt_path", str(killed.last)], resumed)
            done[name] = Run(resumed)
        if name not in done:
            recipes[name]()
            done[name] = Run(base / name)
        return done[name]

    return get


def assert_same_tensors(a: dict[Any, torch.Tensor], b: dict[Any, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def single_process_trainable(tiny_model_dir: Path) -> tuple[set[str], int]:
    """Trainable names and count of the demo module built in this process without any strategy."""
    from lit_hyperet.cli import cli_main

    cli = cli_main(
        ["--config", str(CONFIGS / "demo.yaml"), "--model.init_args.model.init_args.path", str(tiny_model_dir)],
        run=False,
    )
    cli.model.configure_model()
    params = {n: p for n, p in cli.model.named_parameters() if p.requires_grad}
    return set(params), sum(p.numel() for p in params.values())


def test_ddp_keeps_ranks_identical_and_checkpoint_reloads(runs: Callable[[str], Run]) -> None:
    ddp = runs("ddp")
    assert_same_tensors(ddp.ranks[0]["state"], ddp.ranks[1]["state"])
    from lit_hyperet.lit_module import HyperETLitModule

    reloaded = HyperETLitModule.load_from_checkpoint(ddp.last, map_location="cpu")
    params = dict(reloaded.named_parameters())
    for name, value in ddp.state.items():
        assert torch.equal(params[name], value), name


def test_fsdp2_equals_ddp_and_checkpoints_trainable_tensors(runs: Callable[[str], Run], tiny_model_dir: Path) -> None:
    """Losses per step on both ranks and the final trainable weights equal DDP's bit for bit (float32, CPU: the
    all-gather / reduce-scatter of FSDP2 adds the same two gradients as DDP's all-reduce); the checkpoint holds
    exactly the trainable keys as plain float32 tensors; the module logged the single-process parameter counts."""
    fsdp, ddp = runs("fsdp"), runs("ddp")
    assert sorted(fsdp.losses) == list(range(1, STEPS + 1))
    for rank in (0, 1):
        assert_same_tensors(fsdp.ranks[rank]["losses"], ddp.ranks[rank]["losses"])
    assert_same_tensors(fsdp.state, ddp.state)
    assert_same_tensors(fsdp.ranks[1]["state"], fsdp.state)

    names, count = single_process_trainable(tiny_model_dir)
    assert set(fsdp.state) == names
    checkpoint = torch.load(fsdp.last, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == STEPS
    assert set(checkpoint["state_dict"]) == names
    for name, tensor in checkpoint["state_dict"].items():
        assert type(tensor) is torch.Tensor and tensor.dtype == torch.float32, name
        assert torch.equal(tensor, fsdp.state[name]), name

    params = fsdp.mlflow_run().data.params
    assert int(params["params/trainable"]) == count
    assert int(params["params/hyperet_adapted_modules"]) == 4


def test_fsdp2_validation_generates_and_reports_like_the_unsharded_model(runs: Callable[[str], Run]) -> None:
    """Validation under FSDP2 (generation, metric, HyperET report with clamps firing) gives the unsharded DDP
    model's texts and numbers with the same weights on the same batches."""
    fsdp, ddp = runs("fsdp"), runs("ddp")
    for rank in (0, 1):
        texts = fsdp.ranks[rank]["texts"]
        assert texts and texts == ddp.ranks[rank]["texts"]
    fsdp_run, ddp_run = fsdp.mlflow_run(), ddp.mlflow_run()
    assert fsdp_run.info.status == "FINISHED"
    keys = [k for k in ddp_run.data.metrics if k.startswith(("val/", "hyperet/"))]
    assert "val/Avg" in keys and ddp_run.data.metrics["hyperet/clamp_fraction_mean"] > 0
    for key in keys:
        assert fsdp_run.data.metrics[key] == ddp_run.data.metrics[key], key


def test_fsdp2_resume_from_checkpoint_ends_where_the_uninterrupted_run_ends(runs: Callable[[str], Run]) -> None:
    """A run SIGKILLed after its step-2 checkpoint (inside an epoch), resumed with ``--ckpt_path``, gives the
    uninterrupted losses and weights: the resumable loader continues the DistributedSampler's epoch."""
    uninterrupted, killed, resumed = runs("fsdp"), runs("fsdp_killed"), runs("fsdp_resumed")
    assert not killed.ranks  # it died before the end of fit
    assert torch.load(killed.last, weights_only=True, map_location="cpu")["global_step"] == KILL_AFTER
    assert sorted(resumed.losses) == list(range(KILL_AFTER + 1, STEPS + 1))
    for rank in (0, 1):
        expected = uninterrupted.ranks[rank]["losses"]
        assert_same_tensors(resumed.ranks[rank]["losses"], {s: expected[s] for s in resumed.ranks[rank]["losses"]})
    assert_same_tensors(resumed.state, uninterrupted.state)


def test_fsdp2_bf16_mixed_runs_finite_and_saves_float32(runs: Callable[[str], Run]) -> None:
    bf16, fp32 = runs("fsdp_bf16"), runs("fsdp")
    assert len(bf16.losses) == 2 and all(torch.isfinite(v) for v in bf16.losses.values())
    assert not torch.equal(bf16.losses[2], fp32.losses[2])  # bf16 compute did happen
    checkpoint = torch.load(bf16.last, weights_only=True, map_location="cpu")["state_dict"]
    assert checkpoint.keys() == fp32.state.keys()
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in checkpoint.values())


def test_two_nodes_equal_one_node_with_two_processes(runs: Callable[[str], Run]) -> None:
    two_nodes, one_node = runs("fsdp_two_nodes"), runs("fsdp")
    for rank in (0, 1):
        assert_same_tensors(two_nodes.ranks[rank]["losses"], one_node.ranks[rank]["losses"])
    assert_same_tensors(two_nodes.state, one_node.state)


def test_export_and_merge_from_a_sharded_run(runs: Callable[[str], Run], tmp_path: Path) -> None:
    """A checkpoint of an FSDP2 run exports to a plain HF LLaVA whose weights are the merged ones."""
    from transformers import LlavaForConditionalGeneration

    from lit_hyperet.export import export_checkpoint
    from lit_hyperet.lit_module import HyperETLitModule

    fsdp = runs("fsdp")
    out = export_checkpoint(fsdp.last, tmp_path / "exported")
    plain = LlavaForConditionalGeneration.from_pretrained(out)
    module = HyperETLitModule.load_from_checkpoint(fsdp.last, map_location="cpu")
    q_proj = "model.vision_tower.encoder.layers.0.self_attn.q_proj"
    adapted = module.llava.get_base_model().get_submodule(q_proj)
    assert torch.equal(plain.get_submodule(q_proj).weight, adapted.weight.detach())


def test_radius_from_a_sharded_run(
    runs: Callable[[str], Run], tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """The radius command reads an FSDP2 run's checkpoint with the run's own configs and overrides (demo + fsdp.yaml,
    CPU) in one process."""
    import json

    from lit_hyperet.radius.command import main as radius_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    fsdp = runs("fsdp")
    argv = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONFIGS / "strategy" / "fsdp.yaml")]
    argv += ["--override", f"model.init_args.model.init_args.path={tiny_model_dir}"]
    argv += ["--override", f"data.init_args.data_dir={demo_data_dir}", "--override", "trainer.accelerator=cpu"]
    argv += ["--override", "trainer.devices=2"]
    argv += ["--ckpt", str(fsdp.last), "--max-samples", "4", "--out", str(tmp_path / "radius")]
    assert radius_main(argv) == 0
    summary = json.loads((tmp_path / "radius" / "radius_summary.json").read_text())
    (run,) = summary["runs"].values()
    assert run["counts"]["samples_seen"] == 4


def test_fsdp2_predict_from_checkpoint_equals_one_process(
    runs: Callable[[str], Run], tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """``predict --ckpt_path`` under FSDP2 (checkpoint loaded into the sharded model, ``generate`` on both ranks,
    predictions gathered) writes the predictions of the same checkpoint run in one process (batches of one sample,
    so no padding differs between the two)."""
    import json

    from lit_hyperet.cli import cli_main

    fsdp = runs("fsdp")
    common = ["--config", str(CONFIGS / "demo.yaml")]
    common += ["--model.init_args.model.init_args.path", str(tiny_model_dir), "--data.init_args.data_dir"]
    common += [str(demo_data_dir), "--data.init_args.eval_batch_size", "1", "--ckpt_path", str(fsdp.last)]
    common += ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    sharded = tmp_path / "sharded"
    args = ["predict", *common, "--config", str(CONFIGS / "strategy" / "fsdp.yaml"), "--trainer.accelerator", "cpu"]
    args += ["--trainer.precision", "32-true", "--prediction_writer.output_path", str(sharded / "predictions.json")]
    launch(args, sharded)
    monkeypatch.chdir(tmp_path)
    single = tmp_path / "single" / "predictions.json"
    cli_main(["predict", *common, "--prediction_writer.output_path", str(single)])
    expected = json.loads(single.read_text())
    assert expected and json.loads((sharded / "predictions.json").read_text()) == expected


@pytest.mark.parametrize("caller_owns_group", [False, True])
def test_a_run_ends_the_process_group_it_created_and_keeps_the_callers(
    caller_owns_group: bool, tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """A gloo group left to interpreter shutdown can abort a finished run, so the CLI ends the group its strategy
    created; a group the caller set up before calling the CLI stays the caller's."""
    import torch.distributed as dist
    from helpers.demo_cli import demo_args

    from lit_hyperet.cli import cli_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    if caller_owns_group:
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        args = ["validate", *demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out"), "--trainer.strategy", "ddp"]
        cli_main([*args, "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.limit_val_batches", "1"])
        assert dist.is_initialized() == caller_owns_group
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- alignment

ALIGNMENT_STEPS = 3
ALIGNMENT_RESUME_FROM = 2  # the end of the first epoch (2 steps of 8 images per rank)


def alignment_fit_args(model_dir: Path, data_dir: Path, out: Path, strategy: str) -> list[str]:
    """A 2-process CPU fit of the alignment demo config with the strategy config: the tiny BLIP-2 with HyperET on its
    tower, Poincaré distances, learnt curvature, embedding scale and temperature, ITM with sampled negatives (mined
    among both ranks' pairs); 16 training images per rank in batches of 8; validation at the last step on 8 images
    per rank (recall over all 16, gathered)."""
    from lit_hyperet.tasks.captions.demo import FILE_NAME

    return [
        "fit",
        "--config",
        str(CONFIGS / "alignment_demo.yaml"),
        "--config",
        str(CONFIGS / "strategy" / f"{strategy}.yaml"),
        "--model.init_args.model.init_args.path",
        str(model_dir),
        "--model.init_args.space",
        "poincare_distance",
        "--model.init_args.learn_curvature",
        "true",
        "--model.init_args.hyperet.variant",
        "diagonal",
        "--model.init_args.itm_weight",
        "1.0",
        "--model.init_args.itm_negatives",
        "sampled",
        "--data.init_args.annotations",
        str(data_dir / FILE_NAME),
        "--data.init_args.image_root",
        str(data_dir),
        "--data.init_args.batch_size",
        "8",
        "--data.init_args.eval_batch_size",
        "8",
        "--data.init_args.max_samples",
        '{"train": 32, "val": 16, "test": 16}',
        *run_flags(out, ALIGNMENT_STEPS, ALIGNMENT_STEPS),
        "--trainer.logger.class_path",  # cheaper to start than MLflow's sqlite store
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir",
        str(out / "logs"),
        "--checkpoint.every_n_train_steps",  # every step kept: a resume starts from the step-2 one
        "1",
        "--checkpoint.save_top_k",
        "-1",
        "--trainer.callbacks+=helpers.rank_state.SaveTrainableStatePerRank",
        f"--trainer.callbacks.out_dir={out / 'ranks'}",
    ]


@pytest.fixture(scope="module")
def alignment_runs(tiny_blip2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The same alignment fit under DDP and under FSDP2."""
    from lit_hyperet.tasks.captions.demo import make_caption_demo_data

    base = tmp_path_factory.mktemp("alignment_distributed")
    data = make_caption_demo_data(base / "data", num_images=64, seed=0)
    runs = {}
    for strategy in ("ddp", "fsdp"):
        launch(alignment_fit_args(tiny_blip2_dir, data, base / strategy, strategy), base / strategy)
        runs[strategy] = Run(base / strategy)
    return runs


@pytest.fixture(scope="module")
def alignment_resumed(alignment_runs: dict[str, Run], tiny_blip2_dir: Path) -> Run:
    """The FSDP2 alignment fit resumed with ``--ckpt_path`` from its step-``ALIGNMENT_RESUME_FROM`` checkpoint."""
    fsdp = alignment_runs["fsdp"]
    (checkpoint,) = fsdp.last.parent.glob(f"*-step={ALIGNMENT_RESUME_FROM}.ckpt")
    out = fsdp.out.parent / "fsdp_resumed"
    launch(
        [*alignment_fit_args(tiny_blip2_dir, fsdp.out.parent / "data", out, "fsdp"), "--ckpt_path", str(checkpoint)],
        out,
    )
    return Run(out)


def test_alignment_under_fsdp2_equals_ddp(alignment_runs: dict[str, Run]) -> None:
    """Per-step losses on both ranks, the final trainable tensors (sharded Q-Former side and HyperET; replicated
    query tokens, temperature, curvature and embedding scale, whose gradients FSDP2Strategy averages) and the
    gathered validation recall and radius equal DDP's to float32 rounding; both ranks end with the same tensors.

    The Q-Former's attention key biases are left out of the comparison: their gradient is zero up to rounding (the
    softmax ignores a constant added to every key's score), so AdamW turns rounding differences into whole steps."""
    fsdp, ddp = alignment_runs["fsdp"], alignment_runs["ddp"]
    assert sorted(fsdp.losses) == list(range(1, ALIGNMENT_STEPS + 1))
    for rank in (0, 1):  # each loss holds both ranks' features: both ranks' rounding differences
        torch.testing.assert_close(fsdp.ranks[rank]["losses"], ddp.ranks[rank]["losses"], rtol=1e-5, atol=1e-6)
    assert not torch.equal(fsdp.ranks[0]["losses"][1], fsdp.ranks[1]["losses"][1])  # the ranks saw other batches
    for run, rank in itertools.product((fsdp, ddp), (0, 1)):  # each rank's 8 pairs against both ranks' (BLIP-2)
        assert run.ranks[rank]["metrics"]["train/contrastive_batch"] == 16
        assert math.isfinite(run.ranks[rank]["metrics"]["train/loss_itm"])
    assert_same_tensors(fsdp.ranks[1]["state"], fsdp.state)
    compared = {k: v for k, v in fsdp.state.items() if not k.endswith("attention.key.bias")}
    replicated = ["blip2.query_tokens", "head.log_temperature", "head.log_curvature", "head.log_embedding_scale"]
    assert set(replicated) < set(compared) and any(".matrix." in k for k in compared)  # and HyperET, sharded
    torch.testing.assert_close(compared, {k: ddp.state[k] for k in compared}, rtol=1e-5, atol=1e-6)
    initial = {"head.log_temperature": math.log(0.07), "head.log_curvature": 0.0}
    for name, value in initial.items():  # the head's scalars did train
        assert not math.isclose(float(fsdp.state[name]), value, abs_tol=1e-6), name
    metrics = {k: v for k, v in ddp.ranks[0]["metrics"].items() if k.startswith("val/")}
    assert {"val/i2t_R@1", "val/t2i_R@10", "val/r_mean", "val/radius_text_mean"} <= set(metrics)
    for rank in (0, 1):
        for key, value in metrics.items():
            assert math.isclose(fsdp.ranks[rank]["metrics"][key], value, rel_tol=1e-5, abs_tol=1e-6), key


def test_alignment_fsdp2_checkpoint_holds_full_trainable_tensors_and_loads(alignment_runs: dict[str, Run]) -> None:
    """The FSDP2 run's ``last.ckpt`` holds exactly the trainable tensors, plain and full, and loads back in one
    process onto the rebuilt module."""
    from lit_hyperet.alignment_module import HyperbolicAlignmentModule

    fsdp = alignment_runs["fsdp"]
    checkpoint = torch.load(fsdp.last, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == ALIGNMENT_STEPS
    assert set(checkpoint["state_dict"]) == set(fsdp.state)
    for name, tensor in checkpoint["state_dict"].items():
        assert type(tensor) is torch.Tensor and tensor.shape == fsdp.state[name].shape, name
    module = HyperbolicAlignmentModule.load_from_checkpoint(fsdp.last, map_location="cpu")
    params = dict(module.named_parameters())
    for name, value in fsdp.state.items():
        assert torch.equal(params[name], value), name


def test_alignment_resumed_under_fsdp2_ends_where_the_uninterrupted_run_ends(
    alignment_runs: dict[str, Run], alignment_resumed: Run
) -> None:
    """Resumed from a checkpoint with ``--ckpt_path``, each rank goes on with its own RNG (the ranks' dropout draws
    differ with their captions' lengths): the same losses on both ranks and the same final tensors, bit for bit."""
    uninterrupted = alignment_runs["fsdp"]
    assert sorted(alignment_resumed.losses) == list(range(ALIGNMENT_RESUME_FROM + 1, ALIGNMENT_STEPS + 1))
    for rank in (0, 1):
        resumed = alignment_resumed.ranks[rank]["losses"]
        assert_same_tensors(resumed, {step: uninterrupted.ranks[rank]["losses"][step] for step in resumed})
    assert_same_tensors(alignment_resumed.state, uninterrupted.state)
