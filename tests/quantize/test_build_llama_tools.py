"""build_llama_tools.py: programs built with the real cmake from an sdist's vendor/llama.cpp tree, installed
atomically with a marker written last, and not rebuilt when present. The sdists here are small stand-ins
(a one-file C program with a CMakeLists.txt, in the sdist's layout), so a build takes seconds; the real
llama.cpp build is `make install-llama-server`, and tests/serving runs the llama-server it makes."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

# images/gguf's scripts import each other as scripts do: their directory on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images" / "gguf"))
import build_llama_tools as blt  # noqa: E402

CMAKELISTS = """cmake_minimum_required(VERSION 3.16)
project(standin C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)  # as llama.cpp's CMakeLists.txt does
if(NOT STANDIN_GREETING)
  set(STANDIN_GREETING "hello")
endif()
add_executable(hello hello.c)
target_compile_definitions(hello PRIVATE GREETING="${STANDIN_GREETING}")
add_executable(other hello.c)
target_compile_definitions(other PRIVATE GREETING="other")
"""
HELLO_C = '#include <stdio.h>\nint main(void) { puts(GREETING); return 0; }\n'

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("cc") is None,
                                reason="cmake and a C compiler are needed (Debian: cmake, gcc)")


def make_sdist(path: Path, files: dict[str, str], version: str = "9.9.9") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"llama_cpp_python-{version}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def sdist(tmp_path) -> Path:
    return make_sdist(tmp_path / "llama_cpp_python-9.9.9.tar.gz",
                      {"vendor/llama.cpp/CMakeLists.txt": CMAKELISTS, "vendor/llama.cpp/hello.c": HELLO_C,
                       "llama_cpp/__init__.py": ""})


def run_program(path: Path) -> str:
    import subprocess

    return subprocess.run([str(path)], capture_output=True, text=True, check=True).stdout.strip()


def test_builds_the_targets_and_writes_the_marker_last(sdist, tmp_path, capsys):
    dest = tmp_path / "tools"
    code = blt.main([str(dest), "--target", "hello", "--version", "9.9.9", "--sdist", str(sdist),
                     "--cmake-args=-DSTANDIN_GREETING=built-here", "--jobs", "1"])
    assert code == 0, capsys.readouterr().err
    assert run_program(dest / "hello") == "built-here"  # the extra cmake argument reached cmake
    assert not (dest / "other").exists()  # only the named target
    marker = json.loads((dest / blt.MARKER).read_text())
    assert marker["built"] == {"hello": "9.9.9"} and marker["sdist"] == sdist.name
    assert not list(dest.glob("*.partial")) and not list(dest.glob(".*.partial"))
    out = capsys.readouterr().out
    assert "hello of llama-cpp-python 9.9.9 in" in out and "build-llama-tools: 100% [" in out  # progress


def test_present_programs_are_not_rebuilt_and_new_ones_are_added(sdist, tmp_path, capsys):
    dest = tmp_path / "tools"
    assert blt.main([str(dest), "--target", "hello", "--version", "9.9.9", "--sdist", str(sdist)]) == 0
    built_at = (dest / "hello").stat().st_mtime_ns
    capsys.readouterr()
    # the same request: nothing to do (the missing sdist proves nothing was read)
    assert blt.main([str(dest), "--target", "hello", "--version", "9.9.9", "--sdist", str(tmp_path / "gone")]) == 0
    assert "already in" in capsys.readouterr().out
    assert (dest / "hello").stat().st_mtime_ns == built_at
    # one more target: only it is built, and the marker names both
    assert blt.main([str(dest), "--target", "hello", "--target", "other", "--version", "9.9.9",
                     "--sdist", str(sdist)]) == 0
    assert (dest / "hello").stat().st_mtime_ns == built_at and run_program(dest / "other") == "other"
    assert json.loads((dest / blt.MARKER).read_text())["built"] == {"hello": "9.9.9", "other": "9.9.9"}
    # another version, or a program deleted by hand, is built again
    assert blt.missing(dest, "10.0.0", ["hello"]) == ["hello"]
    os.remove(dest / "other")
    assert blt.missing(dest, "9.9.9", ["hello", "other"]) == ["other"]


def test_a_failed_build_installs_nothing(tmp_path, capsys):
    broken = make_sdist(tmp_path / "broken.tar.gz", {"vendor/llama.cpp/CMakeLists.txt": CMAKELISTS,
                                                     "vendor/llama.cpp/hello.c": "int main(void) { syntax error"})
    dest = tmp_path / "tools"
    assert blt.main([str(dest), "--target", "hello", "--version", "9.9.9", "--sdist", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "build-llama-tools: `cmake --build" in err and "failed" in err and "syntax error" in err
    assert "syntax error" in (dest / blt.LOG).read_text()  # the whole output is kept
    assert not (dest / "hello").exists() and not (dest / blt.MARKER).exists()


def test_an_unknown_target_and_a_wrong_sdist_fail_clearly(sdist, tmp_path, capsys):
    dest = tmp_path / "tools"
    assert blt.main([str(dest), "--target", "no-such-program", "--version", "9.9.9", "--sdist", str(sdist)]) == 1
    assert "failed" in capsys.readouterr().err and not (dest / blt.MARKER).exists()
    not_llama = make_sdist(tmp_path / "other.tar.gz", {"src/main.c": HELLO_C})
    assert blt.main([str(dest), "--target", "hello", "--version", "9.9.9", "--sdist", str(not_llama)]) == 1
    assert f"{not_llama}: no vendor/llama.cpp/ in the sdist" in capsys.readouterr().err


def test_the_flags_keep_the_build_offline_static_and_lean(tmp_path):
    configure, build = blt.cmake_commands(tmp_path / "src", tmp_path / "build", ["llama-server"], ["-DX=1"], 2)
    for flag in ("-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release"):
        assert flag in configure
    assert configure[-1] == "-DX=1"  # the caller's arguments come last and win
    assert build[-2:] == ["--target", "llama-server"] and build[build.index("-j") + 1] == "2"
