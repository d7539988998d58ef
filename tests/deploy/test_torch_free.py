"""``OnnxPredictor`` runs where torch cannot be imported: a subprocess whose import system refuses ``torch`` segments
the bundled CT (SAM-Med3D) and a bundled PNG (LiteMedSAM); its masks are the PyTorch Predictor's."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from zoo.inference import Predictor
from zoo.io.png import read_image

from .support import CT, PNGS

CHILD = textwrap.dedent(
    """
    import sys

    class RefuseTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this process (import of {name})")
            return None

    sys.meta_path.insert(0, RefuseTorch())
    import numpy as np
    from zoo.deploy import OnnxPredictor
    from zoo.io.png import read_image

    ct_folder, png_folder, ct, png, out = sys.argv[1:]
    volume = OnnxPredictor(ct_folder, threads=2)
    volume.set_image(ct)
    on_ct = volume.predict(point_coords=[[60, 48, 15]], point_labels=[1])
    image = OnnxPredictor(png_folder, threads=2)
    image.set_image(read_image(png))
    on_png = image.predict(box=[150, 230, 230, 300], point_coords=[[190, 265]], point_labels=[1])
    loaded = sorted(name for name in sys.modules if name == "torch" or name.startswith("torch."))
    assert not loaded, loaded
    np.savez(out, ct=on_ct.masks, png=on_png.masks)
    """
)


def test_the_onnx_predictor_segments_the_bundled_ct_and_a_png_without_torch(exported, tmp_path) -> None:
    model_3d, folder_3d = exported("sam_med3d_turbo")
    model_2d, folder_2d = exported("litemedsam")
    out = tmp_path / "masks.npz"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder_3d), str(folder_2d), str(CT), str(PNGS[0]), str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    masks = np.load(out)

    predictor = Predictor(model_3d)
    predictor.set_image(CT)
    expected_ct = predictor.predict(point_coords=[[60, 48, 15]], point_labels=[1]).masks.numpy()
    predictor = Predictor(model_2d)
    predictor.set_image(read_image(PNGS[0]))
    prompts = dict(box=[150, 230, 230, 300], point_coords=[[190, 265]], point_labels=[1])
    expected_png = predictor.predict(**prompts).masks.numpy()
    for got, expected in ((masks["ct"], expected_ct), (masks["png"], expected_png)):
        assert got.shape == expected.shape and expected.any()
        assert (got == expected).mean() >= 0.999
