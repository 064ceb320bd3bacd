"""ConversionReport: its stored format, reading it back, and what it refuses."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
from armafy_cases import tiny_and_input

from arma_plugin import armafy
from arma_plugin.convert import ConversionReport, SkipReason

# ``report.to_dict()`` of a model with a called 3x3 conv ``a``, a called 1x1 conv ``p`` and an
# unused 3x3 ``unused``, spelled out so that the stored format is pinned by a literal.
SAVED_REPORT = {
    "mode": "module", "traced": True, "trace_error": None, "untraceable": {},
    "entries": [
        {"name": "a", "kind": "module", "type": "Conv2d", "kernel": [3, 3], "groups": 1, "dilation": [1, 1],
         "calls": 1, "status": "converted", "reason": None},
        {"name": "p", "kind": "module", "type": "Conv2d", "kernel": [1, 1], "groups": 1, "dilation": [1, 1],
         "calls": 1, "status": "skipped", "reason": "pointwise"},
        {"name": "unused", "kind": "module", "type": "Conv2d", "kernel": [3, 3], "groups": 1, "dilation": [1, 1],
         "calls": 0, "status": "skipped", "reason": "never_called"}],
    "nonlocal_inserted": [], "ar_params_added": 16, "converted": 1, "already_converted": 0,
    "skipped": {"pointwise": 1, "never_called": 1},
}


def test_report_round_trips_through_json() -> None:
    model, _ = tiny_and_input()
    _, report = armafy(model, return_report=True)
    data = json.loads(json.dumps(report.to_dict()))
    assert ConversionReport.from_dict(data) == report
    assert ConversionReport.from_dict(data).to_dict() == data


def test_report_reads_the_saved_format() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.p, self.unused = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.p(self.a(x))

    _, report = armafy(Model(), return_report=True)
    assert report.to_dict() == SAVED_REPORT  # armafy writes exactly the pinned format
    report = ConversionReport.from_dict(SAVED_REPORT)
    assert [(e.name, e.status, e.reason) for e in report.entries] == [
        ("a", "converted", None), ("p", "skipped", SkipReason.POINTWISE),
        ("unused", "skipped", SkipReason.NEVER_CALLED)]
    assert report.to_dict() == SAVED_REPORT


@pytest.mark.parametrize("change,match", [
    (lambda d: d["entries"][1].update(reason="too pointy"), "unknown skip reason 'too pointy'"),
    # the prose explanation is for people; only the stable value is a stored reason
    (lambda d: d["entries"][1].update(reason=SkipReason.POINTWISE.explanation), "unknown skip reason 'pointwise 1x1"),
    (lambda d: d["entries"][0].update(reason=""), "unknown skip reason ''"),
    (lambda d: d["entries"][0].update(status="half done"), "unknown status 'half done'"),
    (lambda d: d.update(converted=3), "'converted' is 3 but the entries give 1"),
    (lambda d: d["skipped"].update({"never_called": 2}), "'skipped'"),
    (lambda d: d["skipped"].update({"never called in forward": 1}), "unknown skip reason 'never called"),
    (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
    (lambda d: d.pop("mode"), r"missing keys \['mode'\]"),
])
def test_report_from_dict_refuses_what_it_cannot_read(change, match: str) -> None:
    data = copy.deepcopy(SAVED_REPORT)
    change(data)
    with pytest.raises(ValueError, match=match):
        ConversionReport.from_dict(data)


def test_skip_reasons_have_stable_values_and_explanations() -> None:
    # the values are written to config.json: changing one breaks reading saved checkpoints' reports
    assert [r.value for r in SkipReason] == [
        "never_called", "weight_used_functionally", "pointwise", "not_targeted", "excluded",
        "anisotropic_dilation", "inside_nonlocal", "functional_in_module_mode", "unknown_channels"]
    assert len({r.explanation for r in SkipReason}) == len(SkipReason)
    assert all(SkipReason.parse(r.value) is r for r in SkipReason)
    assert {SkipReason.POINTWISE: 1}.get("pointwise") == 1  # usable as its plain-string key
