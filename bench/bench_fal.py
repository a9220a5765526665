"""What the fal client itself costs, measured against the local fal stub (tests/support/fal_stub.py).

Prints two tables and never passes or fails on time:
1. client overhead per image: wall time of one upscale minus the stub's own service time (its time
   inside the handlers: reading the body, decoding the input, making and encoding the result), by
   image size: what is left is PNG encoding, base64, JSON, the HTTP stack and decoding the result on
   the client's side; the job completes on its first status poll, so no polling wait is counted;
2. concurrency: N images whose fal-side work takes a fixed time each, with `max_in_flight` 1 and
   the default, against one image.

Run: python bench/bench_fal.py [--repeats 5] [--run-seconds 0.5] [--batch 8]
Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

from common import add_project_to_path, machine_header
from PIL import Image

add_project_to_path()

from pasd_core.fal import FalQueueClient, RetryPolicy, png_bytes, upscale_batch  # noqa: E402
from support.fal_stub import FalStub, Job, wait_until  # noqa: E402

KEY = "bench-key"


def noise(size: int) -> Image.Image:
    """An incompressible picture, so PNG and base64 sizes are realistic for photos."""
    return Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))


def client(stub: FalStub, **options) -> FalQueueClient:
    return FalQueueClient(key=KEY, queue_url=stub.url, rest_url=stub.url, retry=RetryPolicy(attempts=1), **options)


def overhead(sizes: list[int], repeats: int) -> None:
    print("\n1. Client overhead per image (job done at the first poll; scale 2; median of "
          f"{repeats})")
    print(f"{'input':>9} | {'PNG in':>8} | {'HTTP calls':>10} | {'wall ms':>8} | {'stub ms':>8} | "
          f"{'overhead ms':>11} | {'per call ms':>11}")
    for size in sizes:
        image = noise(size)
        samples = []
        for _ in range(repeats):
            with FalStub(key=KEY, plan=lambda i, im, body: Job(queue_positions=(), progress_polls=0)) as stub:
                fal = client(stub, poll_interval=0.01)
                started = time.perf_counter()
                upscale_batch(fal, [image], {"scale": 2})
                wall = time.perf_counter() - started
                wait_until(lambda stub=stub: stub.answered == len(stub.recorded))
                samples.append((wall, stub.service_seconds, len(stub.recorded)))
        wall, service, calls = (statistics.median(s[k] for s in samples) for k in range(3))
        png_kib = len(png_bytes(image)) / 1024
        spent = (wall - service) * 1e3
        print(f"{size:>4}x{size:<4} | {png_kib:>6.0f}Ki | {calls:>10.0f} | {wall * 1e3:>8.1f} | "
              f"{service * 1e3:>8.1f} | {spent:>11.1f} | {spent / calls:>11.2f}")


def concurrency(batch: int, run_seconds: float, poll: float) -> None:
    print(f"\n2. Batch of {batch} vs one image (fal-side work {run_seconds:g} s per image, polled every {poll:g} s)")
    print(f"{'images':>6} | {'max_in_flight':>13} | {'wall s':>7} | {'ideal s':>7} | {'s per image':>11} | "
          f"{'vs sequential':>13}")
    sequential = None
    for count, in_flight in ((1, 1), (batch, 1), (batch, 4), (batch, batch)):
        images = [noise(64) for _ in range(count)]
        with FalStub(key=KEY, plan=lambda i, im, body: Job(queue_positions=(0,), progress_polls=0,
                                                           run_seconds=run_seconds)) as stub:
            started = time.perf_counter()
            upscale_batch(client(stub, poll_interval=poll, max_in_flight=in_flight), images, {"scale": 2})
            wall = time.perf_counter() - started
        ideal = math.ceil(count / in_flight) * run_seconds
        if count == batch and in_flight == 1:
            sequential = wall
        speedup = f"{sequential / wall:>12.1f}x" if sequential and count == batch else f"{'':>13}"
        print(f"{count:>6} | {in_flight:>13} | {wall:>7.2f} | {ideal:>7.2f} | {wall / count:>11.3f} | {speedup}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512, 1024])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--run-seconds", type=float, default=0.5)
    parser.add_argument("--poll", type=float, default=0.05)
    args = parser.parse_args()
    print(machine_header("fal client benchmark against the local stub", ("requests", "Pillow")))
    overhead(args.sizes, args.repeats)
    concurrency(args.batch, args.run_seconds, args.poll)


if __name__ == "__main__":
    main()
