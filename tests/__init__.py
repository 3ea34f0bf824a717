"""The test suite, a package: its helpers are imported as ``tests.feedserver`` and so on."""
