"""The CRD is generated from the pydantic models and must not drift from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from zeroserve_operator import api, crd

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("modelservice-*.yaml"))


def test_checked_in_crd_matches_the_models() -> None:
    assert crd.CRD_FILE.read_text() == crd.render(), (
        "crds/ is stale: run `python -m zeroserve_operator.crd` and commit the result"
    )


def test_check_mode_fails_on_drift(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd.render().replace("scales to zero", "never scales"))
    assert crd.main(["--check", "--output", str(stale)]) == 1
    stale.write_text(crd.render())
    assert crd.main(["--check", "--output", str(stale)]) == 0


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, sub in schema.get("properties", {}).items():
        found.append((f"{path}.{name}", sub))
        found += _walk(sub, f"{path}.{name}")
    if "items" in schema:
        found += _walk(schema["items"], f"{path}[]")
    return found


def test_every_field_is_described_and_structural() -> None:
    schema = crd.openapi_schema()
    fields = _walk(schema)
    assert len(fields) > 60
    for path, sub in fields:
        if path == ".metadata":
            continue  # the API server allows nothing but `type` here
        assert sub.get("description"), f"{path} has no description"
        assert "type" in sub, f"{path} has no type (not structural)"
        assert not {"$ref", "anyOf", "title", "const"} & sub.keys(), f"{path}: {sub.keys()}"


def test_defaults_make_scale_to_zero_the_default() -> None:
    spec = crd.openapi_schema()["properties"]["spec"]["properties"]
    assert spec["scaling"]["default"] == {}
    assert spec["scaling"]["properties"]["minReplicas"]["default"] == 0
    assert spec["runtime"]["properties"]["name"]["default"] == "onnx"


def test_printer_columns() -> None:
    (version,) = crd.build_crd()["spec"]["versions"]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:6] == ["URL", "Ready", "Runtime", "Device", "Min", "Max"] and names[-1] == "Age"
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_modelservices(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    ms = api.ModelService.model_validate(doc)
    assert ms.spec.model.uri


def test_examples_cover_cpu_and_gpu() -> None:
    specs = [api.ModelService.model_validate(yaml.safe_load(p.read_text())).spec for p in EXAMPLES]
    assert {s.resources.gpu is not None for s in specs} == {True, False}


def test_the_node_cache_example_is_a_valid_modelservice_with_its_claim() -> None:
    pv, pvc, doc = yaml.safe_load_all((EXAMPLES[0].parent / "model-cache-node.yaml").read_text())
    ms = api.ModelService.model_validate(doc)
    assert ms.spec.model.cache is not None and ms.spec.model.cache.claim_name == pvc["metadata"]["name"]
    assert pv["spec"]["claimRef"] == {
        "namespace": pvc["metadata"]["namespace"],
        "name": pvc["metadata"]["name"],
    }
    assert doc["metadata"]["namespace"] == pvc["metadata"]["namespace"]
