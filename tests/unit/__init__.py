"""Fast tests of one module each: no process, no server, no training beyond a few steps (`make test-fast`)."""
