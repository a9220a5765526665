"""The sampler settings of the tests' quick runs on the tiny checkpoints."""

# Tests of the sampler leave the prompt stage off (captioning has tests of its own); the parity sets ran with it off
FAST_SETTINGS = {"steps": 10, "process_size": 64, "scale": 1, "seed": 1, "high_level_info": "none"}
