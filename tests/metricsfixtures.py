"""
Reading scraped metrics in tests: the Prometheus text a ``/metrics``
answer holds, parsed with ``prometheus_client``'s own parser, as samples
by name and labels.
"""

from __future__ import annotations

from typing import Mapping, Optional

from prometheus_client.parser import text_string_to_metric_families

#: (sample name, sorted label pairs) → value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of an exposition."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, labels: Optional[Mapping[str, str]] = None) -> float:
    """One sample's value; 0 when there is no such sample."""
    return samples.get((name, tuple(sorted((labels or {}).items()))), 0.0)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called ``name``."""
    return [dict(labels) for (sample, labels) in samples if sample == name]
