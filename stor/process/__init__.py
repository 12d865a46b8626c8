"""The process: twistd service assembly, workers, graceful shutdown, systemd notify."""
