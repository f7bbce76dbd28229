"""Airflow side: DAGs derived from dvc.yaml, the DVC stage operator, data versions, the demo."""
