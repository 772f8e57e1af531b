"""The edge node: `EdgeService` over gRPC around the shared `edge.spotter.Spotter`.

Modules: `settings` (EdgeSettings, env WAKELINE_EDGE_*), `app` (EdgeNode: server, health,
reflection, metrics, bus, drain), `server` (the servicer and the overload gauge), `batcher`
(cross-stream decoding), `sessions` (answer routing), `keywords` (enrollment), `audio`
(decoding), `auth` (bearer tokens), `metrics` (Prometheus), `supervisor` (`--processes N`),
`client` (the device side), `testing` (nodes in subprocesses, eSpeak speech).
"""
