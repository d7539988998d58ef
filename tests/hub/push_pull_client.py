"""Client half of the push/pull round trip, run in its own process so HF_ENDPOINT is read at import time.

Usage: python push_pull_client.py REPO_ID RESULT_JSON. Pushes two tiny models to the same repo, loads the
latest revision and the first commit back with zoo.from_pretrained, and writes what it observed as JSON.
"""

import json
import sys

import torch
from tiny_configs import TINY_3D

import zoo


def outputs(model):
    torch.manual_seed(0)
    images = torch.randn(1, 1, TINY_3D["image_size"], TINY_3D["image_size"], TINY_3D["image_size"])
    points = (torch.tensor([[[5.0, 9.0, 20.0]]]), torch.tensor([[1]]))
    with torch.no_grad():
        prediction = model(images, points=points, multimask_output=True)
    return prediction.low_res_logits, prediction.iou_predictions


def same_outputs(a, b):
    return all(torch.equal(x, y) for x, y in zip(outputs(a), outputs(b)))


def main(repo_id, result_path):
    torch.manual_seed(1)
    first = zoo.create_model("sam_med3d_turbo", **TINY_3D).eval()
    torch.manual_seed(2)
    second = zoo.create_model("sam_med3d_turbo", **TINY_3D).eval()
    first_commit = first.push_to_hub(repo_id, token="hf_fake")
    second_commit = second.push_to_hub(repo_id, token="hf_fake")
    latest = zoo.from_pretrained(repo_id)
    pinned = zoo.from_pretrained(repo_id, revision=first_commit.oid)
    result = {
        "first_commit": first_commit.oid,
        "second_commit": second_commit.oid,
        "latest_class": type(latest).__name__,
        "latest_is_second": same_outputs(latest, second),
        "latest_is_first": same_outputs(latest, first),
        "pinned_is_first": same_outputs(pinned, first),
    }
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
