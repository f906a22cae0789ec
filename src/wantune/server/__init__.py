"""The web UI and its HTTP server."""
