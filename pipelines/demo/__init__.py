"""`make demo`: both DAGs through Airflow on SQLite, then the closing summary (funnel, gates, bits per byte)."""
