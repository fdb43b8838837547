"""The comparison tool (`python -m train.compare`, and `python -m train.report` for any runs):
arms and their runs (arms), starting trainers and evaluations (launch), the statistics
(stats), the paired tests on each set of images (verdicts), the tables (tables), the plot
(plot) and the report files (report)."""
