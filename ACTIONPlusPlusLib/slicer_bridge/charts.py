"""The live training chart in the scene: a table node fed from the progress events, and plot charts.

Scene-bridge layer (MRML only, no Qt).  The panel folds every progress event into a
:class:`.panel.run_progress.LossHistory` and calls :func:`update_training_chart` from its polling timer; the
same function runs here against slicer-core in the tests.

Nodes: one ``vtkMRMLTableNode`` per run (``iteration``, ``loss``, each named loss, the pseudo-label
class shares and the mask fraction), a ``losses`` chart and a ``pseudo-labels`` chart whose series
read that table.  They are new nodes created for the run and marked with :data:`CHART_ATTRIBUTE`: a
user's node is never written to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import vtk

import slicer

from . import terminology
from .panel.run_progress import LossHistory

CHART_ATTRIBUTE = "ACTIONPlusPlus.TrainingChart"  # value: the run's name


@dataclass
class TrainingChart:
    table: Any
    losses: Any  # vtkMRMLPlotChartNode
    pseudo_labels: Any  # vtkMRMLPlotChartNode


def _class_colour(name: str) -> tuple[float, float, float] | None:
    for info in terminology.all_classes():
        if info.name == name:
            return info.color
    return None


def create_training_chart(scene: Any, run_name: str) -> TrainingChart:
    """New table and chart nodes for one run (names made unique by the scene)."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"ACTION++ {run_name} training"))
    losses = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"ACTION++ {run_name} losses"))
    losses.SetTitle("Training losses")
    losses.SetXAxisTitle("iteration")
    losses.SetYAxisTitle("loss")
    pseudo = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"ACTION++ {run_name} pseudo-labels"))
    pseudo.SetTitle("Pseudo-label class shares (solid) vs labeled (dashed)")
    pseudo.SetXAxisTitle("iteration")
    pseudo.SetYAxisTitle("share of pixels")
    for node in (table, losses, pseudo):
        node.SetAttribute(CHART_ATTRIBUTE, run_name)
    return TrainingChart(table, losses, pseudo)


def _fill_table(table_node: Any, history: LossHistory) -> None:
    table = vtk.vtkTable()
    for name in history.columns:
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        column.SetNumberOfValues(len(history.rows))
        for index, value in enumerate(history.column(name)):
            column.SetValue(index, float(value) if value is not None else math.nan)
        table.AddColumn(column)
    table_node.SetAndObserveTable(table)
    table_node.Modified()


def _series_for(scene: Any, chart: Any, table_node: Any, column: str) -> Any:
    """The chart's series for ``column``, created on first use."""
    for index in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(index)
        if series is not None and series.GetYColumnName() == column:
            return series
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{chart.GetName()} {column}"))
    series.SetAttribute(CHART_ATTRIBUTE, table_node.GetAttribute(CHART_ATTRIBUTE) or "")
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(LossHistory.ITERATION)
    series.SetYColumnName(column)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    kind, _, class_name = column.partition(" ")
    colour = _class_colour(class_name)
    if colour is not None:
        series.SetColor(*colour)
    if kind == "labeled":
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
    if column in ("loss", "mask fraction"):
        series.SetLineWidth(3)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return series


def update_training_chart(scene: Any, chart: TrainingChart, history: LossHistory) -> None:
    """Write ``history`` into the run's table and make sure every column has its series."""
    if chart.table.GetAttribute(CHART_ATTRIBUTE) is None:
        raise ValueError(f"{chart.table.GetName()} is not an ACTION++ training table: refusing to overwrite it")
    _fill_table(chart.table, history)
    for column in history.loss_columns:
        _series_for(scene, chart.losses, chart.table, column)
    for column in history.fraction_columns:
        _series_for(scene, chart.pseudo_labels, chart.table, column)
