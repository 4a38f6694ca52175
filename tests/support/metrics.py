"""Reading one value from a Prometheus /metrics text, for tests and benches.

A metric that is not exported at all raises: an `== 0` assertion must fail, not pass, when
a metric is renamed or never registered. A family that is exported but has no series with
the asked labels reads 0.0: that is a labelled counter never incremented for those labels
(prometheus_client writes its HELP and TYPE lines from the start, its series on first use).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# The sample names of a family of each type, by suffix (a counter `x` has `x_total`).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class MissingMetric(AssertionError):
    """No family of that name is exported."""


def parse_labels(text: str) -> dict[str, str]:
    """'a="x",b="y"' (as written between the braces of a series) to a dict."""
    return dict(LABEL.findall(text))


def exported_names(families: list[Metric]) -> set[str]:
    """Every sample name the families can have, series or not (a counter's family `x` can
    only have `x_total`: asking for `x` must not read 0)."""
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}


def sample_value(text: str, name: str, labels: Mapping[str, str] | str | None = None) -> float:
    """The sum of the samples named `name` whose labels include `labels` (one series when
    they name all of them); 0.0 when none matches; MissingMetric when `name` is not exported."""
    want = parse_labels(labels) if isinstance(labels, str) else dict(labels or {})
    families = list(text_string_to_metric_families(text))
    if name not in exported_names(families):
        raise MissingMetric(f"{name} is not exported")
    return sum(
        s.value
        for f in families
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in want.items())
    )
