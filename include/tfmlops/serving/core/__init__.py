"""Version lifecycle: the manager that loads/unloads/serves versions and the monitor of their
states (TF Serving's ``tensorflow_serving/core/``)."""
