"""Deployment tools above the clients: TorchServe config and launcher, gRPC stub generation, KServe bundle, rollout."""
