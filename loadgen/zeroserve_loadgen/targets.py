"""The bench file: the targets to compare, the one payload they all receive, and the workload.

    targets:
      - name: zeroserve
        kind: oip-rest            # oip-rest | oip-grpc | lambda-url | gcf
        url: http://digits.default.example.com
        model: digits
        idle_window_s: 60         # scale-to-zero window: a request after a longer gap started cold
        pricing: {model: node, preset: aws-c7i.xlarge}
        replicas: {namespace: ml, selector: "serving.knative.dev/service=digits"}   # optional
    payload: request.json         # an OIP v2 inference request (JSON), relative to this file
    workload: {type: mmpp, rates: [2, 20], mean_sojourn_s: [20, 5], duration_s: 120, seed: 1}

Secrets never live in the file: a bearer token is read from the environment variable it names, and SigV4
credentials come from botocore's usual chain (environment, profile, instance role).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zeroserve_loadgen.pricing import CloudRunPricing, LambdaPricing, NodePricing, Pricing
from zeroserve_loadgen.workloads import Workload

Kind = Literal["oip-rest", "oip-grpc", "lambda-url", "gcf"]


class BenchFileError(ValueError):
    """A bench file that cannot be used; the message names the file and the bad field."""


class NoAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["none"] = "none"


class BearerAuth(BaseModel):
    """`Authorization: Bearer <token>`, e.g. `gcloud auth print-identity-token` for a private function."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["bearer"] = "bearer"
    token_env: str = Field(description="Environment variable holding the token.")

    def token(self) -> str:
        value = os.environ.get(self.token_env, "").strip()
        if not value:
            raise BenchFileError(f"auth.token_env: environment variable {self.token_env} is not set or empty")
        return value


class SigV4Auth(BaseModel):
    """AWS Signature V4 for a function URL with AuthType AWS_IAM; needs botocore (`zeroserve[aws]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["sigv4"] = "sigv4"
    region: str
    service: str = "lambda"


Auth = Annotated[NoAuth | BearerAuth | SigV4Auth, Field(discriminator="type")]

# Kubernetes' label selector grammar, so that a typo is refused with the field named before a run rather
# than by the API server once the run has started.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}"
_VALUE = rf"({_NAME})?"
_REQUIREMENT = re.compile(
    rf"^(!\s*{_KEY}|{_KEY}(\s*(==|!=|=)\s*{_VALUE}"
    rf"|\s+(in|notin)\s*\(\s*{_VALUE}(\s*,\s*{_VALUE})*\s*\))?)$"
)


def _split_selector(selector: str) -> list[str]:
    """Requirements are comma-separated, but so are the values inside `in (a, b)`."""
    parts, depth, current = [], 0, ""
    for ch in selector:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [*parts, current.strip()]


class ReplicaSource(BaseModel):
    """Where a target's replicas are: the pods matching `selector` in `namespace`, counted through the
    Kubernetes API during the run (a Knative revision's pods carry `serving.knative.dev/service=NAME`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    selector: str = Field(description="Label selector of the target's pods, e.g. app=digits.")
    kubeconfig: Path | None = Field(
        None,
        description="Relative to the bench file. Unset: $KUBECONFIG or ~/.kube/config, else the in-cluster "
        "service account.",
    )
    context: str | None = Field(None, min_length=1, description="Kubeconfig context; unset: the current one.")

    @field_validator("selector")
    @classmethod
    def _selector(cls, v: str) -> str:
        v = v.strip()
        # An empty selector would count every pod in the namespace as this target's.
        if not v:
            raise ValueError("an empty selector would match every pod in the namespace")
        bad = [r for r in _split_selector(v) if not _REQUIREMENT.match(r)]
        if bad:
            raise ValueError(f"not a Kubernetes label selector: {bad[0]!r}")
        return v


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="Short name used in reports.")
    kind: Kind
    url: str = Field(description="Base URL (http/https); for oip-grpc host:port, optionally grpc://.")
    model: str = Field(
        description="Model name in /v2/models/{model}/infer (or ModelInferRequest.model_name)."
    )
    auth: Auth = NoAuth()
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers, e.g. Host for a Knative route."
    )
    idle_window_s: float | None = Field(
        None,
        gt=0,
        description="Scale-to-zero window. A request after a longer idle gap is counted as a cold start "
        "(also the first request of the run). Unset: only the target's own cold-start header counts.",
    )
    cold_start_max_ready_age_s: float = Field(
        2.0,
        ge=0,
        description="A request flagged by the target's cold-start header counts as a cold start only if it "
        "arrived at most this long after the instance was ready, i.e. it waited for the start; a later one "
        "found a pre-started instance (its init is still billed, once).",
    )
    timeout_s: float = Field(30.0, gt=0, description="Per-request timeout; a timeout counts as a failure.")
    pricing: Pricing | None = Field(None, description="Defaults by kind: lambda, cloud-run, or a CPU node.")
    replicas: ReplicaSource | None = Field(
        None, description="Record the target's replica count over the run from the Kubernetes API."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return v.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> Target:
        scheme = urlsplit(self.url).scheme
        if self.kind == "oip-grpc":
            if scheme not in ("", "grpc") and "://" in self.url:
                raise ValueError(f"url: oip-grpc takes host:port or grpc://host:port, not {scheme}://")
            if not isinstance(self.auth, NoAuth):
                raise ValueError("auth: oip-grpc targets take no auth")
        elif scheme not in ("http", "https"):
            raise ValueError(f"url: {self.kind} needs an http:// or https:// URL, got {self.url!r}")
        if isinstance(self.auth, SigV4Auth) and self.kind != "lambda-url":
            raise ValueError("auth: sigv4 is for lambda-url targets")
        if isinstance(self.pricing, NodePricing) and self.pricing.replica_cpu and self.replicas is None:
            raise ValueError("pricing.replica_cpu: prices recorded replica-seconds; add a replicas: block")
        return self

    def effective_pricing(self) -> LambdaPricing | CloudRunPricing | NodePricing:
        if self.pricing is not None:
            return self.pricing
        return {"lambda-url": LambdaPricing(), "gcf": CloudRunPricing()}.get(self.kind, NodePricing())

    def grpc_address(self) -> str:
        return self.url.removeprefix("grpc://")


class BenchFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: list[Target] = Field(min_length=1)
    payload: Path | dict[str, Any] = Field(
        description="OIP v2 inference request every target receives: a JSON file or an inline mapping."
    )
    workload: Workload

    @model_validator(mode="after")
    def _unique_names(self) -> BenchFile:
        names = [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"targets: duplicate names {dupes}")
        return self


def _location(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """`targets[1] (lambda).auth.region` rather than pydantic's `targets.1.auth.sigv4.region`: union tags
    that pydantic inserts are dropped, list items get the target's name."""
    parts: list[str] = []
    node: Any = raw
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
            if isinstance(node, dict) and "name" in node:
                parts[-1] += f" ({node['name']})"
        elif isinstance(node, dict) and item in node:
            parts.append(f".{item}")
            node = node[item]
        elif isinstance(node, dict) and item in (node.get("type"), node.get("model")):
            continue
        elif node is None or isinstance(node, dict):
            parts.append(f".{item}")
            node = None
    return "".join(parts).lstrip(".") or "(top level)"


def load_payload(bench: BenchFile, base_dir: Path) -> dict[str, Any]:
    if isinstance(bench.payload, dict):
        payload = bench.payload
    else:
        path = bench.payload if bench.payload.is_absolute() else base_dir / bench.payload
        try:
            payload = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise BenchFileError(f"payload: {path} does not exist") from None
        except orjson.JSONDecodeError as e:
            raise BenchFileError(f"payload: {path} is not valid JSON: {e}") from None
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise BenchFileError("payload: must be an OIP v2 inference request with a non-empty 'inputs' list")
    for i, tensor in enumerate(inputs):
        missing = [
            k
            for k in ("name", "datatype", "shape", "data")
            if not isinstance(tensor, dict) or k not in tensor
        ]
        if missing:
            raise BenchFileError(f"payload: inputs[{i}] lacks {', '.join(missing)}")
    return payload


def load_bench_file(path: Path) -> tuple[BenchFile, dict[str, Any]]:
    """Parse and validate a bench file; every error names the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BenchFileError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        raise BenchFileError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise BenchFileError(f"{path}: expected a mapping with 'targets' and 'payload'")
    try:
        bench = BenchFile.model_validate(raw)
    except ValidationError as e:
        lines = [f"{_location(err['loc'], raw)}: {err['msg']}" for err in e.errors()]
        raise BenchFileError(f"{path}: invalid bench file\n  " + "\n  ".join(lines)) from None
    try:
        payload = load_payload(bench, path.parent)
    except BenchFileError as e:
        raise BenchFileError(f"{path}: {e}") from None
    try:
        bench = _resolve_kubeconfigs(bench, path.parent)
    except BenchFileError as e:
        raise BenchFileError(f"{path}: {e}") from None
    return bench, payload


def _resolve_kubeconfigs(bench: BenchFile, base_dir: Path) -> BenchFile:
    """Like the payload, a kubeconfig path is relative to the bench file, wherever the bench runs from."""
    targets = []
    for i, t in enumerate(bench.targets):
        if t.replicas is not None and t.replicas.kubeconfig is not None:
            kubeconfig = base_dir / t.replicas.kubeconfig.expanduser()
            if not kubeconfig.is_file():
                raise BenchFileError(
                    f"targets[{i}] ({t.name}).replicas.kubeconfig: {kubeconfig} does not exist"
                )
            t = t.model_copy(update={"replicas": t.replicas.model_copy(update={"kubeconfig": kubeconfig})})
        targets.append(t)
    return bench.model_copy(update={"targets": targets})
