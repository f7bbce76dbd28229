"""Running this workspace's Airflow on one machine: `make airflow` / `make airflow-stop` and the environment they use."""
