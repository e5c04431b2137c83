"""Your team's model modules: put ``churn.py`` here and name it ``models.churn`` in a trigger form.

Each module follows the model module contract (README, "Bring your own model"); it imports nothing
of this project. The package name ``models`` is allowed by default (``TFMLOPS_MODEL_PACKAGES``).
"""
