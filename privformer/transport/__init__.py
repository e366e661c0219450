"""Transport: the tensor wire format, the HTTP server app and the HTTP client."""
