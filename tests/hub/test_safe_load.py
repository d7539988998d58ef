"""Reading checkpoint files never runs code from them, and bad files get one clear error naming the file."""

import argparse
import builtins
import struct

import pytest
import torch
from safetensors.torch import save_file

from zoo.hub import CheckpointError, read_checkpoint_file
from zoo.hub.safe_load import UnreadObject

from .official_format import sam_med2d_official_checkpoint, sam_med3d_official_checkpoint


class WritesMarkerWhenUnpickled:
    """Unpickling this calls ``exec`` with code that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def planted_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "planted.pth"
    torch.save({"model": {"w": torch.ones(2)}, "payload": WritesMarkerWhenUnpickled(marker)}, path)
    return path, marker


def test_the_planted_payload_is_live_under_a_plain_unpickle(tmp_path):
    # Control: shows the planted object really runs code when unpickled without restrictions.
    path, marker = planted_checkpoint(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_planted_code_is_refused_and_not_run(tmp_path):
    path, marker = planted_checkpoint(tmp_path)
    expected = r"planted\.pth: pickles a Python object \(exec\).*refused without running"
    with pytest.raises(CheckpointError, match=expected):
        read_checkpoint_file(path)
    assert not marker.exists()


def test_a_system_call_payload_is_refused(tmp_path):
    import os

    class CallsSystem:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'marker'}",))

    path = tmp_path / "system.pth"
    torch.save({"payload": CallsSystem()}, path)
    with pytest.raises(CheckpointError, match=r"system\.pth: .*system.*not on zoo's allow-list"):
        read_checkpoint_file(path)
    assert not (tmp_path / "marker").exists()


def test_an_arbitrary_class_is_refused(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"w": torch.ones(1), "obj": WritesMarkerWhenUnpickled(tmp_path / "m")}, path)
    with pytest.raises(CheckpointError, match="allow-list"):
        read_checkpoint_file(path)


def test_sam_med3d_training_metadata_reads_as_inert_stand_ins(tmp_path):
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(sam_med3d_official_checkpoint({"w": torch.arange(3.0)}), path)
    content = read_checkpoint_file(path)
    assert torch.equal(content["model_state_dict"]["w"], torch.arange(3.0))
    assert isinstance(content["args"], UnreadObject)
    assert content["args"].pickled_type == "argparse.Namespace"
    assert not isinstance(content["args"], argparse.Namespace)
    assert content["epoch"] == 200


def test_a_whole_pickled_optimizer_reads_as_an_inert_stand_in(tmp_path):
    path = tmp_path / "sam-med2d_b.pth"
    torch.save(sam_med2d_official_checkpoint({"w": torch.ones(2)}), path)
    content = read_checkpoint_file(path)
    assert isinstance(content["optimizer"], UnreadObject)
    assert not isinstance(content["optimizer"], torch.optim.Optimizer)
    assert content["optimizer"].pickled_type == "torch.optim.adam.Adam"


def test_numpy_values_in_metadata_read_as_inert_stand_ins(tmp_path):
    import numpy as np

    path = tmp_path / "metrics.pth"
    torch.save({"model": {"w": torch.ones(1)}, "best_dice": np.float64(0.8), "dices": np.zeros(3)}, path)
    content = read_checkpoint_file(path)
    assert isinstance(content["best_dice"], UnreadObject)
    assert isinstance(content["dices"], UnreadObject)


def test_a_legacy_non_zip_torch_file_is_read(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint_file(path)["w"], torch.ones(2))


def test_safetensors_are_read_with_safetensors(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.arange(4.0)}, path)
    assert torch.equal(read_checkpoint_file(path)["w"], torch.arange(4.0))


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError, match=r"notes\.pth: is not a checkpoint.*b'these ar'"):
        read_checkpoint_file(path)


def test_an_empty_file_is_reported(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: is empty"):
        read_checkpoint_file(path)


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.pth: no such checkpoint file"):
        read_checkpoint_file(tmp_path / "absent.pth")


def test_a_folder_is_not_a_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint_file(tmp_path)


def test_a_truncated_torch_file_is_reported(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"cut\.pth: is truncated"):
        read_checkpoint_file(path)


def test_a_truncated_legacy_torch_file_is_reported(tmp_path):
    path = tmp_path / "cut_legacy.pth"
    torch.save({"w": torch.randn(1000)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"cut_legacy\.pth: is truncated"):
        read_checkpoint_file(path)


def test_a_truncated_safetensors_file_is_reported(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: is truncated \(100 bytes of tensor data missing\)"):
        read_checkpoint_file(path)


def test_a_safetensors_file_cut_inside_its_header_is_reported(tmp_path):
    path = tmp_path / "cut_header.safetensors"
    save_file({"w": torch.randn(10)}, path)
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    path.write_bytes(path.read_bytes()[: 8 + header_len // 2])
    with pytest.raises(CheckpointError, match="header is incomplete"):
        read_checkpoint_file(path)


@pytest.mark.parametrize("member", ["readme.txt", "archive/readme.txt"])
def test_a_zip_that_is_not_a_torch_file_is_reported(tmp_path, member):
    import zipfile

    path = tmp_path / "archive.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, "hello")
    with pytest.raises(CheckpointError, match=r"archive\.pth: is a zip archive but not a readable PyTorch checkpoint"):
        read_checkpoint_file(path)
