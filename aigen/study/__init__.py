"""The study: the driver (`aigen study`), metrics, robustness, figures, report, and `aigen predict`."""
