"""The PASD engine: the pipeline (load once, upscale many), the sampler and its per-family parts, tiling,
colour fix, memory policy and the planned-work limits. Importing the package loads nothing heavy."""
