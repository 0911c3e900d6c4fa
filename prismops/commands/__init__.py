"""One module per `prismops` sub-command; each exposes a click command or group named `command`."""
