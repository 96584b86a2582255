"""Training-step speed of cnnlab's models against torchvision's, measured in the same run.

The architectures are meant to be identical, so the ratio should sit at 1.00: a ratio well above it means a
cnnlab model does extra work. Prints one line per model and the ratio cnnlab time / torchvision time (a timing,
never enforced). Exits 1 on a wrong result: a cnnlab model that, given torchvision's weights, computes other logits,
or whose loss does not fall over the timed steps on one batch.

    python benchmarks/bench_models.py [--device auto|cpu|cuda] [--batch-size N] [--image-size S] [--steps N]
"""

import time

import torch
import torchvision

from cnnlab import create_model
from common import describe_device, exit_if_wrong, loss_problem, parser, pick_device, sync


def step_time(model, x, y, steps, warmup=2, losses=None):
    """Median seconds of one SGD step (forward, backward, update) over `steps` timed steps; each step's loss is
    appended to `losses`."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for i in range(warmup + steps):
        sync(x.device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sync(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if losses is not None:
            losses.append(loss.detach())  # read after the clock, so no extra synchronisation inside it
    return sorted(times)[len(times) // 2]


def same_function(ours, ref, x) -> float:
    """Load the torchvision model's weights (random batch-norm statistics included) into ours, strictly, and return
    the largest difference of their eval-mode logits relative to the logits' size: ~0 when the architectures match."""
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # fresh statistics make BN the identity, hiding a misplaced one
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        ours.load_state_dict(ref.state_dict(), strict=True)
        a, b = ours.eval()(x), ref.eval()(x)
    ours.train(), ref.train()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def main():
    cli = parser(__doc__)
    cli.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cli.add_argument("--batch-size", type=int, default=16)
    cli.add_argument("--image-size", type=int, default=64)
    cli.add_argument("--steps", type=int, default=5)
    cli.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "vgg11_bn", "vgg16"])
    args = cli.parse_args()

    device = pick_device(args.device)
    print(f"{describe_device(device)}; batch {args.batch_size} × 3×{args.image_size}²; median of {args.steps} steps")
    print(f"{'model':<10} {'cnnlab ms':>10} {'torchvision ms':>15} {'ratio':>7}  {'same function':>13}  "
          f"{'cnnlab loss':>15}")
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 100, (args.batch_size,), device=device)
    problems = []
    for model_name in args.models:
        ours = create_model(model_name, 100).to(device).train()
        ref = getattr(torchvision.models, model_name)(num_classes=100).to(device).train()
        difference = same_function(ours, ref, x)
        # Alternate the two so drift in machine load hits both alike.
        t_ours, t_ref, losses = [], [], []
        for _ in range(2):
            t_ours.append(step_time(ours, x, y, args.steps, losses=losses))
            t_ref.append(step_time(ref, x, y, args.steps))
        a, b = min(t_ours), min(t_ref)
        losses = [float(v) for v in losses]
        print(f"{model_name:<10} {a * 1e3:>10.1f} {b * 1e3:>15.1f} {a / b:>7.2f}  {difference:>13.1e}  "
              f"{losses[0]:>6.3f} → {losses[-1]:.3f}", flush=True)
        # TF32 convolutions on a GPU round at ~1e-3; a structural difference moves the logits by far more.
        if not difference < 1e-2:
            problems.append(f"{model_name}: cnnlab's logits differ from torchvision's with the same weights by "
                            f"{difference:.2g} of their size")
        # Means of three steps: VGG's dropout makes single steps' losses jump by ~0.3.
        problem = loss_problem(losses, window=3)
        if problem:
            problems.append(f"{model_name}: {problem}")
    # The ratio is a timing: printed, never failing. A model that is not torchvision's or does not train is wrong.
    exit_if_wrong(problems)
    print("results: every model computes torchvision's function and trains; the ratios are timings, not enforced")


if __name__ == "__main__":
    main()
