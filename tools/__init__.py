"""Developer tooling for ipcsem (not shipped with the library)."""
