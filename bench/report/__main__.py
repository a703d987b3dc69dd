"""`python -m bench.report RESULTS_DIR ...`: rebuild a report from stored results."""

from bench.report import main

main()
