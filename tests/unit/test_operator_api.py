"""The API models and the CRD generated from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from dualpath_common.models import MODEL_PRESETS
from dualpath_operator.api import DualPathClusterSpec, QosClass
from dualpath_operator.crd import CRD_PATHS, build_crd, stale_crds, structural_schema
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "manifests" / "samples").glob("dualpathcluster-*.yaml"))


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key in ("properties", "additionalProperties", "items"):
            child = node.get(key)
            if key == "properties" and isinstance(child, dict):
                for name, sub in child.items():
                    out += _walk(sub, f"{path}.{name}")
            elif isinstance(child, dict):
                out += _walk(child, f"{path}[{key}]")
    return out


def _schema() -> dict[str, Any]:
    version = build_crd()["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]


def test_committed_crd_files_are_up_to_date():
    stale = stale_crds()
    assert not stale, f"stale CRD files {stale}: run `make crds`"
    texts = {p.read_text() for p in CRD_PATHS}
    assert len(texts) == 1, "manifests/ and the chart must ship the same CRD"


def test_crd_schema_is_structural():
    for path, node in _walk(_schema()):
        forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "uniqueItems"} & set(node)
        assert not forbidden, f"{path}: {forbidden} not allowed in a structural schema"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: untyped"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node:
            assert node["default"] is not None and node["default"] != "", (
                f"{path}: null/empty defaults are rejected by the v1.20 API server"
            )


def test_crd_names_status_and_printer_columns():
    crd = build_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "DualPathCluster",
        "dualpathclusters",
        ["dpc"],
    )
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Prefill", "Decode", "PE", "DE", "Policy", "Age"]
    # Every printer column points at a field that exists in the schema.
    schema = _schema()
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata") or "?(" in column["jsonPath"]:
            continue
        node = schema
        for part in column["jsonPath"].strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] == "string"


def test_schema_carries_bounds_enums_and_required_fields():
    spec = _schema()["properties"]["spec"]
    qos_item = spec["properties"]["network"]["properties"]["qos"]["items"]
    assert qos_item["properties"]["dscp"]["maximum"] == 63
    assert qos_item["properties"]["dscp"]["minimum"] == 0
    assert set(qos_item["required"]) >= {"name", "purpose", "dscp"}
    policy = spec["properties"]["trafficController"]["properties"]["policy"]
    assert policy["enum"] == ["paper", "prefill-only", "round-robin", "dualpath-split"]
    assert policy["default"] == "paper"
    assert spec["required"] == ["storage"]
    presets = spec["properties"]["storage"]["properties"]["model"]["properties"]["preset"]
    assert sorted(presets["enum"]) == sorted(MODEL_PRESETS)
    nic = spec["properties"]["storage"]["properties"]["storageNicGbps"]
    assert nic["exclusiveMinimum"] is True and nic["minimum"] == 0


def _apply_schema_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """The API server's defaulting algorithm (defaults, then recurse into the result)."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = yaml.safe_load(yaml.safe_dump(sub["default"]))
        for name, sub in schema["properties"].items():
            if name in value:
                value[name] = _apply_schema_defaults(value[name], sub)
    elif isinstance(value, list) and "items" in schema:
        value = [_apply_schema_defaults(v, schema["items"]) for v in value]
    return value


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_schema_defaults_agree_with_the_models(sample):
    """Defaults applied by the API server (from the CRD) give the same spec as pydantic's."""
    raw = yaml.safe_load(sample.read_text())["spec"]
    server_side = _apply_schema_defaults(
        yaml.safe_load(yaml.safe_dump(raw)), _schema()["properties"]["spec"]
    )
    from_models = DualPathClusterSpec.model_validate(raw).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    assert server_side == from_models


def test_status_schema_has_no_defaults():
    status = _schema()["properties"]["status"]
    assert not [p for p, node in _walk(status) if "default" in node]


def test_structural_schema_rejects_unions_it_cannot_express():
    from dualpath_operator.crd import SchemaError

    class Bad(BaseModel):
        value: int | list[int]

    with pytest.raises(SchemaError, match="value"):
        structural_schema(Bad)


def test_default_qos_classes_are_the_papers_split():
    spec = DualPathClusterSpec.model_validate({"storage": {"model": {"preset": "ds-27b"}}})
    by_purpose: dict[str, QosClass] = {c.purpose: c for c in spec.network.qos}
    assert by_purpose["collectives"].bandwidth_percent == 99
    assert by_purpose["kvCache"].priority < by_purpose["collectives"].priority
