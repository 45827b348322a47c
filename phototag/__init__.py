"""Code shared by training and the TorchServe handler: taxonomy, model, decoding and eval preprocessing."""
