"""The TOML configuration: discovery, validation, resolved settings."""
