"""The client for fal's hosted `fal-ai/pasd`: one request (client.py), a batch of them (batch.py),
HTTP with retries and a deadline (transport.py), messages (errors.py), the API key (key.py).

Light on purpose: importing it loads `requests` and Pillow, never torch.
"""

from .batch import PRICE_PER_MEGAPIXEL_USD, estimated_cost_usd, upscale_batch, upscale_images
from .client import FalQueueClient, QueueRequest
from .errors import ENDPOINT, FalError
from .images import png_bytes
from .key import find_fal_key
from .transport import RetryPolicy

__all__ = ["ENDPOINT", "PRICE_PER_MEGAPIXEL_USD", "FalError", "FalQueueClient", "QueueRequest", "RetryPolicy",
           "estimated_cost_usd", "find_fal_key", "png_bytes", "upscale_batch", "upscale_images"]
