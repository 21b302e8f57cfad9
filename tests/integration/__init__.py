"""Tests that start processes and servers: trainer runs and kills, gs://, serve, tune, the browser, k8s, bench."""
