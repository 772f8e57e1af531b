"""The LLM gRPC service: `wakeline.v1.LlmService` over `llm.Engine` with continuous batching.

- `runner.EngineRunner`: one engine thread calling `engine.step()`; asyncio callers `submit()` and
  `stream()` (also used in process by the keyword-event worker).
- `server.LlmServer` / `server.serve(settings)`: the grpc.aio server (health, reflection, auth, TLS).
- `client.LlmClient`: a small asyncio client.
- `settings.LlmSettings`: env prefix WAKELINE_LLM_.
"""
