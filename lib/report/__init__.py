"""Output of runs: metric logs (JSON lines + TensorBoard), tables and figures."""

from lib.report.process import is_writer  # noqa: F401  (the one process-0 guard for files)
