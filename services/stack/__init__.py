"""`wakeline up`: the whole stack (Redis, LLM service, worker, edge node) as supervised processes."""
