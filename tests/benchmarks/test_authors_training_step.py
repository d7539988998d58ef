"""benchmarks/authors_training_step.py without the authors' code: its arguments and its deterministic draws.

The comparison itself needs local checkouts of the authors' repositories, which CI does not have; what is tested
here is that the script refuses to run without them, and that the one deterministic rule it gives both sides'
random draws makes our click samplers and a numpy-style ``choice`` over ``argwhere`` pick the same elements.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

SCRIPT = "authors_training_step"  # the script fixture (conftest.py) imports benchmarks/authors_training_step.py


def test_refuses_to_run_without_the_checkouts(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--families", "sam_med3d", "sam_unet"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]  # the error line, after the usage
    assert "checkouts are needed: --sam-med3d --sam-unet (" in message


def test_refuses_a_checkout_that_is_not_a_folder(script, tmp_path, capsys):
    with pytest.raises(SystemExit):
        script.main(["--families", "sam_unet", "--sam-unet", str(tmp_path / "missing")])
    assert "not a directory" in capsys.readouterr().err


def test_deterministic_draws_agree_between_our_samplers_and_numpy_choice(script):
    import zoo.prompts.simulate as simulate

    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 12, 10, generator=generator) > 0.6
    prediction = torch.rand(2, 12, 10, generator=generator) > 0.7
    fake = script._DeterministicNumpy()
    with script.patched((simulate, "_uniform", script.deterministic_uniform)):
        clicks = simulate.next_click_random_error(prediction, target, 5)
        first = simulate.first_click_random_foreground(target)
    for row in range(2):
        errors = np.argwhere((prediction[row] ^ target[row]).numpy())
        chosen = errors[fake.random.choice(len(errors), 5, replace=True)]
        assert clicks.coords[row].numpy().astype(int).tolist() == chosen.tolist()
        foreground = np.argwhere(target[row].numpy())
        middle = foreground[fake.random.randint(len(foreground))]
        assert first.coords[row, 0].numpy().astype(int).tolist() == middle.tolist()
    # the mask-only pass both sides use in the check: the middle of SAM-Med3D's np.random.randint(2, 9)
    assert fake.random.randint(2, 9) == script.MIDDLE_MASK_ONLY_3D
