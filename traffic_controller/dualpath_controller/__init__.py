"""DualPath traffic controller: assigns (prefill engine, decode engine, read path) per request."""
