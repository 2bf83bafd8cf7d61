"""Time the CIFAR augmentation (pad 4, random 32x32 crop, flip) two ways, on the CPU by default.

* ``batched``: :class:`revlib.harness.data.TensorLoader`, which normalises and
  crops and flips a whole batch with one gather (``pad_crop_flip``);
* ``per_image``: a ``torch.utils.data.DataLoader`` over the same
  :class:`~revlib.harness.data.ImageData` with
  :class:`~revlib.harness.data.RandomCropFlip` (torchvision ``transforms.v2``,
  image by image) as its transform, in the main process.

Both produce the same kind of batches (normalised float32, 100 images of
3x32x32 by default) from random CIFAR-sized uint8 images; one epoch of each is
timed, interleaved ``--repeats`` times, and the medians and their ratio are
reported.

    python benchmarks/augmentation.py                 # CPU, 5,000 images, batch 100
    python benchmarks/augmentation.py --device cuda   # the batched path on the GPU
                                                      # (the per-image one stays on the CPU)

Writes benchmarks/results/augmentation_<device>.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import add_run_options, run_metadata, write_result

import revlib
from revlib.core.device import synchronize
from revlib.harness.data import ImageData, RandomCropFlip, TensorLoader


def cifar_like(n: int, seed: int) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, 10, (n,), generator=g)
    mean = (images.double() / 255).mean(0).float()
    return ImageData(images, targets, 10, 1 / 255, mean, torch.ones(3, 1, 1), "cifar10", "train")


def one_epoch(batches, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in batches:
        pass
    synchronize(device)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device) if args.device else torch.device("cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = cifar_like(args.images, args.seed)
    batched = TensorLoader(data, args.batch, device=device, seed=args.seed)
    per_image_data = data.subset(range(len(data)))
    per_image_data.transform = RandomCropFlip(pad=4, flip=True)
    per_image = torch.utils.data.DataLoader(per_image_data, batch_size=args.batch, shuffle=True)
    loaders = {"batched": batched, "per_image": per_image}
    metadata = run_metadata(device)  # starts the load watch: the timing below is covered
    for loader in loaders.values():  # warm-up: torchvision's first call, allocator
        one_epoch(loader, device)
    seconds: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.repeats):
        for name, loader in loaders.items():
            seconds[name].append(one_epoch(loader, device))
    median = {name: statistics.median(t) for name, t in seconds.items()}
    return {
        "benchmark": "augmentation",
        "what": f"one epoch of {args.images} random CIFAR-sized uint8 images in batches of "
        f"{args.batch}: normalise, zero-pad 4, random 32x32 crop, horizontal flip with "
        "probability 1/2",
        **metadata,
        "images": args.images,
        "batch": args.batch,
        "repeats": args.repeats,
        "median_seconds": median,
        "images_per_second": {name: args.images / t for name, t in median.items()},
        "all_seconds": seconds,
        "speedup_batched_over_per_image": median["per_image"] / median["batched"],
        "note": "medians of interleaved repeats after one warm-up epoch each; the per-image path "
        "runs in the main process (num_workers=0) on the CPU. " + (args.note or ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000, help="images per epoch (default 5000)")
    parser.add_argument(
        "--batch", type=int, default=100, help="batch size (default 100, the RevNet recipe's)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per path (default 5)")
    add_run_options(
        parser, "augmentation", device_default="cpu; the per-image path always runs on the CPU"
    )
    args = parser.parse_args(argv)
    result = run(args)
    print(
        f"{result['device']}, torch {result['torch']}, revlib {revlib.__version__}, "
        f"{result['threads']} threads"
    )
    for name, t in result["median_seconds"].items():
        print(
            f"{name:10s} {1000 * t:9.1f} ms/epoch "
            f"{result['images_per_second'][name]:10.0f} images/s"
        )
    print(f"batched is {result['speedup_batched_over_per_image']:.1f}x faster than per-image")
    print(f"wrote {write_result(result, args.out, 'augmentation')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
