"""What the tests share: fake-gcs-server and a proxy that holds its requests, PostgreSQL, headless Chromium, the
trainer and the server as processes, fork servers, generated archives and images, the suite's own guards.
Imported as `tests.support.NAME` everywhere (tests, bench/, the rehearsals); the scripts here run as
`python -m tests.support.NAME` from the repository."""
