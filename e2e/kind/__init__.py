"""The kind suite: tests that need real pods (marker `kind`)."""
