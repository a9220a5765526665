"""PASD (Pixel-Aware Stable Diffusion) super-resolution and stylization, on torch + diffusers.

Importing this package is cheap: the heavy modules (torch, diffusers) load when first used.
"""
