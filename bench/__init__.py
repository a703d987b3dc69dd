"""adapterbench's pipeline, in layers: a module imports only from its own layer or the layers above it
in this list (lower in the stack), never from a later one, and no import chain comes back to where it
started (tests/test_layers.py walks every import, the lazy ones inside functions included).

Adding a module means placing it here; the test fails for a module in no layer.
"""

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Paths, files, the micro world's definition, machine facts: no torch models, no results.
    ("foundations", ("bench.paths", "bench.io", "bench.memory", "bench.provenance", "bench.config", "bench.world", "bench.zoo")),
    # Loading models and data, what differs between model families, generating, stage keys and rows, sweeps,
    # the oracle that judges the micro world.
    ("models and data", ("bench.models", "bench.family", "bench.images", "bench.data", "bench.clip", "bench.stages", "bench.records",
                         "bench.single_file", "bench.sweep", "bench.oracle", "bench.quality")),
    # Build steps: training the embedded models, run once (outputs committed in bench/zoo); nothing imports them.
    ("build", ("bench.build", "bench.build.*")),
    # What is compared (one module per method) and what is measured (one module per metric).
    ("methods and metrics", ("methods", "methods.*", "metrics", "metrics.*")),
    # Measuring: training cost, scoring, statistics, plots, the regression check, estimates, the worker.
    ("measurement", ("bench.cost", "bench.score", "bench.stats", "bench.validity", "bench.plots", "bench.regression", "bench.estimate",
                     "bench.worker")),
    ("report", ("bench.report", "bench.report.*")),
    # A comparison from config to table and report.
    ("pipeline", ("bench.runner",)),
    # The modes of run.py, which drive the pipeline (mode=tune runs comparisons of its own).
    ("modes", ("bench.tune", "bench.cli")),
)
