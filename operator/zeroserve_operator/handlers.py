"""kopf handlers: thin and level-based. Every pass builds the desired Knative Service, applies it only when
a field we own differs, and mirrors the Knative Service's status back.

Run with `zeroserve operator` or `kopf run -m zeroserve_operator.handlers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import pydantic
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from zeroserve_operator import api, metrics
from zeroserve_operator.ownership import FIELD_MANAGER, owned_fields_match
from zeroserve_operator.resources import knative, status, triton
from zeroserve_operator.settings import OperatorSettings

CONFLICT_RETRIES = 3
REJECTED_RETRY_SECONDS = 300

operator_settings = OperatorSettings()
# The namespaces kopf watches (`zeroserve operator --namespace`); empty: the whole cluster.
watched_namespaces: list[str] = []


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    # Our own prefix for kopf's bookkeeping, instead of the generic kopf.zalando.org.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="zeroserve.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="zeroserve.dev", key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    # Bounded concurrency: a burst of ModelServices is worked off by a pool of workers instead of one
    # per object, which keeps API connections, in-flight bodies and so memory flat; the API server is
    # the bottleneck anyway.
    settings.queueing.worker_limit = operator_settings.worker_limit
    settings.queueing.idle_timeout = 0.5  # a finished object frees its worker slot quickly
    # kubernetes_asyncio logs whole response bodies at DEBUG, even under `--verbose` they are noise.
    logging.getLogger("kubernetes_asyncio").setLevel(logging.INFO)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        await config.load_kube_config()
    memo.api = client.ApiClient()
    memo.health = asyncio.create_task(runtime_health_loop(memo.api, logger))
    metrics.serve(operator_settings.metrics_port, operator_settings.metrics_addr)
    logger.info("zeroserve operator started; default onnx image %s", operator_settings.onnx_image)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    health = getattr(memo, "health", None)
    if health is not None:
        health.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health
    if getattr(memo, "api", None) is not None:
        await memo.api.close()


FEATURES_TTL_SECONDS = 5.0
_features_cache: tuple[float, dict[str, str] | None] | None = None


async def _config_features(api_client: client.ApiClient) -> dict[str, str] | None:
    """Knative's config-features, read at most every few seconds: a burst of ModelServices needs one
    read, not one each. None when it is absent or not readable."""
    global _features_cache
    now = time.monotonic()
    if _features_cache is not None and now - _features_cache[0] < FEATURES_TTL_SECONDS:
        return _features_cache[1]
    try:
        cm = await client.CoreV1Api(api_client).read_namespaced_config_map(
            "config-features", operator_settings.knative_namespace
        )
        data: dict[str, str] | None = dict(cm.data or {})
    except ApiException as e:
        if e.status not in (403, 404):
            raise
        data = None
    _features_cache = (now, data)
    return data


async def _read_ksvc(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return await custom.get_namespaced_custom_object(
            knative.KNATIVE_GROUP, knative.KNATIVE_VERSION, namespace, knative.KNATIVE_PLURAL, name
        )
    except ApiException as e:
        if e.status == 404 and not _knative_missing(e):
            return None
        raise


async def _apply_ksvc(custom: client.CustomObjectsApi, desired: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply: the API server tracks which fields are ours, so fields we stop setting go away and
    fields others set (Knative's defaults) stay theirs. Retried on 409 conflicts."""
    meta = desired["metadata"]
    for attempt in range(CONFLICT_RETRIES):
        try:
            return await custom.patch_namespaced_custom_object(
                knative.KNATIVE_GROUP,
                knative.KNATIVE_VERSION,
                meta["namespace"],
                knative.KNATIVE_PLURAL,
                meta["name"],
                desired,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        except ApiException as e:
            if e.status != 409 or attempt == CONFLICT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _knative_missing(e: ApiException) -> bool:
    """A 404 for the API itself, not for one object: the apiserver then answers without a NotFound Status."""
    if e.status != 404:
        return False
    try:
        answer = json.loads(e.body)
    except (TypeError, ValueError):
        return True
    return not (answer.get("reason") == "NotFound" and (answer.get("details") or {}).get("name"))


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(e.reason)


@dataclass
class Outcome:
    """What one pass found: the status to write and, when blocked, whether and when to try again."""

    status: dict[str, Any]
    result: str = "success"
    message: str = ""
    retry_after: float | None = None  # blocked until something outside the spec changes
    # Events to post about the ModelService, (type, reason, message): returned rather than posted, since
    # kopf posts only from its handlers and the health sweep runs outside them.
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def permanent(self) -> bool:
        return self.result != "success" and self.retry_after is None


async def reconcile_modelservice(
    body: Mapping[str, Any],
    api_client: client.ApiClient,
    logger: logging.Logger,
    ksvc: Mapping[str, Any] | None = None,
) -> Outcome:
    """Close the gap between one ModelService and its Knative Service (`ksvc`, when the caller has just
    seen it in a watch event; otherwise it is read)."""
    try:
        spec = api.ModelServiceSpec.model_validate(body["spec"])
    except pydantic.ValidationError as e:
        return _blocked(body, "invalid", "InvalidSpec", _describe(e))
    try:
        return await _close_gap(body, spec, api_client, logger, ksvc)
    except ApiException as e:
        message = f"Kubernetes API error {e.status}: {_api_message(e)}"
        logger.error(message)
        return _blocked(body, "error", "KubernetesAPIError", message, operator_settings.retry_delay)


def _blocked(
    body: Mapping[str, Any], result: str, reason: str, message: str, retry_after: float | None = None
) -> Outcome:
    generation = body["metadata"].get("generation", 1)
    new = status.blocked_status(
        generation, body.get("status"), reason, message, spec_valid=result != "invalid"
    )
    return Outcome(new, result, message, retry_after)


async def _close_gap(
    body: Mapping[str, Any],
    spec: api.ModelServiceSpec,
    api_client: client.ApiClient,
    logger: logging.Logger,
    ksvc: Mapping[str, Any] | None,
) -> Outcome:
    desired = knative.build_knative_service(body, operator_settings)
    meta, generation = body["metadata"], body["metadata"].get("generation", 1)
    events: list[tuple[str, str, str]] = []
    previous = body.get("status") or {}

    # A spec Knative's webhook would refuse is not sent; the condition names the flag to turn on.
    needed = status.required_features(desired)
    disabled = status.disabled_features(needed, await _config_features(api_client)) if needed else []
    if disabled:
        message = status.features_message(disabled)
        logger.warning(message)
        new = status.observed_status(spec, generation, None, previous, disabled)
        return Outcome(new, "feature_disabled", message, operator_settings.retry_delay)

    custom = client.CustomObjectsApi(api_client)
    try:
        actual = dict(ksvc) if ksvc is not None else await _read_ksvc(custom, meta["namespace"], meta["name"])
    except ApiException as e:
        if not _knative_missing(e):
            raise
        message = (
            "The serving.knative.dev/v1 API is not installed. Install Knative Serving; this ModelService "
            "is reconciled once it is there."
        )
        return _blocked(
            body, "knative_missing", "KnativeNotInstalled", message, operator_settings.retry_delay
        )
    if actual is not None and not _owned_by(actual, meta["uid"]):
        message = (
            f"A Knative Service named {meta['name']} already exists and belongs to someone else; "
            "retrying until it is gone."
        )
        return _blocked(body, "conflict", "KnativeServiceConflict", message, operator_settings.retry_delay)
    if actual is None or not owned_fields_match(desired, actual):
        verb = "Created" if actual is None else "Updated"
        try:
            actual = await _apply_ksvc(custom, desired)
        except ApiException as e:
            if e.status not in (400, 422):
                raise
            # Knative's admission webhook refused it. A spec change retries at once; a change of the
            # cluster's Knative config (max timeout, scale limits) is picked up by the slow retry.
            return _blocked(body, "rejected", "KnativeRejected", _api_message(e), REJECTED_RETRY_SECONDS)
        message = f"{verb} Knative Service {meta['namespace']}/{meta['name']}"
        logger.info(message)
        events.append(("Normal", f"KnativeService{verb}", message))
    failure = None
    if status.readiness(previous) != "true" or not status.knative_serving(actual):
        failure = await _runtime_failure(api_client, meta["namespace"], meta["name"], logger)
    return Outcome(status.observed_status(spec, generation, actual, previous, failure=failure), events=events)


async def _runtime_failure(
    api_client: client.ApiClient, namespace: str, name: str, logger: logging.Logger
) -> tuple[str, str] | None:
    """Why this ModelService's runtime pods fail, read from the pods themselves (one label-selected list,
    only while the service is not ready)."""
    try:
        pods = await client.CoreV1Api(api_client).list_namespaced_pod(
            namespace, label_selector=f"{knative.MODELSERVICE_LABEL}={name}"
        )
    except ApiException as e:
        if e.status != 403:
            raise
        # An older chart's RBAC without pods: Knative still reports, only later (its progress deadline).
        logger.warning("cannot list pods in %s (403); runtime failures show at Knative's deadline", namespace)
        return None
    as_dicts = api_client.sanitize_for_serialization(pods.items)
    return status.runtime_failure(as_dicts, knative.CONTAINER_NAME, triton.FETCH_CONTAINER)


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def _describe(error: pydantic.ValidationError) -> str:
    return "; ".join(
        f"spec.{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
        for item in error.errors(include_url=False)
    )


async def _write_status(api_client: client.ApiClient, namespace: str, name: str, new: dict[str, Any]) -> None:
    await client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
        api.GROUP,
        api.VERSION,
        namespace,
        api.PLURAL,
        name,
        {"status": new},
        _content_type="application/merge-patch+json",
    )


async def _mirror_status(
    api_client: client.ApiClient, body: Mapping[str, Any], outcome: Outcome
) -> tuple[bool, list[tuple[str, str, str]]]:
    """Outside kopf's patch (a watch event of another object, the health sweep): write the pass's status
    where it changes what the ModelService says. Whether it did, and the events the pass has to post."""
    new = outcome.status
    if new == {k: (body.get("status") or {}).get(k) for k in new}:
        return False, outcome.events
    meta = body["metadata"]
    await _write_status(api_client, meta["namespace"], meta["name"], new)
    metrics.observe_readiness(body, new)
    return True, events_of(body, outcome)


def readiness_event(body: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """An Event when Ready changes status or reason, not on every pass: retries must not flood events."""
    before = status.ready_condition(body.get("status"))
    after = status.ready_condition(new)
    if after is None or (
        before and (before["status"], before["reason"]) == (after["status"], after["reason"])
    ):
        return None
    if after["status"] == "True":
        return ("Normal", "Ready", new.get("message", ""))
    if after["status"] == "False":
        return ("Warning", after["reason"], after["message"])
    return None


def events_of(body: Mapping[str, Any], outcome: Outcome) -> list[tuple[str, str, str]]:
    """What one pass has to say about the ModelService: its own events, then a readiness change."""
    change = readiness_event(body, outcome.status)
    return [*outcome.events, *([change] if change else [])]


def post_in_handler(body: Mapping[str, Any], events: list[tuple[str, str, str]]) -> None:
    """Through kopf, which posts in the background from any of its handlers."""
    for type_, reason, message in events:
        kopf.event(dict(body), type=type_, reason=reason, message=message)


async def post_outside_handlers(
    api_client: client.ApiClient, body: Mapping[str, Any], events: list[tuple[str, str, str]]
) -> None:
    """Straight to the API, as kopf would post them (same source and shape), where kopf's poster is not
    there: the health sweep's task."""
    meta = body["metadata"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for type_, reason, message in events:
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion", f"{api.GROUP}/{api.VERSION}"),
                "kind": body.get("kind", api.KIND),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "kopf"},
            "reportingComponent": "kopf",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await client.CoreV1Api(api_client).create_namespaced_event(meta["namespace"], event)


@kopf.on.resume(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.create(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.update(api.GROUP, api.VERSION, api.PLURAL, field="spec")
async def reconcile(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    started = time.perf_counter()
    result = "error"
    try:
        outcome = await reconcile_modelservice(body, memo.api, logger)
        result = outcome.result
    finally:
        metrics.RECONCILES.labels(result=result).inc()
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    # kopf applies the patch whatever the handler raises, so a blocked ModelService still says why.
    patch.status.update(outcome.status)
    post_in_handler(body, events_of(body, outcome))
    metrics.observe_readiness(body, outcome.status)
    if outcome.permanent:
        raise kopf.PermanentError(outcome.message)
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.message, delay=outcome.retry_after)


@kopf.on.event(
    knative.KNATIVE_GROUP,
    knative.KNATIVE_VERSION,
    knative.KNATIVE_PLURAL,
    labels={"app.kubernetes.io/managed-by": knative.MANAGED_BY},
)
async def knative_service_changed(
    type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    """Mirror Knative's status into the owning ModelService; recreate a Knative Service deleted by hand."""
    name = body["metadata"].get("labels", {}).get(knative.MODELSERVICE_LABEL)
    namespace = body["metadata"]["namespace"]
    if not name:
        return
    custom = client.CustomObjectsApi(memo.api)
    try:
        owner = await custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return  # the ModelService is gone; the garbage collector takes the Knative Service
        raise
    if owner["metadata"].get("deletionTimestamp"):
        return
    # A deleted Knative Service may have been the obstacle (a foreign one, or one left from an earlier
    # ModelService of the same name): reconcile whoever carries the name now.
    if type != "DELETED" and not _owned_by(body, owner["metadata"]["uid"]):
        return
    outcome = await reconcile_modelservice(owner, memo.api, logger, None if type == "DELETED" else body)
    _, events = await _mirror_status(memo.api, owner, outcome)
    post_in_handler(owner, events)


async def runtime_health_loop(api_client: client.ApiClient, logger: logging.Logger) -> None:
    """A runtime that crash-loops changes nothing Knative reconciles on, so no event would bring its reason:
    every health_interval, one sweep of the ModelServices' pods."""
    while True:
        await asyncio.sleep(operator_settings.health_interval)
        try:
            await sweep_runtime_health(api_client, logger)
        except ApiException as e:
            logger.warning("runtime health sweep: Kubernetes API error %s: %s", e.status, _api_message(e))
        except Exception:
            # Whatever one sweep trips on, the next one runs: a dead loop would report no failure again.
            logger.exception("runtime health sweep failed")


async def sweep_runtime_health(api_client: client.ApiClient, logger: logging.Logger) -> int:
    """One list of the ModelServices' pods (per watched namespace, or across the cluster) and a status
    update for each not-ready ModelService whose runtime fails: a request or two per sweep whatever the
    number of ModelServices (a timer per not-ready ModelService was a reconcile each, all at once: 1,000
    every 10 s while a large batch converged). Returns how many statuses it updated."""
    core = client.CoreV1Api(api_client)
    selector = knative.MODELSERVICE_LABEL
    if watched_namespaces:
        found = [
            (await core.list_namespaced_pod(ns, label_selector=selector)).items for ns in watched_namespaces
        ]
    else:
        found = [(await core.list_pod_for_all_namespaces(label_selector=selector)).items]
    by_modelservice: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for pod in api_client.sanitize_for_serialization([p for items in found for p in items]):
        meta = pod["metadata"]
        by_modelservice.setdefault((meta["namespace"], meta["labels"][selector]), []).append(pod)
    custom = client.CustomObjectsApi(api_client)
    updated = 0
    for (namespace, name), pods in by_modelservice.items():
        if status.runtime_failure(pods, knative.CONTAINER_NAME, triton.FETCH_CONTAINER) is None:
            continue
        try:
            body = await custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name
            )
        except ApiException as e:
            if e.status == 404:
                continue  # deleted; its pods are going
            raise
        if status.readiness(body.get("status")) == "true" or body["metadata"].get("deletionTimestamp"):
            continue
        outcome = await reconcile_modelservice(body, api_client, logger)
        changed, events = await _mirror_status(api_client, body, outcome)
        await post_outside_handlers(api_client, body, events)
        updated += changed
    return updated


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def forget_deleted(type: str | None, body: kopf.Body, **_: Any) -> None:
    # No finalizer, so kopf's on.delete never runs: the watch event is the only word of a deletion.
    if type == "DELETED":
        metrics.forget(body)
