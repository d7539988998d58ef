"""The runtime's state: a compiled encoder never runs on weights it no longer has, bf16 stays close to fp32 on a real
case, and private torch ops are trusted only where they answer as expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import zoo
from zoo.hub import load_official_weights
from zoo.hub.packaged import PACKAGED_WEIGHTS, packaged_file
from zoo.inference import Predictor
from zoo.inference import runtime as runtime_module
from zoo.inference.runtime import ModelRuntime, onednn_bf16_native, resolve_precision
from zoo.io.png import read_image, read_mask

DEMO = Path(__file__).resolve().parents[2] / "data" / "sam_med2d_demo"
SLICE = DEMO / "images" / "amos_0004_75.png"
VESSEL = DEMO / "masks" / "amos_0004_75_inferior_vena_cava_000.png"


# ------------------------------------------------------------------------------------------ bf16 against fp32


def dice(a: Tensor, b: Tensor) -> float:
    return (2 * (a & b).sum() / (a.sum() + b.sum())).item()


def bf16_agrees(exact: Tensor, low: Tensor) -> bool:
    """The bound for a bf16 mask against the fp32 one on the case below.

    Measured with the released LiteMedSAM on this case (AVX-512 CPU, native bf16): Dice 0.997, 4 of 664 foreground
    pixels differ (0.6%). The bound leaves about 5x that: Dice >= 0.98 and at most 3% of the fp32 foreground
    differing. A layout error in the handed-on embedding (one token off, axes swapped) gives Dice about 0.8. Cases
    where the model itself hesitates differ more in bf16 (Dice 0.72-1.0 over the bundled slices' structures), which
    is why the test uses one where it does not (Dice 0.95 against the ground truth).
    """
    return dice(exact, low) >= 0.98 and (exact ^ low).sum().item() <= 0.03 * exact.sum().item()


@pytest.fixture(scope="module")
def litemedsam() -> nn.Module:
    model = zoo.create_model("litemedsam")
    with packaged_file(PACKAGED_WEIGHTS["litemedsam"]) as path:  # the released weights, offline
        load_official_weights(model, path)
    return model.eval()


@pytest.fixture(scope="module")
def vessel_case(litemedsam) -> dict:
    """fp32 and bf16 predictors on the bundled CT slice, and the box of its inferior vena cava."""
    image, truth = read_image(SLICE), torch.from_numpy(read_mask(VESSEL) > 0)
    rows, cols = np.nonzero(truth.numpy())
    box = [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]
    predictors = {precision: Predictor(litemedsam, precision=precision) for precision in ("fp32", "bf16")}
    for predictor in predictors.values():
        predictor.set_image(image)
    exact = predictors["fp32"].predict(box=box).masks[0]
    return {"predictors": predictors, "box": box, "truth": truth, "exact": exact}


def test_the_case_is_a_small_structure_the_model_segments(vessel_case):
    exact, truth = vessel_case["exact"], vessel_case["truth"]
    assert exact.shape == truth.shape == (512, 512)
    assert 0.001 < exact.float().mean().item() < 0.01, "a minority of the image, so that agreement is not free"
    assert dice(exact, truth) > 0.9


def test_bf16_masks_agree_with_fp32_on_a_real_case(vessel_case):
    low = vessel_case["predictors"]["bf16"].predict(box=vessel_case["box"]).masks[0]
    assert not torch.equal(low, torch.zeros_like(low))
    assert bf16_agrees(vessel_case["exact"], low), f"Dice {dice(vessel_case['exact'], low):.4f}"


@pytest.mark.parametrize(
    "break_embedding",
    [lambda e: torch.roll(e, 1, dims=-1), lambda e: e.transpose(-1, -2)],
    ids=["one-token-off", "axes-swapped"],
)
def test_a_broken_bf16_path_fails_the_bound(vessel_case, break_embedding):
    predictor = vessel_case["predictors"]["bf16"]
    features = predictor.features
    try:
        predictor.features = break_embedding(features)
        broken = predictor.predict(box=vessel_case["box"]).masks[0]
    finally:
        predictor.features = features
    assert not bf16_agrees(vessel_case["exact"], broken)


# --------------------------------------------------------------------------- private op: oneDNN bf16 query


@pytest.fixture
def fresh_bf16_check():
    onednn_bf16_native.cache_clear()
    yield
    onednn_bf16_native.cache_clear()


def test_the_bf16_query_agrees_with_the_op_on_this_torch(fresh_bf16_check):
    assert onednn_bf16_native() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.parametrize(
    "query",
    [None, lambda: "yes", lambda: 1, lambda: (_ for _ in ()).throw(RuntimeError("changed"))],
    ids=["missing", "not-a-bool", "an-int", "raises"],
)
def test_auto_keeps_fp32_where_the_bf16_query_cannot_be_trusted(monkeypatch, fresh_bf16_check, query):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", query)
    assert not onednn_bf16_native()
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_the_bf16_query_runs_once(monkeypatch, fresh_bf16_check):
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: calls.append(1) or True)
    for _ in range(3):
        resolve_precision("auto", torch.device("cpu"))
    assert calls == [1]


# ----------------------------------------------------------------------------- compiled encoder and weights


class Toy(nn.Module):
    """An encoder small enough to compile in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 16)
        self.register_buffer("offset", torch.zeros(16))

    def encode_image(self, images: Tensor) -> Tensor:
        return self.lin(images).relu() + self.offset


class CompileSpy:
    """Stands in for ``torch.compile`` (returns the function, so calls stay eager) and ``torch.compiler.reset``."""

    def __init__(self, monkeypatch) -> None:
        self.compiles: list[dict] = []
        self.resets = 0
        monkeypatch.setattr(torch, "compile", self.compile)
        monkeypatch.setattr(torch.compiler, "reset", self.reset)

    def compile(self, fn, **kwargs):
        self.compiles.append(kwargs)
        return fn

    def reset(self) -> None:
        self.resets += 1


def encode(runtime: ModelRuntime) -> Tensor:
    with torch.inference_mode():
        return runtime.encode_image(torch.ones(2, 8))


def change_in_place(model: Toy) -> None:
    with torch.no_grad():
        model.lin.weight.mul_(-1.0)


def reload(model: Toy) -> None:
    model.load_state_dict({k: v * 2 for k, v in model.state_dict().items()})


def replace_at_the_same_address(model: Toy) -> None:
    values = torch.randn(16, 8)
    del model.lin.weight
    model.lin.weight = nn.Parameter(torch.empty(16, 8))
    with torch.no_grad():
        model.lin.weight.copy_(values)


def change_buffer(model: Toy) -> None:
    model.offset.add_(1.0)


def move(model: Toy) -> None:
    model.double().float()


@pytest.mark.parametrize(
    "change",
    [change_in_place, reload, replace_at_the_same_address, change_buffer, move],
    ids=["in-place", "load_state_dict", "replaced", "buffer", "dtype round trip"],
)
def test_changed_weights_are_compiled_again(monkeypatch, change):
    spy = CompileSpy(monkeypatch)
    model = Toy()
    runtime = ModelRuntime(model, compile_encoder=True)
    encode(runtime), encode(runtime)
    assert len(spy.compiles) == 1 and spy.compiles[0] == {"options": {"freezing": True}}
    change(model)
    encode(runtime), encode(runtime)
    assert len(spy.compiles) == 2 and spy.resets == 1


def test_without_version_counters_the_weights_are_not_frozen(monkeypatch):
    spy = CompileSpy(monkeypatch)
    monkeypatch.setattr(runtime_module, "version_counters_work", lambda: False)
    model = Toy()
    runtime = ModelRuntime(model, compile_encoder=True)
    encode(runtime)
    change_in_place(model)
    encode(runtime)
    assert spy.compiles == [{}] and spy.resets == 0


def test_a_compiled_encoder_with_frozen_weights_follows_weight_updates(monkeypatch):
    """Real compilation. Inductor folds the weights into the compiled code only when freezing is on while dynamo
    traces, which the per-call option does not do on every torch; the global flag makes the folding certain here,
    so that stale weights would show."""
    monkeypatch.setattr(torch._inductor.config, "freezing", True)
    torch.compiler.reset()
    torch.manual_seed(0)
    model = Toy().eval()
    runtime = ModelRuntime(model, compile_encoder=True)
    try:
        first = encode(runtime)
        with torch.inference_mode():
            torch.testing.assert_close(first, model.encode_image(torch.ones(2, 8)))
        for change in (change_in_place, reload):
            change(model)
            with torch.inference_mode():
                expected = model.encode_image(torch.ones(2, 8))
            assert not torch.allclose(expected, first)
            torch.testing.assert_close(encode(runtime), expected)
    finally:
        torch.compiler.reset()
