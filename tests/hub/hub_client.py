"""Client half of the Hub tests, run in its own process so that HF_ENDPOINT / HF_HUB_OFFLINE are read at import time.

Usage: python hub_client.py REQUEST_JSON RESULT_JSON. The request lists steps, run in order; each step's outcome goes
into the result under its name:

* ``{"name": ..., "cli": [argv...]}``: ``zoo`` with these arguments; exit status, stdout and stderr.
* ``{"name": ..., "load": SOURCE, "kwargs": {...}, "state_out": FILE}``: ``zoo.from_pretrained(SOURCE, **kwargs)``;
  the class and weights_origin, the state dict saved to ``state_out`` (safetensors), or the error's type and text.
* ``{"name": ..., "masks": REPO_ID, "kwargs": {...}}``: the released LiteMedSAM from the packaged file and the one
  loaded from ``REPO_ID``, each through the Predictor on the bundled PNG with a box; whether masks and weights agree.
"""

import contextlib
import io
import json
import sys

import torch

import zoo

BOX = [150, 230, 230, 300]


def run_cli(argv):
    from zoo.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def run_load(source, kwargs, state_out=None):
    from safetensors.torch import save_file

    try:
        model = zoo.from_pretrained(source, **kwargs)
    except Exception as error:  # the test asserts on the type and message
        return {"error": type(error).__name__, "message": str(error)}
    if state_out:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, state_out)
    return {"class": type(model).__name__, "weights_origin": model.weights_origin}


def run_masks(repo_id, kwargs):
    from zoo.inference import Predictor
    from zoo.io.png import read_image
    from zoo.resources import data_path

    image = read_image(data_path("sam_med2d_demo", "images", "amos_0004_75.png"))
    from_hub = zoo.from_pretrained(repo_id, **kwargs)  # first, while the Hub cache is empty
    packaged = zoo.from_pretrained("litemedsam")
    masks = []
    for model in (from_hub, packaged):
        predictor = Predictor(model)
        predictor.set_image(image)
        masks.append(predictor.predict(box=BOX).masks)
    hub_state, packaged_state = from_hub.state_dict(), packaged.state_dict()
    return {
        "weights_origin": from_hub.weights_origin,
        "processor_config_equal": from_hub.processor_config == packaged.processor_config,
        "same_weights": hub_state.keys() == packaged_state.keys()
        and all(torch.equal(hub_state[k], packaged_state[k]) for k in hub_state),
        "same_masks": torch.equal(masks[0], masks[1]),
        "foreground_pixels": int(masks[0].sum()),
    }


def main(request_path, result_path):
    torch.set_num_threads(1)
    with open(request_path, encoding="utf-8") as handle:
        steps = json.load(handle)
    result = {}
    for step in steps:
        if "cli" in step:
            result[step["name"]] = run_cli(step["cli"])
        elif "load" in step:
            result[step["name"]] = run_load(step["load"], step.get("kwargs", {}), step.get("state_out"))
        else:
            result[step["name"]] = run_masks(step["masks"], step.get("kwargs", {}))
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
