"""Radius as uncertainty for the alignment family, end to end on a tiny trained checkpoint: ``fit`` → ``test`` (its
per-specificity-level radius and Spearman metrics, recall without '@') → ``radius`` on the same checkpoint (per image
and per caption radius, specificity table, reliability bins, the radius-sorted grid, MLflow), which must agree with
the test stage on the same images."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from PIL import Image

from lit_hyperet.__main__ import main
from lit_hyperet.models.blip2 import make_tiny_blip2_itm
from lit_hyperet.tasks.captions.demo import FILE_NAME, make_caption_demo_data

TEST_IMAGES = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny alignment model trained for a few steps on the caption demo data, tested once."""
    root = tmp_path_factory.mktemp("alignment_radius")
    model = make_tiny_blip2_itm(root / "model", seed=0)
    data = make_caption_demo_data(root / "data", num_images=64, seed=0)
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 3,
            "max_epochs": -1,
            "val_check_interval": 3,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root / "run"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.MLFlowLogger",
                "init_args": {"experiment_name": "alignment_radius_test"},
            },
        },
        "checkpoint": {"dirpath": str(root / "run" / "checkpoints")},
        "model": {
            "class_path": "lit_hyperet.HyperbolicAlignmentModule",
            "init_args": {
                "model": {
                    "class_path": "lit_hyperet.models.blip2.TinyBlip2Retrieval",
                    "init_args": {"path": str(model)},
                },
                "space": "lorentz",
                "lr": 1e-3,
            },
        },
        "data": {
            "class_path": "lit_hyperet.data.CaptionDataModule",
            "init_args": {
                "annotations": str(data / FILE_NAME),
                "image_root": str(data),
                "batch_size": 16,
                "eval_batch_size": 5,  # several evaluation batches
                "max_samples": {"train": 32, "val": 5, "test": TEST_IMAGES},
            },
        },
    }
    path = root / "alignment.yaml"
    path.write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        assert main(["fit", "--config", str(path)]) == 0
        ckpt = root / "run" / "checkpoints" / "last.ckpt"
        assert main(["test", "--config", str(path), "--ckpt_path", str(ckpt)]) == 0
    return {"root": root, "config": path, "ckpt": ckpt, "uri": uri}


def logged_metrics(uri: str, stage: str) -> dict[str, float]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("alignment_radius_test")
    (run,) = [
        r for r in client.search_runs([experiment.experiment_id]) if any(k.startswith(stage) for k in r.data.metrics)
    ]
    return dict(run.data.metrics)


def test_radius_command_on_a_trained_alignment_checkpoint(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = str(trained["uri"])
    tested = logged_metrics(uri, "test/")
    # the test stage logs what the sweep's table needs (MLflow stores recall without '@')
    for name in ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "r_mean", "radius_saturated_fraction"):
        assert f"test/{name}" in tested, name
    levels = [f"test/radius_text_level{k}_mean" for k in range(4)]
    assert set(levels) <= set(tested) and "test/radius_text_specificity_spearman" in tested
    assert not any("@" in name for name in tested)

    out = tmp_path / "radius"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(trained["root"])
    args = ["radius", "--config", str(trained["config"]), "--ckpt", str(trained["ckpt"]), "--split", "test"]
    assert main([*args, "--out", str(out), "--bins", "2", "--name", "tiny"]) == 0
    assert "tiny: 8 images, 32 captions (lorentz" in capsys.readouterr().out

    images = pd.read_csv(out / "radius_images.csv")
    captions = pd.read_csv(out / "radius_captions.csv")
    assert len(images) == TEST_IMAGES and (images["queries"] == 8).all()
    assert len(captions) == 4 * TEST_IMAGES and sorted(set(captions["specificity"])) == [0, 1, 2, 3]
    # the quantities and their normalisation: norm_radius = tanh(sqrt(c) rad / 2) = sqrt(c) ball_norm, c = 1 here
    assert ((captions["norm_radius"] - (captions["rad"] / 2).map(math.tanh)).abs() < 1e-9).all()
    assert (
        (images["image_rad_min"] <= images["image_rad_mean"]) & (images["image_rad_mean"] <= images["image_rad_max"])
    ).all()

    # the same images and captions as the test stage: the same recall, level means, Spearman and saturation
    summary = json.loads((out / "radius_summary.json").read_text())
    run = summary["runs"]["tiny"]
    for name in ("i2t_R1", "i2t_R5", "t2i_R1", "t2i_R10", "r_mean"):
        assert run["recall"][name] == pytest.approx(tested[f"test/{name}"], abs=1e-6), name
    assert 100 * images["correct"].mean() == pytest.approx(tested["test/i2t_R1"])
    assert 100 * captions["correct"].mean() == pytest.approx(tested["test/t2i_R1"])
    specificity = pd.read_csv(out / "radius_specificity.csv")
    for row in specificity.itertuples():
        assert row.rad_mean == pytest.approx(tested[f"test/radius_text_level{row.specificity}_mean"], rel=1e-5)
        assert row.captions == TEST_IMAGES
    rho = captions["rad"].rank().corr(captions["specificity"].rank())  # Spearman: Pearson of average ranks
    assert specificity["spearman"].iloc[0] == pytest.approx(rho, abs=1e-6)
    assert rho == pytest.approx(tested["test/radius_text_specificity_spearman"], abs=1e-5)
    assert "normalisation" in summary and "tanh" in summary["quantities"]["norm_radius"]

    # reliability: equal-count radius bins of images and of captions, hit rates in percent
    bins = pd.read_csv(out / "reliability.csv")
    assert bins.groupby("run")["n"].sum().to_dict() == {"tiny images": TEST_IMAGES, "tiny captions": 4 * TEST_IMAGES}
    assert (bins["accuracy"] == 100 * bins["correct"] / bins["n"]).all()
    for png in ("radius_grid.png", "reliability.png", "radius_specificity.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and image.width > 200
    assert "| tiny | 3 | 8 |" in (out / "radius_specificity.md").read_text()

    client = mlflow.MlflowClient(tracking_uri=uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("lit_hyperet_radius").experiment_id])
    assert logged.data.metrics["tiny/images"] == TEST_IMAGES
    assert logged.data.metrics["tiny/caption_rad_level3_mean"] == pytest.approx(specificity["rad_mean"].iloc[3])
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"radius_captions.csv", "radius_specificity.md", "radius_grid.png", "reliability.csv"} <= artifacts


def test_llava_token_options_are_refused_for_an_alignment_model(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(trained["root"])
    args = ["radius", "--config", str(trained["config"]), "--projector", "--no-mlflow", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "image-text alignment model: --projector only apply to LLaVA" in err and "Traceback" not in err


def test_any_caption_set_uses_word_counts_and_levels_are_required_when_asked(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads((trained["root"] / "data" / FILE_NAME).read_text())
    for image in document["images"]:
        for sentence in image["sentences"]:
            sentence.pop("specificity")
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(document))
    monkeypatch.chdir(trained["root"])
    args = ["radius", "--config", str(trained["config"]), "--ckpt", str(trained["ckpt"]), "--no-mlflow"]
    args += ["--override", f"data.init_args.annotations={plain}", "--split", "test", "--max-samples", "3"]
    assert main([*args, "--specificity", "level", "--out", str(tmp_path / "level")]) == 2
    assert "has no caption specificity levels" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "words"), "--grid", "0"]) == 0
    captions = pd.read_csv(tmp_path / "words" / "radius_captions.csv")
    assert len(captions) == 12 and (captions["specificity"] == captions["caption"].str.split().str.len()).all()
    assert "the caption's word count" in (tmp_path / "words" / "radius_specificity.md").read_text()
    assert not (tmp_path / "words" / "radius_grid.png").exists()
