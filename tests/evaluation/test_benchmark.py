"""Whole benchmark runs on a synthetic dataset with tiny models: the table's scores against nibabel on the written
masks, the cache (a killed run resumes to the same bytes; a rerun computes nothing), two processes against one,
what is not applicable or skipped, refused inputs, and the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from evaluation.helpers import AFFINE, config, label_volume, tiny_spec, write_dataset
from zoo.cli.benchmark import load_benchmark_model
from zoo.cli.main import main
from zoo.errors import DataError
from zoo.evaluation.benchmark import run_benchmark

TESTS = Path(__file__).resolve().parents[1]
MODELS = [tiny_spec("lite", "litemedsam"), tiny_spec("med3d", "sam_med3d_turbo")]
PROTOCOLS = [{"name": "sam_med3d", "clicks": 2}, "litemedsam_box"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "dataset", cases=2)


def table(output: Path) -> bytes:
    return (output / "results.csv").read_bytes() + (output / "results.json").read_bytes()


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """One uninterrupted single-process run, with its masks written."""
    output = tmp_path_factory.mktemp("reference")
    settings = config(output, dataset, MODELS, PROTOCOLS, report={"save_masks": True})
    result = run_benchmark(settings, load_benchmark_model)
    return output, result


def test_a_run_writes_its_table_report_and_masks_together(reference):
    output, result = reference
    names = {p.name for p in output.iterdir()}
    assert {"results.csv", "results.json", "timings.csv", "report.md", "report.html", "config.yaml", "units",
            "masks"} <= names
    assert not [n for n in names if n.startswith(".zoo-staging")]
    html = (output / "report.html").read_text()
    assert "src=\"http" not in html and "<link" not in html and "data:image/png;base64," in html
    assert "lite (random weights)" in html and "med3d (random weights)" in html
    rows = json.loads((output / "results.json").read_text())["rows"]
    # 2 models x 2 cases x 2 targets: lite 2 clicks + 1 box, med3d 2 clicks (no box: not applicable)
    assert len(rows) == 2 * 2 * 3 + 2 * 2 * 2 == len(result.rows)
    assert {r["model"] for r in rows} == {"lite (random weights)", "med3d (random weights)"}


def test_the_tables_dice_is_nibabels_on_the_written_masks(reference, dataset):
    output, result = reference
    label_file = dataset / "labelsTr" / "case1.nii.gz"
    label = np.asarray(nib.load(str(label_file)).dataobj)
    checked = 0
    for row in result.rows:
        if row["case"] != "case1" or row["step"] != (1 if row["protocol"] == "litemedsam_box" else 2):
            continue
        model = row["model"].removesuffix(" (random weights)")
        name = f"case1_{row['target']}_step{row['step']}.nii.gz"
        written = output / "masks" / model / row["protocol"] / "synthetic" / name
        image = nib.load(str(written))
        assert image.shape == label.shape
        assert np.allclose(image.affine, AFFINE)
        predicted = np.asarray(image.dataobj) > 0
        truth = label == {"organ": 1, "vessel": 2}[row["target"]]
        total = predicted.sum() + truth.sum()
        expected = 1.0 if total == 0 else 2.0 * (predicted & truth).sum() / total
        assert row["dice"] == pytest.approx(expected, abs=1e-6)
        checked += 1
    assert checked == 2 * 2 + 2  # lite: 2 targets x 2 protocols; med3d: 2 targets x sam_med3d


def test_not_applicable_and_skipped_are_reported_not_crashed(reference):
    output, _ = reference
    content = json.loads((output / "results.json").read_text())
    assert {(n["model"], n["protocol"]) for n in content["not_applicable"]} == {("med3d (random weights)",
                                                                                  "litemedsam_box")}
    assert "takes no boxes" in content["not_applicable"][0]["reason"]
    assert [(s["case"], s["target"]) for s in content["skipped"]] == [("case0", "absent"), ("case1", "absent")]
    report = (output / "report.md").read_text()
    assert "absent skipped: class absent (label 3) is empty in case0.nii.gz" in report
    assert "why not applicable" in report


def test_a_rerun_reuses_every_unit_and_writes_the_same_bytes(reference, dataset):
    output, first = reference
    before = table(output)
    again = run_benchmark(config(output, dataset, MODELS, PROTOCOLS, report={"save_masks": True}),
                          load_benchmark_model)
    assert again.computed == 0 and again.reused == first.computed > 0
    assert table(output) == before


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from evaluation.helpers import config
    from zoo.cli.benchmark import load_benchmark_model
    from zoo.evaluation.benchmark import run_benchmark

    output, dataset = Path(sys.argv[1]), Path(sys.argv[2])
    models, protocols = json.loads(sys.argv[3]), json.loads(sys.argv[4])

    def loader(spec):
        loaded = load_benchmark_model(spec)
        encode = loaded.model.encode_image

        def encode_or_die(batch):
            if len(list((output / "units").glob("*.json"))) >= 2:  # killed inside the third unit
                os.kill(os.getpid(), signal.SIGKILL)
            return encode(batch)

        loaded.model.encode_image = encode_or_die
        return loaded

    run_benchmark(config(output, dataset, models, protocols), loader)
    """
)


def test_a_killed_run_continues_where_it_stopped_and_gives_the_same_table(reference, dataset, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLER.format(tests=str(TESTS)))
    output = tmp_path / "resumed"
    killed = subprocess.run(
        [sys.executable, str(script), str(output), str(dataset), json.dumps(MODELS), json.dumps(PROTOCOLS)],
        capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(list((output / "units").glob("*.json"))) == 2
    assert not (output / "results.csv").exists()  # nothing half-written: the outputs come at the end, together
    resumed = run_benchmark(config(output, dataset, MODELS, PROTOCOLS), load_benchmark_model)
    assert resumed.reused == 2 and resumed.computed == reference[1].computed - 2
    assert table(output) == table(reference[0])


@pytest.mark.slow
def test_two_processes_give_the_same_table_as_one(reference, dataset, tmp_path):
    two = config(tmp_path / "two", dataset, MODELS, PROTOCOLS, runtime={"progress": False, "num_threads": 1,
                                                                         "devices": 2})
    assert two.runtime.devices == 2
    result = run_benchmark(two, load_benchmark_model)  # Lightning Fabric, ddp_spawn: one case per process
    assert {r["process"] for r in result.units} == {0, 1}  # each process ran (and cached) its share
    assert table(tmp_path / "two") == table(reference[0])


def test_a_label_on_another_grid_names_both_files(dataset, tmp_path):
    root = write_dataset(tmp_path / "bad")
    label_file = root / "labelsTr" / "case0.nii.gz"
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(label_volume(), shifted), str(label_file))
    with pytest.raises(DataError) as error:
        run_benchmark(config(tmp_path / "out", root, MODELS, PROTOCOLS), load_benchmark_model)
    assert str(root / "imagesTr" / "case0_0000.nii.gz") in str(error.value)
    assert str(label_file) in str(error.value)
    assert not (tmp_path / "out").exists()  # refused before any model ran


def test_the_command_line_runs_a_config_and_refuses_bad_keys_in_one_line(dataset, tmp_path, capsys):
    good = config(tmp_path / "cli", dataset, [MODELS[0]], ["litemedsam_box"])
    path = tmp_path / "benchmark.yaml"
    import yaml

    values = good.to_dict()
    values.pop("source_file")
    path.write_text(yaml.safe_dump(values))
    overrides = ["--output-dir", str(tmp_path / "cli"), "--set", "datasets.0.classes=[organ]"]
    assert main(["benchmark", str(path), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "cases/min" in printed and "litemedsam_box" in printed
    rows = json.loads((tmp_path / "cli" / "results.json").read_text())["rows"]
    assert {r["target"] for r in rows} == {"organ"}
    # --config CONFIG is the positional CONFIG (the run reuses every unit and writes the same table)
    table = (tmp_path / "cli" / "results.csv").read_bytes()
    assert main(["benchmark", "--config", str(path), *overrides]) == 0
    assert "0 unit(s) computed" in capsys.readouterr().out
    assert (tmp_path / "cli" / "results.csv").read_bytes() == table
    assert main(["benchmark", str(path), "--config", str(path)]) == 1
    assert "give the config once" in capsys.readouterr().err
    values["modells"] = values.pop("models")
    path.write_text(yaml.safe_dump(values))
    assert main(["benchmark", str(path)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown key(s) ['modells']" in error and str(path) in error


def test_models_without_weights_are_labelled_everywhere(reference):
    output, result = reference
    assert all(info.random_weights and info.label.endswith("(random weights)") for info in result.models)
    for name in ("results.csv", "report.md", "timings.csv"):
        text = (output / name).read_text()
        assert "lite (random weights)" in text
        assert "lite," not in text.replace("lite (random weights),", "")


def test_another_seed_reuses_nothing(reference, dataset, tmp_path):
    shutil.copytree(reference[0] / "units", tmp_path / "units")
    same = run_benchmark(config(tmp_path, dataset, MODELS, PROTOCOLS), load_benchmark_model)
    assert same.computed == 0  # the copied cache serves the same inputs
    other = run_benchmark(config(tmp_path, dataset, MODELS, PROTOCOLS, seed=8), load_benchmark_model)
    assert other.reused == 0 and other.computed == same.reused  # another seed: other clicks, every unit again
