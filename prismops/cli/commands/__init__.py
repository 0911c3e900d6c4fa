"""One module per `prismops` sub-command, each exposing a click command or group named `command`;
`foreground` holds what the long-running ones share."""
