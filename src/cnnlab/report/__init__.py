"""Plots and tables built from run folders' metrics.csv and summary.json — never from the model or the loop."""
