"""Real local ComfyUI servers for tests, benchmarks and the demo fleet."""
