"""Training code for the small default LLMs (torch + transformers only; no grpc, no redis)."""
