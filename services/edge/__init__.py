"""The edge node: `EdgeService` over gRPC around the shared `edge.spotter.Spotter`.

Modules: `settings` (EdgeSettings, env WAKELINE_EDGE_*), `app` (EdgeNode: server, health,
reflection, metrics, bus, drain), `server` (the servicer), `sessions` (answer routing),
`keywords` (enrollment), `audio` (decoding), `auth` (bearer tokens), `client` (device side).
"""
