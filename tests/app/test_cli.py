"""``zoo app``'s command line: its options and one-line errors before any server starts."""

from __future__ import annotations

import subprocess
import sys

from zoo.cli.main import build_parser


def test_the_app_binds_127_0_0_1_by_default() -> None:
    args = build_parser().parse_args(["app"])
    assert (args.host, args.model, args.max_file_mb) == ("127.0.0.1", "litemedsam", 512.0)
    args = build_parser().parse_args(["app", "--model", "out/sam_med3d", "--port", "8000", "--max-file-mb", "50"])
    assert (args.model, args.port, args.max_file_mb) == ("out/sam_med3d", 8000, 50.0)


def test_bad_arguments_end_with_one_line() -> None:
    for arguments, message in ((["--model", "/no/such/model"], "/no/such/model: no such model folder or file"),
                               (["--port", "0"], "--port: a port is 1..65535, got 0")):
        done = subprocess.run([sys.executable, "-m", "zoo.cli.main", "app", *arguments], check=False,
                              capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 1
        assert done.stderr.strip() == f"zoo app: error: {message}"
