"""The running device: pipeline threads, finding building, live metrics, the daemon and its systemd
integration."""
