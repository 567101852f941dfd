"""Caption data: Karpathy and LAVIS files read into the same records, short errors naming file, record and field, the
datamodule's batch contract, and the synthetic demo dataset."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from helpers.resumable_ddp import resume_rank
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch import seed_everything
from PIL import Image
from transformers import BlipImageProcessorPil

from lit_hyperet.__main__ import main as cli_main
from lit_hyperet.data import CaptionDataModule
from lit_hyperet.data.errors import DataError
from lit_hyperet.data.resumable import ResumableDataLoader
from lit_hyperet.tasks.captions.annotations import karpathy_split, read_karpathy, read_lavis, read_lavis_split
from lit_hyperet.tasks.captions.dataset import collate_captions
from lit_hyperet.tasks.captions.demo import COMBINATIONS, DEMO, make_caption_demo_data
from lit_hyperet.user_errors import ConfigError

# image file -> (Karpathy split, captions); 8 train images (two of them restval), 2 val, 2 test
IMAGES: dict[str, tuple[str, list[str]]] = {
    f"img{i}.png": (split, [f"picture {i} caption {j}" for j in range(1 + i % 3)])
    for i, split in enumerate(
        ["train", "train", "restval", "train", "val", "train", "restval", "test", "train", "val", "train", "test"]
    )
}
TRAIN = [name for name, (split, _) in IMAGES.items() if split in ("train", "restval")]
SIZE = 32


def raises(match: str):
    return pytest.raises(DataError, match=re.escape(match))


def write_images(root: Path, folder: str = "imgs") -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(IMAGES):
        Image.new("RGB", (12, 10), (20 * index, 100, 255 - 20 * index)).save(root / folder / name)


def karpathy_document(filepath: bool = True) -> dict[str, Any]:
    images = []
    for imgid, (name, (split, texts)) in enumerate(IMAGES.items()):
        entry = {"filepath": "imgs", "filename": name} if filepath else {"filename": name}
        sentences = [{"tokens": text.split(), "raw": text + " ", "imgid": imgid, "sentid": 0} for text in texts]
        images.append({**entry, "imgid": imgid, "split": split, "sentids": [0] * len(texts), "sentences": sentences})
    return {"images": images, "dataset": "coco"}


def lavis_documents() -> dict[str, list[dict[str, Any]]]:
    documents: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for imgid, (name, (split, texts)) in enumerate(IMAGES.items()):
        if split in ("train", "restval"):  # one entry per caption
            documents["train"] += [
                {"caption": text, "image": f"imgs/{name}", "image_id": f"coco_{imgid}"} for text in texts
            ]
        else:
            documents[split].append({"image": f"imgs/{name}", "caption": texts})
    return documents


@pytest.fixture
def karpathy(tmp_path: Path) -> Path:
    write_images(tmp_path)
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(karpathy_document()))
    return path


@pytest.fixture
def lavis(tmp_path: Path) -> Path:
    write_images(tmp_path)
    (tmp_path / "annotations").mkdir()
    for split, document in lavis_documents().items():
        (tmp_path / "annotations" / f"coco_karpathy_{split}.json").write_text(json.dumps(document))
    return tmp_path / "annotations" / "coco_karpathy_{split}.json"


@pytest.fixture(scope="module")
def processor() -> SimpleNamespace:
    return SimpleNamespace(image_processor=BlipImageProcessorPil(size={"height": SIZE, "width": SIZE}))


def datamodule(annotations: Path, processor: Any, **kwargs: Any) -> CaptionDataModule:
    kwargs = {"image_root": str(annotations.parent), "batch_size": 3, "eval_batch_size": 2, **kwargs}
    return CaptionDataModule(annotations=str(annotations), processor=processor, **kwargs)


def pairs(batches: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [pair for batch in batches for pair in zip(batch["image_ids"], batch["captions"], strict=True)]


# ------------------------------------------------------------------------------------------------------- reading
def test_karpathy_and_lavis_files_give_the_same_records(karpathy: Path, lavis: Path) -> None:
    splits = read_karpathy(karpathy, karpathy.parent)
    assert set(splits) == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        from_karpathy = [(r.image_path, r.captions) for r in karpathy_split(splits, split, karpathy)]
        from_lavis = [(r.image_path, r.captions) for r in read_lavis_split(lavis, karpathy.parent, split)]
        assert from_karpathy == from_lavis
        expected = [(karpathy.parent / "imgs" / name, tuple(texts)) for name, (s, texts) in IMAGES.items()
                    if s == split or (split == "train" and s == "restval")]  # fmt: skip
        assert from_karpathy == expected  # file order, captions stripped
    first = splits["train"][0]
    assert (first.image_id, first.record, first.image_field) == ("0", "imgid 0", "filename")
    assert read_lavis_split(lavis, karpathy.parent, "val")[0].image_id == "imgs/img4.png"


def test_restval_is_train_and_not_a_split_of_its_own(karpathy: Path) -> None:
    splits = read_karpathy(karpathy, karpathy.parent)
    assert [r.image_path.name for r in splits["train"]] == TRAIN
    assert {"img2.png", "img6.png"} <= {r.image_path.name for r in splits["train"]}
    with raises(f"{karpathy}: no split 'restval' (restval images are part of 'train', the Karpathy convention); "
                "available: test, train, val"):  # fmt: skip
        karpathy_split(splits, "restval", karpathy)


def test_flickr_layout_without_filepath(tmp_path: Path) -> None:
    write_images(tmp_path, folder=".")
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps(karpathy_document(filepath=False)))
    assert read_karpathy(path, tmp_path)["val"][0].image_path == tmp_path / "img4.png"


def test_lavis_train_entries_are_grouped_by_image(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    entries = [("a.jpg", "one"), ("b.jpg", "two"), ("a.jpg", "three")]
    path.write_text(json.dumps([{"caption": c, "image": i, "image_id": n} for n, (i, c) in enumerate(entries)]))
    records = read_lavis(path, tmp_path)
    assert [(r.image_id, r.captions, r.record) for r in records] == [
        ("a.jpg", ("one", "three"), "entry 0"),
        ("b.jpg", ("two",), "entry 1"),
    ]


# ------------------------------------------------------------------------------------------------------ bad input
def _karpathy_with(tmp_path: Path, change) -> Path:
    document = karpathy_document()
    change(document["images"])
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda images: images[3].pop("filename"), "imgid 3: field 'filename': missing"),
        (lambda images: images[3].pop("sentences"), "imgid 3: field 'sentences': missing"),
        (lambda images: images[3].pop("split"), "imgid 3: field 'split': missing"),
        (lambda images: images[3].pop("imgid"), "image 3: field 'imgid': missing"),
        (lambda images: images[3]["sentences"][0].pop("raw"), "imgid 3: field 'sentences[0].raw': missing"),
        (lambda images: images[3]["sentences"][0].update(raw=7), "imgid 3: field 'sentences[0].raw': expected a non"),
        (lambda images: images[3].update(sentences=[]), "imgid 3: field 'sentences': the image has no caption"),
        (lambda images: images[3].update(split="dev"), "imgid 3: field 'split': expected one of train, restval, val"),
        (lambda images: images[3].update(filename=None), "imgid 3: field 'filename': expected a string, got None"),
        (lambda images: images.__setitem__(3, "img3.png"), "image 3: expected a JSON object, got str"),
        (
            lambda images: images[4]["sentences"][-1].update(specificity=2),
            "imgid 4: field 'sentences[0].specificity': expected an int (other sentences of the image have one)",
        ),
    ],
)
def test_bad_karpathy_record_names_file_record_and_field(tmp_path: Path, change, message: str) -> None:
    path = _karpathy_with(tmp_path, change)
    with raises(f"{path}: {message}"):
        read_karpathy(path, tmp_path)


@pytest.mark.parametrize(
    ("split", "change", "message"),
    [
        ("train", lambda entries: entries[2].pop("caption"), "entry 2: field 'caption': missing"),
        ("train", lambda entries: entries[2].pop("image"), "entry 2: field 'image': missing"),
        ("train", lambda entries: entries[2].update(caption=""), "entry 2: field 'caption': expected a non-empty"),
        ("val", lambda entries: entries[1].update(caption=[]), "entry 1: field 'caption': the image has no caption"),
        ("val", lambda entries: entries[1]["caption"].append(None), "entry 1: field 'caption[1]': expected a non"),
        ("test", lambda entries: entries[0].update(image=3), "entry 0: field 'image': expected a relative image path"),
    ],
)
def test_bad_lavis_entry_names_file_record_and_field(lavis: Path, split: str, change, message: str) -> None:
    path = Path(str(lavis).replace("{split}", split))
    entries = json.loads(path.read_text())
    change(entries)
    path.write_text(json.dumps(entries))
    with raises(f"{path}: {message}"):
        read_lavis_split(lavis, lavis.parent.parent, split)


def test_malformed_json_names_line_and_column(tmp_path: Path, lavis: Path) -> None:
    path = tmp_path / "dataset_coco.json"
    path.write_text('{"images": [\n {"imgid": 0,, "split": "train"}]}')
    with raises(f"{path}: malformed JSON at line 2 column 14: Expecting property name"):
        read_karpathy(path, tmp_path)
    train = lavis.parent / "coco_karpathy_train.json"
    train.write_text('[{"image": "a.jpg"}\n{"image": "b.jpg"}]')
    with raises(f"{train}: malformed JSON at line 2 column 1: Expecting ','"):
        read_lavis_split(lavis, tmp_path, "train")


def test_wrong_top_level_structure(tmp_path: Path) -> None:
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps([{"filename": "a.png"}]))
    with raises(f"{path}: field 'images': expected an object with a list of images"):
        read_karpathy(path, tmp_path)
    path.write_text(json.dumps({"images": []}))
    with raises(f"{path}: expected a list of {{image, caption}} entries, got dict"):
        read_lavis(path, tmp_path)


def test_unknown_split_lists_the_available_ones(karpathy: Path, lavis: Path, processor: SimpleNamespace) -> None:
    with raises(f"{karpathy}: no split 'validation'; available: test, train, val"):
        datamodule(karpathy, processor, val_split="validation").setup("validate")
    missing = lavis.parent / "coco_karpathy_dev.json"
    dm = datamodule(lavis, processor, format="lavis", image_root=str(lavis.parent.parent), test_split="dev")
    with raises(f"{missing}: no split 'dev': file not found; splits with a file ({lavis}): test, train, val"):
        dm.setup("test")


def test_missing_images_are_counted_and_the_first_named(karpathy: Path, processor: SimpleNamespace) -> None:
    root = karpathy.parent
    for name in ("img1.png", "img3.png"):
        (root / "imgs" / name).unlink()
    with raises(
        f"{karpathy}: 2 of 8 images of split 'train' not found: {karpathy}: imgid 1: field 'filename': "
        f"{root / 'imgs' / 'img1.png'}; {karpathy}: imgid 3: field 'filename': {root / 'imgs' / 'img3.png'}"
    ):
        datamodule(karpathy, processor).setup("fit")
    datamodule(karpathy, processor).setup("validate")  # val has all its images
    for name in TRAIN:
        (root / "imgs" / name).unlink(missing_ok=True)
    with pytest.raises(DataError, match=r"8 of 8 images of split 'train' not found: (.*?imgid \d+.*?){5}; …$"):
        datamodule(karpathy, processor).setup("fit")


def test_bad_options_are_config_errors(karpathy: Path, lavis: Path) -> None:
    with pytest.raises(ConfigError, match="data.format must be 'karpathy' or 'lavis', got 'coco'"):
        CaptionDataModule(str(karpathy), str(karpathy.parent), format="coco")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=re.escape("format 'lavis' needs a path with {split}")):
        CaptionDataModule(str(karpathy), str(karpathy.parent), format="lavis")
    with pytest.raises(ConfigError, match=re.escape("a path with {split} is for format 'lavis'")):
        CaptionDataModule(str(lavis), str(karpathy.parent))
    with pytest.raises(ConfigError, match="data.max_samples keys must be among train, val, test, got predict"):
        CaptionDataModule(str(karpathy), str(karpathy.parent), max_samples={"predict": 2})


# ----------------------------------------------------------------------------------------------------- datamodule
def test_train_and_eval_batches_follow_the_contract(karpathy: Path, processor: SimpleNamespace) -> None:
    dm = datamodule(karpathy, processor)
    dm.setup("fit")
    dm.setup("test")
    seed_everything(0)
    train = list(dm.train_dataloader())
    assert [len(b["image_ids"]) for b in train] == [3, 3, 2]
    for batch in train:
        assert set(batch) == {"pixel_values", "captions", "image_ids"}
        assert batch["pixel_values"].dtype == torch.float32
        assert batch["pixel_values"].shape == (len(batch["image_ids"]), 3, SIZE, SIZE)
        assert all(isinstance(caption, str) for caption in batch["captions"])
    texts = {str(i): texts for i, (_, texts) in enumerate(IMAGES.values())}
    assert sorted(int(i) for i, _ in pairs(train)) == sorted(int(i) for i in texts if f"img{i}.png" in TRAIN)
    assert all(caption in texts[image_id] for image_id, caption in pairs(train))
    for role, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        batches = list(loader)
        assert len(batches) == 1
        batch = batches[0]
        assert set(batch) == {"pixel_values", "captions", "image_ids", "specificity"}
        assert batch["specificity"] == [None, None]  # the file gives no specificity levels
        assert batch["pixel_values"].shape == (2, 3, SIZE, SIZE) and batch["pixel_values"].dtype == torch.float32
        expected = [(str(i), texts) for i, (s, texts) in enumerate(IMAGES.values()) if s == role]
        assert list(zip(batch["image_ids"], batch["captions"], strict=True)) == expected  # all captions, in file order


def test_only_train_is_shuffled_and_captions_are_drawn_per_list(karpathy: Path, processor: SimpleNamespace) -> None:
    dm = datamodule(karpathy, processor, eval_batch_size=1)
    dm.setup("fit")
    seed_everything(0)
    train_loader = dm.train_dataloader()
    epochs = [pairs(list(train_loader)) for _ in range(30)]
    file_order = [str(i) for i, name in enumerate(IMAGES) if name in TRAIN]
    orders = [[image_id for image_id, _ in e] for e in epochs]
    assert all(sorted(order) == sorted(file_order) for order in orders)  # each image once per epoch
    assert sum(order == file_order for order in orders) == 0 and len({tuple(o) for o in orders}) > 1
    drawn = Counter(pair for e in epochs for pair in e)
    for image_id in file_order:  # every caption of every image is drawn at some epoch
        assert {c for i, c in drawn if i == image_id} == set(IMAGES[f"img{image_id}.png"][1])
    val_orders = [[i for i, _ in pairs(list(dm.val_dataloader()))] for _ in range(3)]
    assert val_orders == [["4", "9"]] * 3


def test_seed_everything_fixes_order_and_captions(karpathy: Path, processor: SimpleNamespace) -> None:
    def run(seed: int, num_workers: int = 0) -> list[list[tuple[str, Any]]]:
        dm = datamodule(karpathy, processor, num_workers=num_workers)
        dm.setup("fit")
        seed_everything(seed)
        loader = dm.train_dataloader()
        return [pairs(list(loader)) for _ in range(3)]

    first = run(5)
    assert run(5) == first
    assert run(6) != first
    assert run(5, num_workers=1) == first  # drawn in the sampler, not in the workers


def test_training_resumes_inside_an_list(karpathy: Path, processor: SimpleNamespace) -> None:
    dm = datamodule(karpathy, processor, batch_size=2)
    dm.setup("fit")
    seed_everything(3)
    whole = [pairs([b]) for b in dm.train_dataloader()]
    seed_everything(3)
    loader = dm.train_dataloader()
    iterator = iter(loader)
    before = [pairs([next(iterator)]) for _ in range(2)]
    state = loader.state_dict()
    seed_everything(99)  # a new process: other RNG states until the loader restores them
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    assert before + [pairs([b]) for b in resumed] == whole


def test_each_rank_resumes_from_its_own_rng_states(tmp_path: Path) -> None:
    # fork: the children inherit the imported modules (spawn would re-import torch, several seconds)
    mp.start_processes(resume_rank, args=(2, str(tmp_path)), nprocs=2, start_method="fork")
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result == {"same_rest": True, "same_draws": True}, rank


def test_ranks_split_the_epoch_under_lightnings_distributed_wrapper(karpathy: Path, processor: SimpleNamespace) -> None:
    dm = datamodule(karpathy, processor, batch_size=2)
    dm.setup("fit")
    shares = []
    for rank in (0, 1):
        seed_everything(4)
        wrapper = DistributedSamplerWrapper(dm.train_dataloader().sampler, num_replicas=2, rank=rank, shuffle=False)
        loader = ResumableDataLoader(dm.datasets["train"], batch_size=2, sampler=wrapper, collate_fn=collate_captions)
        shares.append(pairs(list(loader)))
    assert len(shares[0]) == len(shares[1]) == 4
    assert sorted(i for i, _ in shares[0] + shares[1]) == sorted(str(i) for i, n in enumerate(IMAGES) if n in TRAIN)


def test_a_lightning_fit_takes_the_batches(karpathy: Path, processor: SimpleNamespace) -> None:
    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.seen: dict[str, list[Any]] = {"train": [], "val": []}

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
            self.seen["train"] += batch["captions"]
            return self.weight * batch["pixel_values"].mean() + self.weight

        def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
            self.seen["val"] += batch["captions"]

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)  # fmt: skip
    trainer.fit(probe, datamodule=datamodule(karpathy, processor))
    assert len(probe.seen["train"]) == len(TRAIN) and all(isinstance(c, str) for c in probe.seen["train"])
    assert probe.seen["val"] == [IMAGES["img4.png"][1], IMAGES["img9.png"][1]]


def test_max_samples_per_role_and_for_every_role(karpathy: Path, processor: SimpleNamespace) -> None:
    dm = datamodule(karpathy, processor, max_samples={"train": 3, "val": 1})
    dm.setup(None)
    assert sorted(i for i, _ in pairs(list(dm.train_dataloader()))) == ["0", "1", "2"]
    assert [i for i, _ in pairs(list(dm.val_dataloader()))] == ["4"]
    assert [i for i, _ in pairs(list(dm.test_dataloader()))] == ["7", "11"]
    dm = datamodule(karpathy, processor, max_samples=1)
    dm.setup(None)
    assert [len(pairs(list(loader))) for loader in (dm.train_dataloader(), dm.val_dataloader())] == [1, 1]


def test_lavis_datamodule_and_absent_splits(lavis: Path, processor: SimpleNamespace) -> None:
    dm = datamodule(lavis, processor, format="lavis", image_root=str(lavis.parent.parent), val_split=None)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (3, 3, SIZE, SIZE)
    assert all(image_id.startswith("imgs/img") for image_id in batch["image_ids"])


def test_setup_without_processor_is_a_clear_runtime_error(karpathy: Path, processor: SimpleNamespace) -> None:
    dm = CaptionDataModule(str(karpathy), str(karpathy.parent))
    with pytest.raises(RuntimeError, match="no processor with an image_processor. The CLI links"):
        dm.setup("fit")
    dm.set_processor(processor)
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="call setup"):
        dm.test_dataloader()


# ----------------------------------------------------------------------------------------------------------- demo
def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a, b, c = (make_caption_demo_data(tmp_path / name, num_images=20, seed=seed) for name, seed in
               (("a", 1), ("b", 1), ("c", 2)))  # fmt: skip
    assert tree(a) == tree(b)
    assert len(tree(a)) == 21
    assert (a / "dataset_demo.json").read_bytes() != (c / "dataset_demo.json").read_bytes()
    assert (a / "images" / "demo_00000.png").read_bytes() != (c / "images" / "demo_00000.png").read_bytes()


def test_demo_through_the_command_and_the_datamodule(tmp_path: Path, processor: SimpleNamespace) -> None:
    assert cli_main(["make-caption-demo-data", "--out", str(tmp_path), "--num-images", "200", "--seed", "0"]) == 0
    document = json.loads((tmp_path / "dataset_demo.json").read_text())
    assert Counter(image["split"] for image in document["images"]) == {"train": 104, "val": 48, "test": 48}
    for image in document["images"]:
        assert image["filepath"] == "images" and (tmp_path / "images" / image["filename"]).is_file()
        raw = [sentence["raw"] for sentence in image["sentences"]]
        colour, shape = raw[2].split()[1:]
        assert raw[:3] == ["a shape", f"a {colour} shape", f"a {colour} {shape}"]
        assert raw[3] in {f"a {colour} {shape} {phrase}" for phrase in ("on the left", "on the right", "at the top",
                                                                        "at the bottom")}  # fmt: skip
    for split in ("val", "test"):  # every colour × shape × position
        specific = {i["sentences"][3]["raw"] for i in document["images"] if i["split"] == split}
        assert len(specific) == len(COMBINATIONS)
    with Image.open(tmp_path / "images" / "demo_00000.png") as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
    dm = datamodule(tmp_path / "dataset_demo.json", processor, image_root=str(tmp_path), eval_batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, SIZE, SIZE)
    assert [len(texts) for texts in batch["captions"]] == [4] * 8
    assert batch["specificity"] == [[0, 1, 2, 3]] * 8  # sentence k is level k


def test_demo_is_written_only_to_its_own_path(tmp_path: Path, monkeypatch, processor: SimpleNamespace) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "data" / "dataset_coco.json"
    with raises(f"annotations {other}: file not found (expected a Karpathy split file such as dataset_coco.json"):
        datamodule(other, processor, make_demo_if_missing=True).setup("fit")
    with raises(f"annotations {DEMO}: file not found"):
        CaptionDataModule(DEMO, "outputs/caption_demo", processor=processor).setup("fit")
    assert list(tmp_path.iterdir()) == []  # nothing written
    dm = CaptionDataModule(DEMO, "outputs/caption_demo", make_demo_if_missing=True, processor=processor)
    dm.setup("fit")
    assert (tmp_path / DEMO).is_file()
    assert len(dm.datasets["train"]) == 462 and len(dm.datasets["val"]) == 57
