"""Plots and tables built from run folders' metrics.csv and summary.json — never from the model or the loop."""

from cnnlab.report.compare import grouped_table, results_table
from cnnlab.report.page import write_report
from cnnlab.report.plots import plot_runs

__all__ = ["grouped_table", "plot_runs", "results_table", "write_report"]
