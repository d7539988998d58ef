"""``zoo app [--model NAME_OR_PATH] [--host 127.0.0.1] [--port N]``: the local web app for clicking (Gradio)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "app",
        help="a local web app to segment by clicking: zoo app [--model NAME_OR_PATH] [--port N]",
        description="Serve a web page (Gradio) that opens a NIfTI volume or a 2D image and segments it by clicks and "
        "boxes on its axial/coronal/sagittal views, through the same interactive session as the Python API. Needs "
        "the app extra: pip install -e \".[app]\".",
    )
    parser.add_argument(
        "--model", default="litemedsam",
        help="the model shown first: a registry name (litemedsam has real weights; names without reachable weights "
        "run with RANDOM weights, said on the page), a Hub folder or repo id, a zoo run's .ckpt or an authors' file",
    )
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to bind (default {DEFAULT_HOST}: this computer only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--max-file-mb", type=float, default=512.0,
                        help="refuse files above this size in MB (uploads and paths; default 512)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoo.errors import DataError
    from zoo.hub.pretrained import check_local_path

    if not 0 < args.port < 65536:
        raise DataError("--port", f"a port is 1..65535, got {args.port}")
    if not args.max_file_mb > 0:
        raise DataError("--max-file-mb", f"must be positive, got {args.max_file_mb}")
    check_local_path(args.model)
    temp_dir = Path(tempfile.mkdtemp(prefix="zoo-app-"))
    # Gradio keeps uploads and served pictures in GRADIO_TEMP_DIR: the app's own folder, removed on exit.
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir / "gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(temp_dir / "torchinductor"))  # torch's kernel cache
    try:
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise DataError("zoo app", "needs Gradio: pip install -e \".[app]\" (or pip install gradio)") from None
        from zoo.app.ui import build_app, launch
        from zoo.app.workspace import ModelCache
        from zoo.cli.predict import load_model

        models = ModelCache(load_model)
        models.get(args.model)  # a bad --model ends here with one line, before any server starts
        app = build_app(models, args.model, temp_dir, args.max_file_mb)
        print(f"zoo app: {models.get(args.model).notice}", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # a terminated app stops as on Ctrl-C: its folder is removed
        launch(app, args.host, args.port, temp_dir, args.max_file_mb)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
