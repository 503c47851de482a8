"""s3:// and gs:// models fetched from real protocol servers on loopback: moto's S3 server, which checks
SigV4 signatures against IAM users it holds, and gcp-storage-emulator's GCS JSON API. Credentials come
from the environment, as a ModelService's secretRef puts them there, and never reach the logs, even at
debug level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
import tritonclient.http as httpclient
from controlplane import free_port
from google.cloud import storage
from runtimeproc import RuntimeProcess

BIN = Path(sys.executable).parent
X = np.array([[1, 2, 3, 4], [-1, 0.5, 0, 2]], dtype=np.float32)
# Nothing from this machine's own cloud configuration may stand in for the credentials under test.
NO_AMBIENT = {
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _serve_from(url: str, port: int, argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    server = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, f"{argv[0]} did not start"
                time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def s3(models: dict[str, Path]) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto S3 server holding the linear model at s3://models/vision/linear.onnx, readable with the
    returned credentials (an IAM user's access key; moto checks signatures once the first three
    unauthenticated calls have created it)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    for _ in _serve_from(url + "/moto-api/", port, argv, {"INITIAL_NO_AUTH_ACTION_COUNT": "3"}):
        common = {"endpoint_url": url, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap", **common)
        iam.create_user(UserName="zeroserve")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="zeroserve", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="zeroserve")["AccessKey"]
        creds = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_ENDPOINT_URL": url,
        }
        client = boto3.client(
            "s3",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            **common,
        )
        client.create_bucket(Bucket="models")
        client.upload_file(str(models["linear"]), "models", "vision/linear.onnx")
        yield "s3://models/vision/linear.onnx", creds


def _runtime(uri: str, folder: Path, env: dict[str, str]) -> RuntimeProcess:
    folder.mkdir()
    proc = RuntimeProcess(uri, folder / "log", name="linear", log_level="debug")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        proc.env.pop(name, None)
    proc.env.update({**NO_AMBIENT, **env})
    return proc


def _answers_like_the_model(proc: RuntimeProcess, models: dict[str, Path]) -> None:
    import onnxruntime as ort

    tensor = httpclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    with httpclient.InferenceServerClient(proc.address) as client:
        got = client.infer("linear", [tensor]).as_numpy("y")
    want = ort.InferenceSession(str(models["linear"]), providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": X}
    )
    np.testing.assert_allclose(got, want[0], rtol=1e-6)


def test_s3_model_with_credentials_from_the_environment(
    s3: tuple[str, dict[str, str]], models: dict[str, Path], tmp_path: Path
) -> None:
    uri, creds = s3
    secret = creds["AWS_SECRET_ACCESS_KEY"]
    with _runtime(uri, tmp_path / "right", creds) as proc:
        _answers_like_the_model(proc, models)
    log = proc.log()
    assert "DEBUG" in log, "not at debug level"
    assert secret not in log

    # Signed with a wrong secret, the request is refused by the server (a HEAD: 403 without a body), and
    # the runtime says so.
    wrong = {**creds, "AWS_SECRET_ACCESS_KEY": "wrong-" + secret[6:]}
    proc = _runtime(uri, tmp_path / "wrong", wrong)
    with pytest.raises(RuntimeError, match="exited with 1"):
        proc.start()
    log = proc.log()
    assert "cannot fetch s3://models/vision/linear.onnx" in log and "(403)" in log, log
    assert secret not in log and wrong["AWS_SECRET_ACCESS_KEY"] not in log


@pytest.fixture
def gcs(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, str]]]:
    """gcp-storage-emulator holding the linear model at gs://models/vision/linear.onnx. Google's client
    goes to it, rather than to storage.googleapis.com, when STORAGE_EMULATOR_HOST names it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "gcp-storage-emulator"), "start", "-H", "127.0.0.1", "--port", str(port), "-M", "-q"]
    for _ in _serve_from(url + "/storage/v1/b", port, argv, {"PROJECT_NUMBER": "1234"}):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        client = storage.Client()
        client.create_bucket("models").blob("vision/linear.onnx").upload_from_filename(str(models["linear"]))
        yield "gs://models/vision/linear.onnx", {"STORAGE_EMULATOR_HOST": url}


def test_gs_model(gcs: tuple[str, dict[str, str]], models: dict[str, Path], tmp_path: Path) -> None:
    uri, env = gcs
    with _runtime(uri, tmp_path / "there", env) as proc:
        _answers_like_the_model(proc, models)
    # A missing object stops the runtime with the URI it could not fetch.
    proc = _runtime("gs://models/vision/missing.onnx", tmp_path / "missing", env)
    with pytest.raises(RuntimeError, match="exited with 1"):
        proc.start()
    assert "cannot fetch gs://models/vision/missing.onnx" in proc.log(), proc.tail()
