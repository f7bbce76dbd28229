"""Airflow DAGs built from dvc.yaml: the stage graph, one DVC stage operator per stage, the run form, failure reports."""
