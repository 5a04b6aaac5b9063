"""The lifecycle operations behind the commands: up, status, down, exec."""
