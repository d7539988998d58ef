"""``--ckpt_path`` is read only with the safe loader, from a local file or an http(s) URL, and must fit the model.

Remote checkpoints are served from 127.0.0.1 by a stdlib HTTP server in a thread. Runs go through ``zoo.cli.main``
in this process; the expected errors come back as exit status 1 with one line on stderr.
"""

from __future__ import annotations

import builtins
import functools
import json
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
from run_helpers import TINY_3D, TINY_SAM_MED2D_64

import zoo.cli.lightning
import zoo.training.module
from zoo.cli.main import main as zoo_main
from zoo.training.module import PromptableSegmentationModule

REPO = Path(__file__).resolve().parents[2]
CT = REPO / "data" / "totalseg_example" / "ct.nii.gz"
SAM_MED3D_DEMO = REPO / "recipes" / "sam_med3d" / "demo.yaml"
PROMPT = [60, 50, 15]  # a voxel of the CT


class WritesMarkerWhenUnpickled:
    """Unpickling this calls ``exec`` with code that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """``(folder, base_url)``: files put in ``folder`` are served at ``base_url/<name>``."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def private_dirs(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """``(temp, torch_home)``: this test's temporary folder and torch's cache home, both watched for leftovers."""
    temp, torch_home = tmp_path / "tmp", tmp_path / "torch_home"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return temp, torch_home


def lightning_checkpoint(path: Path, module: PromptableSegmentationModule, **extra) -> Path:
    """What Lightning saves for ``module``, reduced to what loading reads."""
    checkpoint = {
        "pytorch-lightning_version": L.__version__,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        **extra,
    }
    torch.save(checkpoint, path)
    return path


def tiny_3d_module() -> PromptableSegmentationModule:
    """A tiny SAM-Med3D whose decoder marks its whole input: its mask shows the checkpoint's weights were used."""
    torch.manual_seed(0)
    module = PromptableSegmentationModule(model="sam_med3d_turbo", model_overrides=TINY_3D)
    decoder = module.net.mask_decoder
    with torch.no_grad():
        decoder.output_upscaling[3].weight.zero_()
        decoder.output_upscaling[3].bias.fill_(1.0)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.fill_(1.0)
    return module


def predict_args(ckpt_path: str, output: Path) -> list[str]:
    return [
        "predict",
        "--model.model", "sam_med3d_turbo",
        "--model.model_overrides", json.dumps(TINY_3D),
        "--data", "zoo.data.predict.PromptedImagesDataModule",
        "--data.images", str(CT),
        "--data.points", json.dumps([PROMPT]),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(output),
        "--ckpt_path", ckpt_path,
    ]


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------- planted payloads
def test_a_remote_checkpoint_with_a_planted_payload_is_refused_and_nothing_runs_or_stays(
    tmp_path: Path, server, private_dirs, capsys
) -> None:
    folder, base_url = server
    marker = tmp_path / "marker"
    lightning_checkpoint(folder / "planted.ckpt", tiny_3d_module(), payload=WritesMarkerWhenUnpickled(marker))
    url = f"{base_url}/planted.ckpt"
    assert zoo_main(predict_args(url, tmp_path / "out")) == 1
    message = error_line(capsys)
    assert message.startswith(f"zoo predict: error: {url}: pickles a Python object (exec)"), message
    assert not marker.exists()
    temp, torch_home = private_dirs
    assert list(temp.iterdir()) == [] and not torch_home.exists()
    assert not (tmp_path / "out").exists()


def test_a_local_checkpoint_with_a_planted_payload_is_refused(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "marker"
    planted = lightning_checkpoint(tmp_path / "planted.ckpt", tiny_3d_module(), payload=WritesMarkerWhenUnpickled(marker))
    assert zoo_main(predict_args(str(planted), tmp_path / "out")) == 1
    assert error_line(capsys).startswith(f"zoo predict: error: {planted}: pickles a Python object (exec)")
    assert not marker.exists()


def test_weights_only_false_is_refused(tmp_path: Path, capsys) -> None:
    checkpoint = lightning_checkpoint(tmp_path / "tiny.ckpt", tiny_3d_module())
    assert zoo_main([*predict_args(str(checkpoint), tmp_path / "out"), "--weights_only", "false"]) == 1
    assert "--weights_only false is not supported" in error_line(capsys)


# ------------------------------------------------------------------------------------------ good checkpoints
def test_a_remote_checkpoint_is_downloaded_to_a_private_folder_loaded_and_removed(
    tmp_path: Path, server, private_dirs
) -> None:
    folder, base_url = server
    lightning_checkpoint(folder / "tiny.ckpt", tiny_3d_module())
    assert zoo_main(predict_args(f"{base_url}/tiny.ckpt", tmp_path / "out")) == 0
    mask = np.asarray(nib.load(str(tmp_path / "out" / "predictions" / "ct_mask.nii.gz")).dataobj).astype(bool)
    footprint = TINY_3D["image_size"] * 1.5 / 3.0  # the 1.5 mm crop on the 3 mm CT
    assert mask[tuple(PROMPT)] and mask.sum() == footprint**3  # the served checkpoint's whole-input decoder
    temp, torch_home = private_dirs
    assert list(temp.iterdir()) == [] and not torch_home.exists()


def test_a_missing_remote_checkpoint_names_the_url(tmp_path: Path, server, private_dirs, capsys) -> None:
    _, base_url = server
    assert zoo_main(predict_args(f"{base_url}/nowhere.ckpt", tmp_path / "out")) == 1
    assert error_line(capsys) == f"zoo predict: error: {base_url}/nowhere.ckpt: download failed: HTTP 404 File not found"
    assert list(private_dirs[0].iterdir()) == []


def test_other_remote_schemes_are_refused(tmp_path: Path, capsys) -> None:
    assert zoo_main(predict_args("s3://bucket/tiny.ckpt", tmp_path / "out")) == 1
    assert error_line(capsys) == (
        "zoo predict: error: s3://bucket/tiny.ckpt: only local files and http(s) URLs can be read, not s3:// paths"
    )


# ------------------------------------------------------------------------------- checkpoints of other models
def forbid_building_models(monkeypatch) -> None:
    """From now on, fail the test if a model is built for real (its weights initialised or loaded)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the checkpoint was refused")

    monkeypatch.setattr(zoo.training.module, "build_model", refuse)


def test_another_familys_checkpoint_is_refused_before_any_model_is_built(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    module = PromptableSegmentationModule(model="sam_med2d_b", model_overrides=TINY_SAM_MED2D_64)
    checkpoint = lightning_checkpoint(tmp_path / "last.ckpt", module)
    forbid_building_models(monkeypatch)
    assert zoo_main(["validate", "--config", str(SAM_MED3D_DEMO), "--ckpt_path", str(checkpoint)]) == 1
    assert error_line(capsys) == (
        f"zoo validate: error: {checkpoint}: is a sam_med2d checkpoint (model sam_med2d_b), but the configured model "
        "is sam_med3d (sam_med3d_turbo); give a sam_med3d checkpoint, or configure a sam_med2d model"
    )
    assert list(tmp_path.iterdir()) == [checkpoint]  # no run folder, no logs


def test_a_checkpoint_without_hyper_parameters_is_told_apart_by_its_weights(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    module = PromptableSegmentationModule(model="sam_med2d_b", model_overrides=TINY_SAM_MED2D_64)
    checkpoint = tmp_path / "bare.ckpt"
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": L.__version__}, checkpoint)
    forbid_building_models(monkeypatch)
    assert zoo_main(["validate", "--config", str(SAM_MED3D_DEMO), "--ckpt_path", str(checkpoint)]) == 1
    message = error_line(capsys)
    assert message.startswith(f"zoo validate: error: {checkpoint}: is a sam_med2d checkpoint (2-D patch embedding")
    assert "the configured model is sam_med3d (sam_med3d_turbo)" in message


def test_a_same_family_checkpoint_of_another_shape_is_refused_naming_the_differences(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoint = lightning_checkpoint(tmp_path / "last.ckpt", tiny_3d_module())  # 32^3 input; the demo's is 64^3
    forbid_building_models(monkeypatch)
    assert zoo_main(["validate", "--config", str(SAM_MED3D_DEMO), "--ckpt_path", str(checkpoint)]) == 1
    message = error_line(capsys)
    assert message.startswith(
        f"zoo validate: error: {checkpoint}: does not fit the configured sam_med3d_turbo model: config differs in "
        "image_size (checkpoint 32, configured 64), embed_dim (checkpoint 24, configured 48), "
    ), message
    assert "weights differ, first: image_encoder.pos_embed (checkpoint (1, 2, 2, 2, 24), configured (1, 4, 4, 4, 48))" in message


def test_a_model_without_a_skeleton_is_checked_once_built(tmp_path: Path, monkeypatch, capsys) -> None:
    # Models that cannot be built on the meta device (or come from a Hub folder) are checked after they are built,
    # still before the trainer loads any checkpoint weights.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(zoo.cli.lightning, "model_skeleton", lambda *args, **kwargs: None)
    monkeypatch.setattr(PromptableSegmentationModule, "load_state_dict", lambda *a, **k: pytest.fail("loaded"))
    module = PromptableSegmentationModule(model="sam_med2d_b", model_overrides=TINY_SAM_MED2D_64)
    checkpoint = lightning_checkpoint(tmp_path / "last.ckpt", module)
    assert zoo_main(["validate", "--config", str(SAM_MED3D_DEMO), "--ckpt_path", str(checkpoint)]) == 1
    assert error_line(capsys).startswith(
        f"zoo validate: error: {checkpoint}: is a sam_med2d checkpoint (2-D patch embedding"
    )


def test_a_fitting_local_checkpoint_loads(tmp_path: Path) -> None:
    checkpoint = lightning_checkpoint(tmp_path / "tiny.ckpt", tiny_3d_module())
    assert zoo_main(predict_args(str(checkpoint), tmp_path / "out")) == 0
    mask = np.asarray(nib.load(str(tmp_path / "out" / "predictions" / "ct_mask.nii.gz")).dataobj)
    assert mask[tuple(PROMPT)] == 1
