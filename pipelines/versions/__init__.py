"""Data versions: recording one (hash of dvc.lock, git tag, dvc push), reading them back, the "Data versions" page."""
