"""The named protocols, their overrides, and which model/case pairs they refuse (as not applicable)."""

from __future__ import annotations

import pytest

from tiny_models import tiny_model
from zoo.evaluation.protocols import PROTOCOLS, get_protocol, not_applicable_reason
from zoo.processors import processor_for


def test_every_named_protocol_states_its_source_and_steps():
    assert set(PROTOCOLS) == {"sam_med3d", "sam_med2d_box", "sam_med2d_points", "sam_med2d_iterative", "sam_unet_box",
                              "litemedsam_box", "litemedsam_box3d"}
    assert PROTOCOLS["sam_med3d"].steps == tuple(range(1, 11))
    assert PROTOCOLS["sam_med3d"].table_steps == (1, 3, 5, 10)  # the SAM-Med3D paper's Table 3 columns
    assert PROTOCOLS["sam_med2d_points"].steps == (1, 3, 5)
    assert PROTOCOLS["litemedsam_box"].region == "all" and PROTOCOLS["sam_med2d_box"].region == "largest"
    assert all(p.source and p.title for p in PROTOCOLS.values())


def test_clicks_and_points_can_be_changed_and_nothing_else():
    assert get_protocol({"name": "sam_med3d", "clicks": 4}).steps == (1, 2, 3, 4)
    assert get_protocol({"name": "sam_med3d", "clicks": 4}).table_steps == (1, 3, 4)  # the last click always
    assert get_protocol({"name": "sam_med2d_points", "points": [5, 1]}).steps == (1, 5)
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("sam_med4d")
    with pytest.raises(ValueError, match="unknown settings"):
        get_protocol({"name": "sam_med3d", "boxes": 1})
    with pytest.raises(ValueError, match="not a click protocol"):
        get_protocol({"name": "sam_med2d_box", "clicks": 3})


def test_what_a_model_cannot_take_is_not_applicable():
    med3d = processor_for(tiny_model("sam_med3d_turbo"))
    lite = processor_for(tiny_model("litemedsam"))
    assert "takes no boxes" in not_applicable_reason(PROTOCOLS["sam_med2d_box"], med3d, "volume")
    assert "takes no boxes" in not_applicable_reason(PROTOCOLS["litemedsam_box3d"], med3d, "volume")
    assert "3D model" in not_applicable_reason(PROTOCOLS["sam_med3d"], med3d, "image")
    assert "2D models" in not_applicable_reason(PROTOCOLS["sam_med2d_points"], med3d, "volume")
    assert "needs a volume" in not_applicable_reason(PROTOCOLS["litemedsam_box3d"], lite, "image")
    assert not_applicable_reason(PROTOCOLS["sam_med3d"], med3d, "volume") is None
    assert not_applicable_reason(PROTOCOLS["sam_med3d"], lite, "volume") is None  # 2D models: slice by slice
    assert not_applicable_reason(PROTOCOLS["litemedsam_box3d"], lite, "volume") is None
