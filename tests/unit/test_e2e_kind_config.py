"""The kind provider's cluster config (tests/e2e/kind-config.yaml) is a valid kind
v1alpha4 Cluster with one control plane and two workers labelled with the
DualPathCluster's default prefill and decode node selectors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

E2E = Path(__file__).resolve().parents[1] / "e2e"


def load() -> dict:
    return dict(yaml.safe_load((E2E / "kind-config.yaml").read_text()))


def test_matches_kind_v1alpha4_schema() -> None:
    schema = json.loads((E2E / "kind-config.schema.json").read_text())
    jsonschema.validate(load(), schema)


def test_schema_rejects_unknown_fields() -> None:
    schema = json.loads((E2E / "kind-config.schema.json").read_text())
    bad = load()
    bad["nodes"][1]["lables"] = {"x": "y"}
    validator = jsonschema.Draft7Validator(schema)
    errors = list(validator.iter_errors(bad))
    assert errors and "lables" in errors[0].message


def test_one_control_plane_and_a_worker_per_role() -> None:
    from dualpath_operator.api import DecodePool, PrefillPool

    nodes = load()["nodes"]
    assert [n["role"] for n in nodes].count("control-plane") == 1
    workers = [n for n in nodes if n["role"] == "worker"]
    assert len(workers) == 2
    # The DualPathCluster's default node selectors pick exactly one worker each.
    for pool in (PrefillPool(), DecodePool()):
        selected = [w for w in workers if pool.node_selector.items() <= w.get("labels", {}).items()]
        assert len(selected) == 1, pool.node_selector
