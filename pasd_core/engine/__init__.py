"""The PASD engine: the run plan (settings validated once), the pipeline (load once, upscale many), the sampler and
its per-family parts, tiling, colour fix, colorization, the refiner pass, memory policy and the planned-work limits.
Importing the package loads nothing heavy."""
