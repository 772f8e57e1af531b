"""Server-side LLM engine: model, loader, tokenizer, sampler, engine (see docs/llm.md)."""
