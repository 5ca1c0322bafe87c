"""`kubetune submit`, `schedule` and `runs` against a stand-in KFP API server (tests/pipelines/kfp_standin.py).

No real KFP API server can run here, so these tests check the exact requests that kubetune sends
to a fake one (the uploaded pipeline spec, the experiment, the run's runtime parameters, the recurring
run's 6-field cron, max_concurrency and no_catchup) and what it prints, plus the bad input: an
unreachable host, invalid cron expressions, an unknown --param and empty image names.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest
import yaml
from kfp_standin import FakeKfpApiServer

from components.common.config import load_config
from components.common.errors import KubetuneError
from pipelines import cli
from pipelines.kfp_client import parse_params, resolve_auth, to_kfp_cron

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pipelines" / "configs" / "llama3.1-8b-qlora.yaml"
PIPELINE = "kubetune-contracts-llama31-8b"
API = "/apis/v2beta1"
SECRET = "wJalrXUtnFEMI-standin-secret-value-do-not-upload"
TOKEN = "standin-bearer-token-123"


@pytest.fixture(autouse=True)
def kfp_env(monkeypatch, tmp_path):
    """No token, kube config, KFP context file or AWS secret from the machine running the tests."""
    import kfp.client.client as kfp_client_module

    for name in ("KF_PIPELINES_TOKEN", "KUBETUNE_KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    monkeypatch.setattr(kfp_client_module.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASTANDINKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


@pytest.fixture
def kfp():
    with FakeKfpApiServer() as server:
        yield server


def kubetune(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def only(requests, method, path):
    found = [r for r in requests if (r.method, r.path) == (method, path)]
    assert len(found) == 1, f"expected one {method} {path}, got {len(found)}"
    return found[0]


def task_names(spec: dict) -> set[str]:
    """Every task's display name, in the root DAG and inside the dsl.If sub-DAGs."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {t["taskInfo"]["name"] for dag in dags for t in dag["tasks"].values()}


def executor_image(spec: dict, task: str) -> str:
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    (ref,) = [t["componentRef"]["name"] for dag in dags for t in dag["tasks"].values()
              if t["taskInfo"]["name"] == task]
    label = spec["components"][ref]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]["image"]


# --------------------------------------------------------------------------------------- submit
def test_submit_uploads_the_spec_and_creates_the_run(kfp, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    kfp.token = TOKEN
    cfg = load_config(CONFIG)
    code, out, err = kubetune(capsys, "submit", "--config", str(CONFIG), "--host", kfp.url + "/",
                              "--experiment", "contracts", "--param", "run_id=nightly-7",
                              "--param", "scheduled=FALSE", "--run-name", "contracts-try-1")
    assert code == 0, err

    # The exact conversation: health check (ours, then kfp.Client's), find the pipeline (absent), upload it,
    # find its version, find the experiment (absent), create it, create the run.
    pipeline = next(iter(kfp.pipelines.values()))
    assert kfp.calls() == [
        ("GET", f"{API}/healthz"), ("GET", f"{API}/healthz"),
        ("GET", f"{API}/pipelines"), ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/{pipeline['pipeline_id']}/versions"),
        ("GET", f"{API}/experiments"), ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs"),
    ]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp.requests)
    finding = kfp.requests[2]
    assert json.loads(finding.q("filter"))["predicates"] == [
        {"operation": "EQUALS", "key": "display_name", "stringValue": PIPELINE}]

    # The uploaded pipeline spec: the real pipeline for this config, with its images and no secrets.
    upload = only(kfp.requests, "POST", f"{API}/pipelines/upload")
    assert upload.q("name") == PIPELINE
    filename, data = upload.files["uploadfile"]
    assert filename == "pipeline.yaml"
    spec, platform = list(yaml.safe_load_all(data))
    assert spec["pipelineInfo"]["name"] == PIPELINE
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in params.items()} == {
        "config": "STRING", "run_id": "STRING", "scheduled": "BOOLEAN"}
    assert json.loads(params["config"]["defaultValue"]) == json.loads(cfg.model_dump_json())
    assert params["run_id"]["defaultValue"] == "" and params["scheduled"]["defaultValue"] is False
    assert task_names(spec) == {"prepare", "train", "eval", "merge", "quantize", "publish", "new-data",
                                "gate-passed"}
    assert executor_image(spec, "train") == "ghcr.io/kubetune/kubetune-train:0.1.0"
    assert executor_image(spec, "prepare") == "ghcr.io/kubetune/kubetune-base:0.1.0"
    assert executor_image(spec, "quantize") == "ghcr.io/kubetune/kubetune-gguf:0.1.0"
    secrets = {s["secretName"] for ex in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
               for s in ex.get("secretAsEnv", [])}
    assert secrets == {"kubetune-s3"}  # a reference to the cluster Secret, never its values
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # a valid PipelineSpec
    for r in kfp.requests:  # no credential in any request body
        assert SECRET.encode() not in r.body and b"AKIASTANDINKEYID" not in r.body and TOKEN.encode() not in r.body

    # The experiment, then the run: the uploaded version, the experiment and exactly the given parameters.
    assert json.loads(kfp.requests[5].q("filter"))["predicates"][0]["stringValue"] == "contracts"
    assert only(kfp.requests, "POST", f"{API}/experiments").json["display_name"] == "contracts"
    experiment_id = next(iter(kfp.experiments))
    version_id = next(iter(kfp.versions))
    assert only(kfp.requests, "POST", f"{API}/runs").json == {
        "experiment_id": experiment_id,
        "display_name": "contracts-try-1",
        "pipeline_version_reference": {"pipeline_id": pipeline["pipeline_id"], "pipeline_version_id": version_id},
        "runtime_config": {"parameters": {"run_id": "nightly-7", "scheduled": False}},
    }
    run_id = next(iter(kfp.runs))
    assert out.splitlines()[-1] == f"run: {kfp.url}/#/runs/details/{run_id}"
    assert f"experiment: contracts ({experiment_id})" in out
    assert TOKEN not in out + err


def test_submit_again_versions_the_pipeline_and_reuses_the_same_spec(kfp, capsys):
    argv = ("submit", "--config", str(CONFIG), "--host", kfp.url)
    assert kubetune(capsys, *argv)[0] == 0
    first_upload = only(kfp.requests, "POST", f"{API}/pipelines/upload")
    digest = hashlib.sha256(first_upload.files["uploadfile"][1]).hexdigest()
    del kfp.requests[:]

    code, out, err = kubetune(capsys, *argv)  # the pipeline exists: a version named after the spec's hash
    assert code == 0, err
    assert ("POST", f"{API}/pipelines/upload") not in kfp.calls()
    new = only(kfp.requests, "POST", f"{API}/pipelines/upload_version")
    (pipeline_id,) = kfp.pipelines
    assert new.q("pipelineid") == pipeline_id
    assert new.q("name") == f"{PIPELINE}-{digest[:12]}"
    assert new.files["uploadfile"][1] == first_upload.files["uploadfile"][1]
    assert "new version" in out
    version_id = next(v for v, x in kfp.versions.items() if x["display_name"] == new.q("name"))
    run = only(kfp.requests, "POST", f"{API}/runs").json
    assert run["pipeline_version_reference"] == {"pipeline_id": pipeline_id, "pipeline_version_id": version_id}
    assert run["runtime_config"] == {"parameters": {}}  # no --param: the compiled defaults apply
    assert run["display_name"].startswith(f"{PIPELINE}-")
    assert only(kfp.requests, "GET", f"{API}/experiments").q("filter").count('"kubetune"') == 1
    assert ("POST", f"{API}/experiments") not in kfp.calls()  # the experiment exists now
    del kfp.requests[:]

    assert kubetune(capsys, *argv)[0] == 0  # same spec again: no upload at all, the same version runs
    assert not [c for c in kfp.calls() if c[1].startswith(f"{API}/pipelines/upload")]
    assert only(kfp.requests, "POST", f"{API}/runs").json["pipeline_version_reference"]["pipeline_version_id"] \
        == version_id
    assert len(kfp.runs) == 3


def _write_kubeconfig(path: Path, token: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": {"server": "https://k8s.example.invalid"}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}]}))
    return path


def test_submit_with_the_kube_config_token(kfp, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(_write_kubeconfig(tmp_path / "kubeconfig", "kube-config-token")))
    kfp.token = "kube-config-token"
    code, _, err = kubetune(capsys, "submit", "--config", str(CONFIG), "--host", kfp.url)
    assert code == 0, err
    assert {r.headers.get("authorization") for r in kfp.requests} == {"Bearer kube-config-token"}


def test_submit_with_a_service_account_token_file(kfp, capsys, monkeypatch, tmp_path):
    token_file = tmp_path / "sa-token"
    token_file.write_text("projected-sa-token\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))  # kfp's own credentials class reads it
    monkeypatch.setenv("KUBECONFIG", str(_write_kubeconfig(tmp_path / "kubeconfig", "not-this-one")))
    kfp.token = "projected-sa-token"
    code, _, err = kubetune(capsys, "runs", "--host", kfp.url)
    assert code == 0, err
    assert {r.headers.get("authorization") for r in kfp.requests} == {"Bearer projected-sa-token"}


def test_the_kube_config_token_goes_only_to_loopback_or_its_own_cluster(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(_write_kubeconfig(tmp_path / "kubeconfig", "kube-token")))
    proxy = "https://k8s.example.invalid/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy"
    assert resolve_auth(proxy).token == "kube-token"
    assert resolve_auth("http://localhost:8888").token == "kube-token"
    assert resolve_auth("http://127.0.0.1:8888").token == "kube-token"
    assert resolve_auth("https://kubeflow.example.com/pipeline").token is None  # another server: not sent
    assert resolve_auth("http://k8s.example.invalid").token is None  # same host, but not the API server's origin
    monkeypatch.setenv("KUBETUNE_KFP_TOKEN", "env-token")  # the environment comes first, for any host
    assert resolve_auth("https://kubeflow.example.com/pipeline").token == "env-token"

def test_a_wrong_token_is_a_clear_error(kfp, capsys, monkeypatch):
    kfp.token = "the-right-one"
    monkeypatch.setenv("KUBETUNE_KFP_TOKEN", "a-wrong-one")
    code, out, err = kubetune(capsys, "submit", "--config", str(CONFIG), "--host", kfp.url)
    assert code == 2
    assert err.strip() == (f"kubetune submit: error: {kfp.url}{API}/healthz: HTTP 401 Unauthorized: "
                           "Unauthenticated: missing or invalid bearer token: not authorized "
                           "(auth: $KUBETUNE_KFP_TOKEN); set $KF_PIPELINES_TOKEN to a valid token")
    assert kfp.calls() == [("GET", f"{API}/healthz")]
    assert "a-wrong-one" not in out + err


# ------------------------------------------------------------------------------------- schedule
def test_schedule_creates_a_recurring_run_with_a_six_field_cron(kfp, capsys):
    code, out, err = kubetune(capsys, "schedule", "--config", str(CONFIG), "--host", kfp.url,
                              "--cron", "30 3 * * MON-FRI", "--max-concurrency", "2", "--no-catchup",
                              "--experiment", "nightly")
    assert code == 0, err
    (pipeline_id,) = kfp.pipelines
    (version_id,) = kfp.versions
    (experiment_id,) = kfp.experiments
    assert kfp.calls()[-2:] == [("GET", f"{API}/recurringruns"), ("POST", f"{API}/recurringruns")]
    body = only(kfp.requests, "POST", f"{API}/recurringruns").json
    assert body == {
        "display_name": f"{PIPELINE}-schedule",
        "description": f"kubetune: {PIPELINE} on cron '0 30 3 * * MON-FRI' from {CONFIG}",
        "experiment_id": experiment_id,
        "mode": "ENABLE",
        "pipeline_version_reference": {"pipeline_id": pipeline_id, "pipeline_version_id": version_id},
        "runtime_config": {"parameters": {"scheduled": True}},
        "trigger": {"cron_schedule": {"cron": "0 30 3 * * MON-FRI"}},
        "max_concurrency": 2,
        "no_catchup": True,
    }
    assert only(kfp.requests, "POST", f"{API}/experiments").json["display_name"] == "nightly"
    (job_id,) = kfp.recurring_runs
    assert "cron (KFP, seconds first): 0 30 3 * * MON-FRI" in out
    assert out.splitlines()[-1] == f"recurring run: {kfp.url}/#/recurringrun/details/{job_id}"

    # The same name again is refused (not a silent duplicate schedule), naming the existing one.
    code, _, err = kubetune(capsys, "schedule", "--config", str(CONFIG), "--host", kfp.url, "--cron", "@daily",
                            "--experiment", "nightly")
    assert code == 2 and "already exists" in err and job_id in err
    assert len(kfp.recurring_runs) == 1


def test_schedule_defaults_and_six_fields_as_given(kfp, capsys):
    code, _, err = kubetune(capsys, "schedule", "--config", str(CONFIG), "--host", kfp.url,
                            "--cron", "15 0 */6 ? * *", "--name", "every-6h")
    assert code == 0, err
    body = only(kfp.requests, "POST", f"{API}/recurringruns").json
    assert body["trigger"] == {"cron_schedule": {"cron": "15 0 */6 ? * *"}}
    assert (body["max_concurrency"], body["no_catchup"], body["display_name"]) == (1, False, "every-6h")
    assert body["runtime_config"] == {"parameters": {"scheduled": True}}
    assert only(kfp.requests, "POST", f"{API}/experiments").json["display_name"] == "kubetune"


def test_runs_and_schedules_use_the_given_service_account(kfp, capsys):
    sa = "kubetune-pipeline-runner"  # k8s/rbac.yaml's least-privilege runner
    code, _, err = kubetune(capsys, "submit", "--config", str(CONFIG), "--host", kfp.url, "--service-account", sa)
    assert code == 0, err
    assert only(kfp.requests, "POST", f"{API}/runs").json["service_account"] == sa
    code, _, err = kubetune(capsys, "schedule", "--config", str(CONFIG), "--host", kfp.url, "--cron", "@daily",
                            "--service-account", sa)
    assert code == 0, err
    assert only(kfp.requests, "POST", f"{API}/recurringruns").json["service_account"] == sa


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--cron", "@daily"]])
@pytest.mark.parametrize("name", ["Kubetune_Runner", "runner-", "a" * 254])
def test_a_malformed_service_account_is_refused_before_connecting(kfp, capsys, command, name):
    with pytest.raises(SystemExit) as exit_:  # an argparse error: usage and the message on stderr
        cli.main([*command, "--config", str(CONFIG), "--host", kfp.url, "--service-account", name])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "argument --service-account" in err and "expected a Kubernetes object name" in err
    assert kfp.requests == [] and out == ""


# ----------------------------------------------------------------------------------------- runs
def test_runs_lists_states_newest_first(kfp, capsys):
    kfp.add_run("old-run", "SUCCEEDED")
    failed = kfp.add_run("broken-run", "FAILED", error="train: CUDA out of memory")
    newest = kfp.add_run("new-run", "RUNNING")
    code, out, err = kubetune(capsys, "runs", "--host", kfp.url, "--limit", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["STATE", "CREATED"]
    assert lines[1].split() == ["RUNNING", "2025-01-01", "00:02:00", newest["run_id"], "new-run",
                                f"{kfp.url}/#/runs/details/{newest['run_id']}"]
    assert lines[2].split()[:4] == ["FAILED", "2025-01-01", "00:01:00", failed["run_id"]]
    assert lines[3] == "  error: train: CUDA out of memory"
    assert len(lines) == 4  # --limit 2: the old run is left out
    listing = only(kfp.requests, "GET", f"{API}/runs")
    assert (listing.q("page_size"), listing.q("sort_by")) == ("2", "created_at desc")


def test_runs_of_one_experiment(kfp, capsys):
    assert kubetune(capsys, "submit", "--config", str(CONFIG), "--host", kfp.url, "--experiment", "a")[0] == 0
    kfp.add_run("elsewhere", "SUCCEEDED", experiment_id="other")
    del kfp.requests[:]
    code, out, err = kubetune(capsys, "runs", "--host", kfp.url, "--experiment", "a")
    assert code == 0, err
    (experiment_id,) = kfp.experiments
    assert only(kfp.requests, "GET", f"{API}/runs").q("experiment_id") == experiment_id
    assert len(out.splitlines()) == 2 and "PENDING" in out and "elsewhere" not in out


# ------------------------------------------------------------------------------------ bad input
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["submit", "schedule", "runs"])
def test_unreachable_host_is_a_fast_clear_error(capsys, command):
    host = f"http://127.0.0.1:{_free_port()}"
    extra = {"submit": ["--config", str(CONFIG)], "schedule": ["--config", str(CONFIG), "--cron", "0 3 * * *"],
             "runs": []}[command]
    started = time.monotonic()
    code, out, err = kubetune(capsys, command, *extra, "--host", host)
    assert code == 2
    assert time.monotonic() - started < 30  # compiling included; no retries with sleeps
    assert err.startswith(f"kubetune {command}: error: cannot reach the KFP API at {host}{API}/healthz: ")
    assert "Connection refused" in err and len(err.strip().splitlines()) == 1


def test_a_host_that_never_answers_times_out(capsys):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code, _, err = kubetune(capsys, "runs", "--host", host, "--timeout", "0.5")
        elapsed = time.monotonic() - started
    assert code == 2 and elapsed < 5
    assert err.strip() == (f"kubetune runs: error: cannot reach the KFP API at {host}{API}/healthz: no answer "
                           "within 0.5 s; check --host (e.g. `kubectl -n kubeflow port-forward svc/ml-pipeline "
                           "8888:8888`)")


@pytest.mark.parametrize("host", ["localhost:8888", "ftp://kfp.example.com", ""])
def test_a_malformed_host_is_refused_before_anything_else(capsys, host):
    code, _, err = kubetune(capsys, "submit", "--config", str(CONFIG), "--host", host)
    assert code == 2 and "--host" in err


@pytest.mark.parametrize(("expr", "kfp_cron"), [
    ("0 3 * * 1", "0 0 3 * * 1"),
    ("*/15 * * * *", "0 */15 * * * *"),
    ("  30   2 1,15 jan-jun/2 sun  ", "0 30 2 1,15 jan-jun/2 sun"),
    ("0 9 * * MON-FRI", "0 0 9 * * MON-FRI"),
    ("5 0 9 ? * 2-6", "5 0 9 ? * 2-6"),
    ("0 0 12 1/5 * ?", "0 0 12 1/5 * ?"),
    ("@Daily", "@daily"),
    ("@hourly", "@hourly"),
])
def test_cron_to_kfp_six_fields(expr, kfp_cron):
    assert to_kfp_cron(expr) == kfp_cron


@pytest.mark.parametrize(("expr", "message"), [
    ("61 * * * *", "minute field '61': 61 is out of range 0-59"),
    ("0 24 * * *", "hour field '24': 24 is out of range 0-23"),
    ("0 3 0 * *", "day-of-month field '0': 0 is out of range 1-31"),
    ("0 3 32 * *", "day-of-month field '32': 32 is out of range 1-31"),
    ("0 3 * 13 *", "month field '13': 13 is out of range 1-12"),
    ("0 3 * JAN-FOO *", "month field 'JAN-FOO': 'FOO' is not a number 1-12 or a name (JAN, FEB,"),
    ("0 3 * * 7", "day-of-week field '7': 7 is out of range 0-6 (Sunday is 0 or SUN)"),
    ("0 3 * * FUNDAY", "day-of-week field 'FUNDAY': 'FUNDAY' is not a number 0-6 or a name (SUN, MON,"),
    ("MON 3 * * *", "minute field 'MON': 'MON' is not a number 0-59"),
    ("*/0 * * * *", "minute field '*/0': step '0' in '*/0' must be a positive integer"),
    ("1/x * * * *", "minute field '1/x': step 'x' in '1/x' must be a positive integer"),
    ("1/2/3 * * * *", "minute field '1/2/3': step '2/3' in '1/2/3' must be a positive integer"),
    ("30-10 * * * *", "minute field '30-10': range '30-10' runs backwards"),
    ("1-2-3 * * * *", "minute field '1-2-3': '1-2-3' has more than one '-'"),
    ("1,,2 * * * *", "minute field '1,,2': empty item in the list"),
    ("-5 * * * *", "minute field '-5': '' is not a number 0-59"),
    ("60 0 3 * * *", "second field '60': 60 is out of range 0-59"),
    ("0 3 * *", "4 fields; expected 5 fields (minute hour day-of-month month day-of-week) or 6 (second first)"),
    ("0 0 3 * * * 2025", "7 fields; expected 5 fields"),
    ("@reboot", "unknown descriptor; expected one of @yearly"),
    ("   ", "--cron: empty; expected 5 fields"),
])
def test_invalid_cron_names_the_field(expr, message):
    with pytest.raises(KubetuneError) as e:
        to_kfp_cron(expr)
    assert message in str(e.value)


def test_schedule_with_an_invalid_cron_sends_nothing(kfp, capsys):
    code, out, err = kubetune(capsys, "schedule", "--config", str(CONFIG), "--host", kfp.url, "--cron", "0 25 * * *")
    assert code == 2
    assert err.strip() == "kubetune schedule: error: --cron '0 25 * * *': hour field '25': 25 is out of range 0-23"
    assert kfp.requests == [] and out == ""


@pytest.mark.parametrize("n", ["0", "11"])
def test_schedule_max_concurrency_range(kfp, capsys, n):
    code, _, err = kubetune(capsys, "schedule", "--config", str(CONFIG), "--host", kfp.url, "--cron", "@daily",
                            "--max-concurrency", n)
    assert code == 2 and "expected 1-10" in err and kfp.requests == []


@pytest.mark.parametrize(("param", "message"), [
    ("epochs=3", "--param epochs: unknown pipeline parameter; valid: config, run_id, scheduled"),
    ("Run_Id=x", "--param Run_Id: unknown pipeline parameter; valid: config, run_id, scheduled"),
    ("scheduled", "--param 'scheduled': expected NAME=VALUE; the pipeline's parameters: config, run_id, scheduled"),
    ("scheduled=maybe", "--param scheduled='maybe': not a valid boolean (expected true or false)"),
    ("run_id=../escape", "--param run_id='../escape': expected letters, digits"),
    ("config={not json", "--param config: not JSON"),
    ('config={"model": {}}', "invalid config --param config"),
])
def test_bad_params_are_refused_before_connecting(kfp, capsys, param, message):
    code, out, err = kubetune(capsys, "submit", "--config", str(CONFIG), "--host", kfp.url, "--param", param)
    assert code == 2
    assert message in err
    assert kfp.requests == [] and out == ""


def test_param_values_are_typed():
    types = {"config": "STRING", "run_id": "STRING", "scheduled": "BOOLEAN"}
    assert parse_params(["scheduled=yes", "run_id="], types) == {"scheduled": True, "run_id": ""}
    assert parse_params(["scheduled=0"], types) == {"scheduled": False}
    other = ROOT / "pipelines" / "configs" / "mistral-7b-lora.yaml"
    value = parse_params([f"config=@{other}"], types)["config"]
    assert json.loads(value) == json.loads(load_config(other).model_dump_json())
    assert parse_params([f"config={value}"], types) == {"config": value}
    with pytest.raises(KubetuneError, match="--param run_id: given twice"):
        parse_params(["run_id=a", "run_id=b"], types)


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_empty_image_names_are_refused_for_a_cluster(kfp, capsys, tmp_path, command):
    data = yaml.safe_load(CONFIG.read_text())
    data["cluster"]["images"]["train"] = ""
    config = tmp_path / "no-train-image.yaml"
    config.write_text(yaml.safe_dump(data))
    extra = ["--cron", "@daily"] if command == "schedule" else []
    code, out, err = kubetune(capsys, command, "--config", str(config), "--host", kfp.url, *extra)
    assert code == 2
    assert err.startswith(f"kubetune {command}: error: {config}: cluster.images.train: empty; expected an image "
                          "reference")
    assert kfp.requests == [] and out == ""

