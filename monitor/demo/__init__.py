"""The offline demo: small seeded models and eval sets built on this machine."""
