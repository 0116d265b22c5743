"""Test helpers: throwaway PostgreSQL and Prometheus servers, a webhook receiver."""
