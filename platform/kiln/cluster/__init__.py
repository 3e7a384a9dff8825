"""Ray clusters: connecting (connect), their dashboard's REST APIs with token auth (dashboard),
jobs submitted to them (submission, preflight, jobs), and a local multi-node cluster for
development (local: `kiln up` / `kiln down`)."""
