"""Keyword-event workers: KeywordEvents from the bus -> prompt templates -> LLM -> Answers on the bus.

- `worker.KeywordWorker(backend, prompts).handle(event) -> Answer` (the bus consumer's handler);
  backends: `LocalBackend` (engine in process) and `GrpcBackend` (the LLM service).
- `worker.run_worker(settings)`: the `wakeline worker run` loop (consumer group, shared load).
- `prompts.PromptBook`: per-keyword templates from YAML/JSON.
- `settings.WorkerSettings`: env prefix WAKELINE_WORKER_.
"""
