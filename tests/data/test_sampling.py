"""Data order, augmentation and mask draws are functions of (seed, epoch, item); shards split the data by rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bundled_data import CT, LABELS, SAM_MED2D_DEMO, make_nnunet
from torch.utils.data import DistributedSampler

from zoo.data import NiftiDataModule3D, SAMed2DDataModule
from zoo.data.sa_med2d import ImageMasksDataset, class_name_of
from zoo.data.sampling import ItemKey, SeededSampler, item_seed
from zoo.processors import processor_from_spec

SPLEEN, LIVER = 1, 5


def keys(sampler: SeededSampler, epoch: int) -> list[ItemKey]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_the_order_is_a_function_of_seed_and_epoch():
    data = range(50)
    first, again = SeededSampler(data, seed=3), SeededSampler(data, seed=3)
    assert keys(first, 0) == keys(again, 0)
    assert [k.index for k in keys(first, 0)] != [k.index for k in keys(first, 1)]
    assert [k.index for k in keys(first, 0)] != [k.index for k in keys(SeededSampler(data, seed=4), 0)]
    assert sorted(k.index for k in keys(first, 1)) == list(range(50))


def test_every_key_carries_the_seed_of_its_item_in_this_epoch():
    sampler = SeededSampler(range(10), seed=7)
    assert all(key.seed == item_seed(7, 2, key.index) for key in keys(sampler, 2))
    assert item_seed(7, 2, 0) != item_seed(7, 3, 0) != item_seed(8, 2, 0)


def test_evaluation_order_is_the_index_order():
    assert [k.index for k in keys(SeededSampler(range(6), shuffle=False), 5)] == list(range(6))


def test_ranks_read_disjoint_shards_of_equal_length_that_cover_the_data():
    shards = [keys(SeededSampler(range(10), seed=1, num_replicas=2, rank=r), 4) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert {k.index for k in shards[0]}.isdisjoint(k.index for k in shards[1])
    assert {k.index for shard in shards for k in shard} == set(range(10))


def test_an_uneven_length_is_padded_so_every_rank_takes_as_many_steps():
    shards = [keys(SeededSampler(range(5), num_replicas=2, rank=r), 0) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 3
    assert {k.index for shard in shards for k in shard} == set(range(5))


def test_without_a_process_group_one_process_reads_everything():
    sampler = SeededSampler(range(7))
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (1, 0, 7)


def test_lightning_keeps_the_sampler_because_it_is_a_distributed_sampler():
    # Lightning only injects its own sampler when the loader's sampler is not a DistributedSampler.
    assert isinstance(SeededSampler(range(3)), DistributedSampler)


# 3D: random crops and flips --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def liver_module(tmp_path_factory) -> NiftiDataModule3D:
    root = make_nnunet(tmp_path_factory.mktemp("nnunet") / "Dataset010", {"abdomen": (CT, LABELS)})
    module = NiftiDataModule3D(root, val_fraction=0.0, classes=[LIVER, SPLEEN], crop_size=24, seed=11)
    module.setup("fit")
    return module


def first_epoch_batches(module, epoch: int) -> list[dict]:
    loader = module.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_a_3d_epoch_replays_exactly_from_the_seed(liver_module):
    torch.manual_seed(0)
    first = first_epoch_batches(liver_module, 1)
    torch.manual_seed(1)  # the global generator plays no part
    again = first_epoch_batches(liver_module, 1)
    for a, b in zip(first, again, strict=True):
        assert a["class_name"] == b["class_name"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])


def test_3d_crops_change_with_the_epoch(liver_module):
    by_epoch = [
        {b["class_name"][0]: b["crop_affine"][0] for b in first_epoch_batches(liver_module, e)} for e in (0, 1)
    ]
    assert not torch.equal(by_epoch[0]["liver"], by_epoch[1]["liver"]), "a new random target voxel is the centre"


def test_3d_class_names_come_from_dataset_json_restricted_to_the_chosen_classes(liver_module, tmp_path: Path):
    assert liver_module.class_names == ["spleen", "liver"]
    every = NiftiDataModule3D(make_nnunet(tmp_path / "Dataset011", {"abdomen": (CT, LABELS)}))
    every.setup("fit")
    assert len(every.class_names) == 117 and every.class_names[:3] == ["spleen", "kidney_right", "kidney_left"]


def test_class_names_are_not_known_before_setup(tmp_path: Path):
    with pytest.raises(RuntimeError, match="after setup"):
        NiftiDataModule3D(tmp_path).class_names
    with pytest.raises(RuntimeError, match="after setup"):
        SAMed2DDataModule(SAM_MED2D_DEMO).class_names


# 2D: masks drawn per image -----------------------------------------------------------------------------------


def test_the_2d_mask_draw_depends_only_on_the_key():
    dataset = ImageMasksDataset(SAM_MED2D_DEMO / "image2label_train.json", processor_from_spec("sam_med2d"), 6)
    torch.manual_seed(0)
    first = dataset[ItemKey(1, 1234)]["mask_paths"]
    torch.manual_seed(1)
    assert dataset[ItemKey(1, 1234)]["mask_paths"] == first
    assert dataset[ItemKey(1, 4321)]["mask_paths"] != first


def test_a_2d_epoch_replays_and_the_next_epoch_draws_again():
    module = SAMed2DDataModule(SAM_MED2D_DEMO, masks_per_image=4, batch_size=1, seed=5)
    module.setup("fit")
    paths = [[b["mask_paths"] for b in first_epoch_batches(module, e)] for e in (0, 0, 1)]
    assert paths[0] == paths[1] and paths[0] != paths[2]


def test_2d_samples_name_the_class_of_each_mask():
    module = SAMed2DDataModule(SAM_MED2D_DEMO, masks_per_image=3, batch_size=2)
    module.setup("fit")
    train = next(iter(module.train_dataloader()))
    for image, mask_paths, class_names in zip(train["image_path"], train["mask_paths"], train["class_name"]):
        assert [Path(p).stem for p in mask_paths] == [f"{Path(image).stem}_{name}_000" for name in class_names]
    evaluation = list(module.val_dataloader())
    assert [b["class_name"] for b in evaluation[:4]] == [
        ["inferior_vena_cava"], ["liver"], ["aorta"], ["femur_right"]
    ]


def test_2d_class_names_list_every_class_of_both_sets_whatever_the_stage():
    expected = sorted(
        {
            "liver", "spleen", "inferior_vena_cava", "aorta", "lung_middle_lobe_right", "heart_ventricle_right",
            "lung_lower_lobe_left", "rib_left_9", "vertebrae_T9", "heart_ventricle_left", "lung_lower_lobe_right",
            "lung_upper_lobe_left", "autochthon_right", "autochthon_left", "heart_myocardium",
            "heart_atrium_right", "heart_atrium_left", "rib_right_9", "femur_right", "gluteus_maximus_left",
            "hip_left", "colon", "hip_right", "gluteus_maximus_right",
        }
    )
    for stage in ("fit", "test"):
        module = SAMed2DDataModule(SAM_MED2D_DEMO)
        module.setup(stage)
        assert module.class_names == expected


@pytest.mark.parametrize(
    ("image", "mask", "expected"),
    [
        ("s0114_111.png", "s0114_111_rib_left_9_000.png", "rib_left_9"),
        ("s0619_32.png", "s0619_32_hip_right_001.png", "hip_right"),
        ("ct_00--Case_1--x_0130.png", "ct_00--Case_1--x_0130--0004_000.png", "0004"),
        ("s0619_32.png", "bad.png", "bad"),
    ],
)
def test_the_class_is_the_mask_name_between_the_image_stem_and_the_instance_number(image, mask, expected):
    assert class_name_of(Path(image), Path(mask)) == expected
