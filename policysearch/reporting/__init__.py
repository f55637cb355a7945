"""Presenting a study: the results table, the HTML report and its figures, parameter
importances, progress printers and trackers, policy tables and preview grids."""
