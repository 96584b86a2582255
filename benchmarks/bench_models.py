"""Training-step speed of cnnlab's models against torchvision's, measured in the same run.

The architectures are meant to be identical, so the ratio should sit at 1.00: a ratio well above it means a
cnnlab model does extra work. Prints one line per model and the ratio cnnlab time / torchvision time.

    python benchmarks/bench_models.py [--device cpu|cuda] [--batch-size N] [--image-size S] [--steps N]
"""

import argparse
import time

import torch
import torchvision

from cnnlab import create_model


def step_time(model, x, y, steps, warmup=2):
    """Median seconds of one SGD step (forward, backward, update) over `steps` timed steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for i in range(warmup + steps):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "vgg11_bn", "vgg16"])
    args = parser.parse_args()

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch_size} × 3×{args.image_size}²; "
          f"median of {args.steps} steps")
    print(f"{'model':<10} {'cnnlab ms':>10} {'torchvision ms':>15} {'ratio':>7}")
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 100, (args.batch_size,), device=device)
    for model_name in args.models:
        ours = create_model(model_name, 100).to(device).train()
        ref = getattr(torchvision.models, model_name)(num_classes=100).to(device).train()
        # Alternate the two so drift in machine load hits both alike.
        t_ours, t_ref = [], []
        for _ in range(2):
            t_ours.append(step_time(ours, x, y, args.steps))
            t_ref.append(step_time(ref, x, y, args.steps))
        a, b = min(t_ours), min(t_ref)
        print(f"{model_name:<10} {a * 1e3:>10.1f} {b * 1e3:>15.1f} {a / b:>7.2f}")


if __name__ == "__main__":
    main()
