"""The study: the driver (`aigen study`), metrics, degradation sweep, diagnostics, figures, report, predict."""
