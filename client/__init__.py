"""Clients of the running tagger service: token handling, REST and gRPC inference, readiness wait, CLI."""
