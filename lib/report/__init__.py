"""Output of runs: metric logs (JSON lines + TensorBoard), tables and figures."""
