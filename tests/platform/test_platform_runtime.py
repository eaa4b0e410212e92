"""The runtime around Ray: token file, ports, process identity, Ray's output in a log file, no stale attach.

The slow tests run real `herd` commands in subprocesses with their own HERD_HOME and RAY_TMPDIR: the session's
Ray (conftest) writes Ray's `ray_current_cluster` file under the shared RAY_TMPDIR, which is exactly the trap
a plain `ray.init()` falls into (issue 13, item 1).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from herd.platform import services
from herd.platform.config import RuntimeConfig
from herd.platform.runtime import Credentials, Runtime, with_credentials, write_private

HERD = str(Path(sys.executable).parent / "herd")
SMALL_DATA = ["data.synthetic.n_entities=30", "data.synthetic.n_arithmetic_train=100", "data.synthetic.n_needle_docs=5",
              "data.synthetic.n_filler_docs=30", "data.synthetic.n_chat=50", "data.synthetic.n_images=20",
              "data.tokenizer.vocab_size=1024", "runtime.num_cpus=2", "runtime.object_store_mb=256"]
RAY_NOISE = ("core_worker.cc", "constructor arguments", "WARNING authentication", "INFO worker.py",
             "Failed to connect to GCS", "(raylet)", "pid=")


def test_token_file_is_private_from_its_first_byte(tmp_path, monkeypatch):
    path = tmp_path / "ray_auth_token"
    modes = []
    real_open = os.open

    def spy(p, flags, mode=0o777, *a, **kw):  # every file the writer creates, with the mode it asks for
        modes.append((Path(p).name, flags & os.O_EXCL, mode))
        return real_open(p, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    old = os.umask(0)  # the mode must not rely on the user's umask
    try:
        assert write_private(path, "s3cr3t-token") is True
        assert write_private(path, "another") is False  # never replaced once written
    finally:
        os.umask(old)
    assert path.read_text() == "s3cr3t-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert modes and all(excl and mode == 0o600 for _, excl, mode in modes)
    assert [p.name for p in tmp_path.iterdir()] == ["ray_auth_token"]  # no temp file left behind


def test_free_port_takes_a_port_in_time_wait_but_not_one_in_use():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.listen()
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    assert services.free_port(port) != port  # listening: busy
    conn.close()  # the server side closes first: its end of the connection sits in TIME_WAIT
    time.sleep(0.1)
    cli.close()
    srv.close()
    with socket.socket() as probe, pytest.raises(OSError):  # what the old probe did: it calls the port busy
        probe.bind(("127.0.0.1", port))
    assert services.free_port(port) == port


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def test_down_stops_only_the_process_it_recorded(tmp_path):
    cfg = RuntimeConfig(home=str(tmp_path))
    ours, stranger = _sleeper(), _sleeper()
    try:
        time.sleep(0.3)
        ident = services.process_identity(ours.pid)
        assert ident is not None and "time.sleep(120)" in ident["cmd"]
        other = services.process_identity(stranger.pid)
        # "stranger" holds a pid herd once recorded, but it is another process now (its start time differs)
        services._write_services(tmp_path, {
            "ray": {"pid": ours.pid, "address": "127.0.0.1:1", **ident},
            "mlflow": {"pid": stranger.pid, "uri": "http://127.0.0.1:1", "cmd": other["cmd"], "started": "1"}})
        assert set(services.read_services(tmp_path)) == {"ray"}
        said: list[str] = []
        assert services.down(cfg, on_event=said.append, grace_s=10) == ["ray"]
        assert ours.wait(timeout=10) is not None
        assert stranger.poll() is None  # untouched
        assert any("mlflow: pid" in s and "left alone" in s for s in said)
        assert any(s.startswith("stopping ray (pid") for s in said) and any("stopped ray in" in s for s in said)
        assert not services.services_file(tmp_path).exists()
    finally:
        for p in (ours, stranger):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_credentials_travel_as_arguments_not_in_runtime_env(ray_local, monkeypatch):
    import ray

    secret = "wJalrXUtnFEMI-K7MDENG-" + os.urandom(4).hex()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHERDTEST0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    rt = Runtime(RuntimeConfig(store="s3://bucket/prefix"))
    env = rt.task_env()  # regions and endpoints only (the S3 test server's endpoints when it runs): no keys
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert set(env) <= {"AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"}
    assert secret not in json.dumps(env) and "AKIAHERDTEST0001" not in json.dumps(env)
    creds = rt.credentials()
    assert secret not in repr(creds) and "AWS_SECRET_ACCESS_KEY" in repr(creds)
    assert rt.artifact_store().storage_options["secret"] == secret  # pickled into every task with the store

    def read_env():
        return os.environ.get("AWS_SECRET_ACCESS_KEY")

    task = ray.remote(with_credentials).options(name="herd-creds-test", runtime_env={"env_vars": rt.task_env()})
    assert ray.get(task.remote(creds, read_env)) == secret
    from ray.util.state import list_tasks

    listed = "[]"
    for _ in range(30):  # task events reach the State API in batches (about once a second)
        listed = json.dumps([t.__dict__ for t in list_tasks(address=ray_local.address, detail=True,
                                                            filters=[("name", "=", "herd-creds-test")])], default=str)
        if "runtime_env" in listed:
            break
        time.sleep(1)
    assert "herd-creds-test" in listed and secret not in listed  # the dashboard's view of the task
    assert isinstance(Credentials(), Credentials) and Credentials().env == ()


def test_ray_output_goes_to_the_log_file_and_herd_output_to_the_terminal(tmp_path):
    script = textwrap.dedent(f"""
        import logging, os, sys
        from herd.platform.raylog import RayLog
        log = RayLog({str(tmp_path / 'ray.log')!r}).start()
        os.write(2, b"[E core_worker.cc:1] C++ noise on fd 2\\n")
        logging.getLogger("ray").warning("ray logger noise")
        late = logging.getLogger("ray.late")  # a Ray logger configured after start(), as ray.data's can be
        late.addHandler(logging.StreamHandler())
        log.route_loggers()
        late.warning("late ray noise")
        assert os.environ["RAY_DATA_LOGGING_CONFIG"].endswith("ray-data-logging.json")
        print("herd says hello", file=sys.stderr)
        log.stop()
        os.write(2, b"after stop\\n")
    """)
    res = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == ["herd says hello", "after stop"]
    written = (tmp_path / "ray.log").read_text()
    assert "C++ noise on fd 2" in written and "ray logger noise" in written and "late ray noise" in written
    assert "hello" not in written


def _herd(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([HERD, *args], check=False, env=env, capture_output=True, text=True, timeout=timeout)


def _isolated_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HERD_"))}
    raytmp = Path(f"/tmp/herdrt-{os.getpid()}-{os.urandom(3).hex()}")  # short: Ray's unix sockets live here
    raytmp.mkdir()
    env.update(HERD_HOME=str(tmp_path / "home"), RAY_TMPDIR=str(raytmp), TOKENIZERS_PARALLELISM="false",
               RAY_USAGE_STATS_ENABLED="0")
    return env


@pytest.mark.slow
def test_a_stale_ray_current_cluster_file_never_captures_herd_run(tmp_path):
    """The original hang: Ray's file names a head that is gone; herd starts its own Ray and finishes."""
    env = _isolated_env(tmp_path)
    stale = Path(env["RAY_TMPDIR"]) / "ray"
    stale.mkdir(parents=True)
    (stale / "ray_current_cluster").write_text("127.0.0.1:1")  # nothing listens on port 1
    res = _herd(["flow", "data", *[f"--set={s}" for s in SMALL_DATA]], env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert not [n for n in RAY_NOISE if n in out], out[-3000:]
    logs = list((tmp_path / "home" / "logs").glob("ray-*.log"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0  # Ray's own lines went there


@pytest.mark.slow
def test_up_down_then_run_finishes(tmp_path):
    env = _isolated_env(tmp_path)
    up = _herd(["up"], env, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    line = next(x for x in up.stdout.splitlines() if x.startswith("Ray head"))
    assert "run `herd token`" in line and line.rstrip().endswith("ray_auth_token)")  # the command, one line
    token = Path(env["HERD_HOME"], "ray_auth_token").read_text().strip()
    assert token not in up.stdout + up.stderr
    assert _herd(["token"], env, timeout=60).stdout.strip() == token
    recorded = json.loads(Path(env["HERD_HOME"], "services.json").read_text())
    assert recorded["ray"]["cmd"] and recorded["ray"]["started"]
    _a_herd_command_is_a_named_ray_job(env, recorded["ray"], token)
    t0 = time.monotonic()
    down = _herd(["down"], env, timeout=120)
    took = time.monotonic() - t0
    assert down.returncode == 0 and "stopping ray" in down.stdout and "stopped: " in down.stdout, down.stdout
    assert "stopped ray in" in down.stdout and "stopped mlflow in" in down.stdout, down.stdout  # never silent
    print(f"herd down took {took:.1f} s")
    assert took < 30, (took, down.stdout)  # it took ~33 s in silence (Ray's 30 s drain on SIGTERM)
    assert not (Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").exists()
    run = _herd(["flow", "data", *[f"--set={s}" for s in SMALL_DATA]], env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not [n for n in RAY_NOISE if n in run.stdout + run.stderr], (run.stdout + run.stderr)[-3000:]


def _a_herd_command_is_a_named_ray_job(env: dict[str, str], head: dict, token: str) -> None:
    """A herd command attached to `herd up`'s head shows on the dashboard's Jobs table by name (the metadata key
    `job_name`) and entrypoint, both the command with secret --set values hidden (Ray would show the raw command
    line, secret included)."""
    script = textwrap.dedent("""
        import sys
        sys.argv = ["/venv/bin/herd", "flow", "data", "--recipe", "test", "--set", "runtime.storage_options.secret=s3cr3t"]
        from herd.platform.runtime import Runtime
        rt = Runtime(route_logs=True)
        info = rt.start()
        import ray
        print("JOB", ray.get_runtime_context().get_job_id(), info.job_name, info.started_here)
        rt.stop()
    """)
    res = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    _, job_id, *name, started = next(x for x in res.stdout.splitlines() if x.startswith("JOB ")).split(" ")
    assert started == "False" and " ".join(name) == "herd flow data --recipe test --set runtime.storage_options.secret=***"
    import urllib.request

    req = urllib.request.Request(f"{head['dashboard']}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        jobs = {j["job_id"]: j for j in json.loads(r.read())}
    assert jobs[job_id]["metadata"]["job_name"] == jobs[job_id]["entrypoint"] == " ".join(name), jobs[job_id]
    assert jobs[job_id]["metadata"]["herd_home"] == env["HERD_HOME"]
    assert "s3cr3t" not in json.dumps(jobs[job_id])


def test_mlflow_own_log_lines_go_to_a_file_not_the_terminal(tmp_path):
    """Issue 13: "Creating initial MLflow database tables..." reached the terminal of `herd run`."""
    script = textwrap.dedent(f"""
        import logging
        from herd.platform.config import RuntimeConfig
        from herd.platform.lineage import LineageRecorder
        from herd.platform.runtime import Runtime
        rt = Runtime(RuntimeConfig(home={str(tmp_path / 'home')!r}), route_logs=True)
        rt.prepare()
        LineageRecorder(rt.tracking_uri, "herd")   # a new sqlite store: MLflow creates its tables
        logging.getLogger("mlflow.herdtest").warning("an MLflow warning")
        rt.stop()
        logging.getLogger("mlflow.herdtest").info("after stop")   # MLflow's own handlers are back
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
    res = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Creating initial MLflow database tables" not in res.stderr + res.stdout
    assert "an MLflow warning" in res.stderr and "after stop" in res.stderr  # warnings still show
    log = (tmp_path / "home" / "logs" / "mlflow-client.log").read_text()
    assert "Creating initial MLflow database tables" in log and "an MLflow warning" in log
    assert "after stop" not in log


@pytest.mark.slow
def test_ensure_persistent_starts_a_recorded_head_that_outlives_the_command(tmp_path):
    env = _isolated_env(tmp_path)
    script = textwrap.dedent("""
        import json
        from herd.platform.runtime import Runtime
        rt = Runtime()
        head = rt.ensure_persistent()
        info = rt.start()
        assert not info.started_here and info.address.endswith(head["address"].rsplit(":", 1)[1]), (info, head)
        rt.stop()
        again = Runtime()  # a later command attaches to the recorded head
        assert again.ray_address == head["address"]
        print(json.dumps(head))
    """)
    try:
        res = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        head = json.loads(res.stdout.strip().splitlines()[-1])
        assert services.process_identity(head["pid"]) is not None  # still running after the command ended
    finally:
        down = _herd(["down"], env, timeout=120)
    assert down.returncode == 0 and "stopped: ray" in down.stdout, down.stdout + down.stderr


def test_mlflow_prints_no_view_run_lines_of_its_own(mlflow_server, tmp_path, monkeypatch, capfd):
    from mlflow import MlflowClient

    from herd.platform.runtime import base_env

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    client = MlflowClient(mlflow_server)
    exp = client.create_experiment(f"noise-{os.getpid()}-{time.time_ns()}")
    client.set_terminated(client.create_run(exp).info.run_id)
    assert "View run" in capfd.readouterr().out  # MLflow's default: two lines per finished run
    monkeypatch.setenv("HERD_HOME", str(tmp_path))
    base_env(tmp_path)
    client.set_terminated(client.create_run(exp).info.run_id)
    assert "View run" not in capfd.readouterr().out
