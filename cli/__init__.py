"""The `wsl` command: thin, parses and calls the packages, prints."""
