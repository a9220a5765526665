"""Weights on disk: one checkpoint reader (safetensors, or torch.load(weights_only=True)), official PASD
folders, SD1.5 and SDXL bases (diffusers folders and single files), personalization and downloads."""
