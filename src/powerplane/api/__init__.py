"""The cockpit's HTTP API (FastAPI): REST, a WebSocket stream and token auth over the live runtime."""
