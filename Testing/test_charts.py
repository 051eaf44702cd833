"""The live training chart: a recorded event stream written into MRML table and plot nodes (slicer-core)."""

from __future__ import annotations

import math

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")

from ACTIONPlusPlusLib.slicer_bridge import charts, terminology  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.panel.run_progress import LossHistory  # noqa: E402

STREAM = [
    {"event": "start", "device": "cpu"},
    {"event": "stage", "stage": "pretrain", "phase": "warmup", "total": 20},
    {"event": "progress", "stage": "pretrain", "phase": "warmup", "iteration": 10, "overall_iteration": 10,
     "loss": 3.0, "losses": {"total": 3.0, "global": 3.0}},
    {"event": "checkpoint", "path": "/x/checkpoint.pt"},
    {"event": "progress", "stage": "finetune", "phase": "finetune", "iteration": 10, "overall_iteration": 30,
     "loss": 0.9, "losses": {"total": 0.9, "sup": 0.5},
     "pseudo_labels": {"labeled_fraction": {"background": 0.7, "RV": 0.1, "Myo": 0.1, "LV": 0.1},
                       "pseudo_fraction": {"background": 0.75, "RV": 0.1, "Myo": 0.05, "LV": 0.1}, "mask_fraction": 0.5}},
]


def _table_columns(table_node):
    table = table_node.GetTable()
    out = {}
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        out[column.GetName()] = [column.GetValue(r) for r in range(table.GetNumberOfRows())]
    return out


def test_table_and_charts_from_a_recorded_event_stream():
    scene = slicer.vtkMRMLScene()
    chart = charts.create_training_chart(scene, "run-20260301-101500")
    history = LossHistory()
    for event in STREAM[:3]:  # the panel updates the chart while the run goes on
        history.add(event)
    charts.update_training_chart(scene, chart, history)
    assert _table_columns(chart.table) == {"iteration": [10.0], "loss": [3.0], "loss global": [3.0]}
    for event in STREAM[3:]:
        history.add(event)
    charts.update_training_chart(scene, chart, history)
    columns = _table_columns(chart.table)
    assert columns["iteration"] == [10.0, 30.0] and columns["loss"] == [3.0, 0.9]
    assert math.isnan(columns["loss sup"][0]) and columns["loss sup"][1] == 0.5
    assert columns["pseudo Myo"][1] == pytest.approx(0.05) and columns["labeled Myo"][1] == pytest.approx(0.1)
    assert columns["mask fraction"][1] == 0.5 and "pseudo background" not in columns

    def series(chart_node):
        nodes = [chart_node.GetNthPlotSeriesNode(i) for i in range(chart_node.GetNumberOfPlotSeriesNodes())]
        assert all(s.GetTableNodeID() == chart.table.GetID() and s.GetXColumnName() == "iteration" for s in nodes)
        return {s.GetYColumnName(): s for s in nodes}

    assert set(series(chart.losses)) == {"loss", "loss global", "loss sup"}
    pseudo = series(chart.pseudo_labels)
    assert set(pseudo) == {f"{k} {c}" for k in ("pseudo", "labeled") for c in ("RV", "Myo", "LV")} | {"mask fraction"}
    assert pseudo["labeled Myo"].GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleDash
    myo = next(info for info in terminology.all_classes() if info.name == "Myo")
    assert pseudo["pseudo Myo"].GetColor() == pytest.approx(myo.color)  # the segment's own colour
    charts.update_training_chart(scene, chart, history)  # idempotent: no duplicate series
    assert chart.losses.GetNumberOfPlotSeriesNodes() == 3


def test_never_writes_into_a_users_table():
    scene = slicer.vtkMRMLScene()
    mine = scene.AddNewNodeByClass("vtkMRMLTableNode", "My measurements")
    chart = charts.create_training_chart(scene, "run")
    chart.table = mine
    with pytest.raises(ValueError, match="refusing"):
        charts.update_training_chart(scene, chart, LossHistory())
    other = charts.create_training_chart(scene, "run")
    assert other.table.GetName() != charts.create_training_chart(scene, "run").table.GetName()  # unique names
