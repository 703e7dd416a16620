"""What `medge` subcommands do beyond the daemon: demo, doctor, inspect, replay, and how they print."""
