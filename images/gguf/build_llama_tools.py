"""Build llama.cpp's own programs (llama-server, llama-quantize, ...) from the llama-cpp-python sdist.

    python images/gguf/build_llama_tools.py DEST --target llama-server [--target ...]
        [--version 0.3.36] [--sdist FILE] [--build-dir DIR] [--cmake-args="-DGGML_NATIVE=OFF ..."]
        [--shared --libs-into SITE/llama_cpp/lib]

The sdist vendors llama.cpp at the commit whose shared library the venv's llama_cpp was built from
(install_converter.py takes the converter from the same sdist), so every llama.cpp program kubetune
runs reads and writes the same GGUF format. `make install-llama-server` uses this to put
`llama-server` (the server behind `kubetune serve-local --gguf`, with a Prometheus /metrics
endpoint) in .venv/tools; images/gguf/Dockerfile uses it for llama-quantize and llama-perplexity.

`make install` compiles llama.cpp exactly once: `--shared` builds llama-server against llama.cpp's shared
libraries (libllama, libggml*, libmtmd; RPATH $ORIGIN, so they sit next to the program in DEST), and
`--libs-into` copies the same libraries into the venv's llama_cpp/lib, where llama-cpp-python (installed
with CMAKE_ARGS=-DLLAMA_BUILD=OFF, so pip compiles nothing) loads them. The converter, llama-server and
the venv's llama_cpp are then one build of one source tree. Without --shared the build is static
(BUILD_SHARED_LIBS=OFF: each program is one file that can be copied anywhere),
Release, without tests, examples, HTTPS (LLAMA_OPENSSL=OFF: the servers listen on plain HTTP behind
the cluster's own TLS) and without fetching the web UI from the Hugging Face hub
(LLAMA_USE_PREBUILT_UI=OFF: nothing is downloaded during a build). cmake and a C++ compiler are
needed; ninja is used when present. About 5 minutes on 2 cores for llama-server.

Idempotent: DEST/.kubetune-llama-tools.json records the version and what was built, and a request
for programs that are already there for that version does nothing. Each program is copied into DEST
under a temporary name and renamed, so an interrupted build never leaves a half-written program.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# Development and image tooling, not part of the shipped package: run as a script (make, Dockerfile),
# so this directory is on sys.path.
from install_converter import VENDOR, VERSION, download_sdist

MARKER = ".kubetune-llama-tools.json"
LOG = ".build-llama-tools.log"  # the whole cmake output of the last build, next to the programs
PROGRESS = re.compile(r"^\[\s*(?:(?P<n>\d+)/(?P<total>\d+)|(?P<pct>\d+)%)\]")
CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_OPENSSL=OFF",
              "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF")
STATIC_ARGS = ("-DBUILD_SHARED_LIBS=OFF",)
# Shared: the programs find their libraries next to themselves, wherever DEST is.
SHARED_ARGS = ("-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DCMAKE_INSTALL_RPATH=$ORIGIN")
SHARED_LIB_GLOB = "lib*.so*"


class BuildError(Exception):
    """The build cannot run or failed; the message says which step and what to do."""


def read_marker(dest: Path) -> dict:
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def missing(dest: Path, version: str, targets: list[str]) -> list[str]:
    """The targets not yet in dest for this llama-cpp-python version."""
    built = read_marker(dest).get("built", {})
    return [t for t in targets if built.get(t) != version or not os.access(dest / t, os.X_OK)]


def unpack_llama_cpp(sdist: Path, into: Path) -> Path:
    """Extract the sdist's vendor/llama.cpp tree into `into`; its path."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.partition("/")[2].startswith(VENDOR)]
        if not members:
            raise BuildError(f"{sdist}: no {VENDOR} in the sdist; its layout changed")
        tar.extractall(into, members=members, filter="data")
    source = into / members[0].name.partition("/")[0] / VENDOR
    if not (source / "CMakeLists.txt").is_file():
        raise BuildError(f"{sdist}: {VENDOR}CMakeLists.txt is missing; its layout changed")
    return source


def cmake_commands(source: Path, build: Path, targets: list[str], extra: list[str], jobs: int,
                   shared: bool = False) -> list[list[str]]:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    linkage = SHARED_ARGS if shared else STATIC_ARGS
    configure = ["cmake", "-S", str(source), "-B", str(build), *generator, *CMAKE_ARGS, *linkage, *extra]
    compile_ = ["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *targets]
    return [configure, compile_]


def run_logged(cmd: list[str], log) -> int:
    """Run cmd with its output in `log`; print cmake's progress ("[ 57/206]" with ninja, "[ 27%]" with
    make) every tenth of the way, since compiler warnings by the thousand help nobody here."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    shown = -1
    for line in proc.stdout:
        log.write(line)
        m = PROGRESS.match(line)
        if m:
            done = int(m["pct"]) if m["pct"] else 100 * int(m["n"]) // max(int(m["total"]), 1)
            if done // 10 > shown:
                shown = done // 10
                print(f"build-llama-tools: {done:3d}% {line.strip()[:100]}", flush=True)
    return proc.wait()


def copy_libraries(source: Path, into: Path) -> list[str]:
    """Copy the shared libraries (and their soname links, as links) from source into `into`; names."""
    into.mkdir(parents=True, exist_ok=True)
    names = []
    for lib in sorted(source.glob(SHARED_LIB_GLOB)):
        partial = into / f".{lib.name}.partial"
        partial.unlink(missing_ok=True)
        shutil.copy2(lib, partial, follow_symlinks=False)
        partial.replace(into / lib.name)
        names.append(lib.name)
    return names


def install_libraries(dest: Path, version: str, libs_into: Path) -> list[str]:
    """The shared libraries of an earlier --shared build in dest, copied into libs_into (cheap: no build)."""
    marker = read_marker(dest)
    libs = marker.get("shared_libraries", [])
    if marker.get("llama_cpp_python") != version or not libs or not all((dest / n).exists() for n in libs):
        raise BuildError(f"{dest} holds no --shared build of llama-cpp-python {version}; build it first")
    with tempfile.TemporaryDirectory(prefix="kubetune-libs-") as tmp:
        for name in libs:
            shutil.copy2(dest / name, Path(tmp) / name, follow_symlinks=False)
        return copy_libraries(Path(tmp), libs_into)


def build(sdist: Path, dest: Path, targets: list[str], *, version: str, build_dir: Path | None = None,
          cmake_args: list[str] = (), jobs: int | None = None, shared: bool = False) -> dict[str, float]:
    """Build `targets` from the sdist and install them into dest; seconds per phase."""
    if not shutil.which("cmake"):
        raise BuildError("cmake is not installed; it builds llama.cpp (Debian: apt-get install cmake g++)")
    jobs = jobs or os.cpu_count() or 1
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kubetune-llama-src-") as tmp:
        t0 = time.monotonic()
        source = unpack_llama_cpp(sdist, Path(tmp))
        timings["unpack_seconds"] = round(time.monotonic() - t0, 1)
        build_path = build_dir or Path(tmp) / "build"
        dest.mkdir(parents=True, exist_ok=True)
        log_path = dest / LOG
        with open(log_path, "w") as log:
            for cmd in cmake_commands(source, build_path, targets, list(cmake_args), jobs, shared=shared):
                t0 = time.monotonic()
                print("build-llama-tools: " + " ".join(cmd), flush=True)
                if run_logged(cmd, log) != 0:
                    log.flush()
                    tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-40:])
                    raise BuildError(f"`{' '.join(cmd[:3])} ...` failed; the end of its output (all of it is in "
                                     f"{log_path}):\n{tail}")
                timings[("configure" if "-S" in cmd else "compile") + "_seconds"] = round(time.monotonic() - t0, 1)
        marker = read_marker(dest)
        built = marker.get("built", {})
        for target in targets:
            program = build_path / "bin" / target
            if not os.access(program, os.X_OK):
                raise BuildError(f"cmake built {target} but {program} is not there")
            partial = dest / f".{target}.partial"
            shutil.copy2(program, partial)
            partial.chmod(0o755)
            partial.replace(dest / target)
            built[target] = version
        if shared:
            marker["shared_libraries"] = copy_libraries(build_path / "bin", dest)
        # The marker last: it only names programs that are completely in place.
        marker.update({"llama_cpp_python": version, "sdist": sdist.name, "built": built})
        partial = dest / f"{MARKER}.partial"
        partial.write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        partial.replace(dest / MARKER)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="directory the programs are installed into")
    parser.add_argument("--target", action="append", required=True, dest="targets",
                        help="a llama.cpp cmake target, e.g. llama-server (repeatable)")
    parser.add_argument("--version", default=VERSION, help="llama-cpp-python version whose sdist is built")
    parser.add_argument("--sdist", type=Path, help="use this sdist instead of downloading it")
    parser.add_argument("--build-dir", type=Path, help="keep the cmake build here (default: a temporary one)")
    parser.add_argument("--cmake-args", default="", type=shlex.split,
                        help="extra cmake arguments in one string, e.g. \"-DGGML_NATIVE=OFF -DGGML_AVX2=ON\"")
    parser.add_argument("--jobs", type=int, help="parallel compile jobs (default: the CPU count)")
    parser.add_argument("--shared", action="store_true",
                        help="link the programs against llama.cpp's shared libraries, installed next to them")
    parser.add_argument("--libs-into", type=Path, metavar="DIR",
                        help="with --shared: also copy the shared libraries here (the venv's llama_cpp/lib)")
    args = parser.parse_args(argv)
    if args.libs_into and not args.shared:
        parser.error("--libs-into needs --shared")
    dest = args.dest.resolve()
    todo = missing(dest, args.version, args.targets)
    if args.shared and not read_marker(dest).get("shared_libraries"):
        todo = list(args.targets)  # a static build there: the libraries were never built
    try:
        if todo:
            with tempfile.TemporaryDirectory(prefix="kubetune-sdist-") as dl:
                sdist = args.sdist or download_sdist(args.version, Path(dl))
                timings = build(sdist, dest, todo, version=args.version, build_dir=args.build_dir,
                                cmake_args=args.cmake_args, jobs=args.jobs, shared=args.shared)
            print(f"build-llama-tools: {', '.join(todo)} of llama-cpp-python {args.version} in {dest} "
                  f"({', '.join(f'{k} {v}' for k, v in timings.items())})")
        else:
            print(f"build-llama-tools: {', '.join(args.targets)} of llama-cpp-python {args.version} "
                  f"already in {dest}")
        if args.libs_into:
            libs = install_libraries(dest, args.version, args.libs_into)
            print(f"build-llama-tools: {len(libs)} shared libraries copied into {args.libs_into}")
    except (BuildError, subprocess.CalledProcessError) as e:
        print(f"build-llama-tools: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
