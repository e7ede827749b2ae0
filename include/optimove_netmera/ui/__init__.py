"""The plugin page in the Airflow UI: JSON routes (:mod:`.routes`), queries, actions; the bundle in ``static/``."""
