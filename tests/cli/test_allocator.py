"""The console script keeps freed memory in its process (glibc's thresholds raised); importing zoo does not."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from zoo.cli import allocator, main

# Allocates, writes and frees 8, 16 and 24 MB blocks five times; prints the page faults of the last four rounds.
ROUNDS = textwrap.dedent(
    """
    import ctypes, resource, sys
    from zoo.cli.allocator import keep_freed_memory
    print(keep_freed_memory())
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def round_():
        blocks = [libc.malloc(n << 20) for n in (8, 16, 24)]
        for block, n in zip(blocks, (8, 16, 24)):
            ctypes.memset(block, 1, n << 20)
        for block in blocks:
            libc.free(block)
    round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        round_()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def faults(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", allocator.OPT_OUT_ENV)}
    out = subprocess.run([sys.executable, "-c", ROUNDS], env={**clean, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    applied, count = out.stdout.split()
    return applied, int(count)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_freed_blocks_are_reused_without_page_faults():
    assert faults() == ("True", 0)
    applied, default_faults = faults(**{allocator.OPT_OUT_ENV: "1"})
    assert applied == "False" and default_faults > 1000, "glibc's defaults map the freed blocks in again"


def test_leaves_malloc_alone_when_told_or_elsewhere(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert not allocator.keep_freed_memory()
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert not allocator.keep_freed_memory()


def test_the_console_script_sets_it_before_anything_else(monkeypatch):
    calls = []
    monkeypatch.setattr(main, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        main.main(["convert"])  # missing arguments: the parser exits
    assert calls == [1]
