"""Helpers shipped for tests and demos: an OpenAI-compatible server with fault injection."""
