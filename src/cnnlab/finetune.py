"""Fine-tuning: start a run from saved weights (`--init-from`), then train only the classifier (`--freeze-backbone`)
or the classifier at a higher learning rate (`--head-lr-mult`).

The classifier is the model's last linear layer (resnet's `fc`, VGG's `classifier.6`, speednet's `fc`, the MLP's
last layer): what a new class count changes. Module names follow torchvision's, so its checkpoints load as they are.
"""

from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP's and torch.compile's, in checkpoints saved from the wrapper


def classifier(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, layer) of the model's last linear layer."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CnnlabError(f"{type(model).__name__} has no linear classifier to replace or train")
    return linears[-1]


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a run folder (its best.pt), a cnnlab checkpoint (its "model": the EMA weights when the run
    kept one), or a plain state dict such as torchvision's `.pth` files. Loaded with weights_only: never code."""
    file = Path(path)
    if file.is_dir():
        file = file / "best.pt"
    if not file.is_file():
        raise CnnlabError(f"--init-from {path}: no such file (or run folder with a best.pt)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code, a truncated file, not a PyTorch file at all
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise CnnlabError(f"--init-from {file}: not a weights file PyTorch loads safely ({first})") from None
    for key in ("model", "state_dict"):  # cnnlab's checkpoints; Lightning's and timm's training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CnnlabError(f"--init-from {file}: holds no state dict (names → tensors)")
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_initial_weights(model: nn.Module, path: str, model_name: str) -> str:
    """Load `path` into `model`, keeping the model's fresh classifier where the class counts differ; return the log
    line saying what was loaded and what was replaced. Anything else that does not fit is an error."""
    state = read_weights(path)
    own = model.state_dict()
    head_name, head = classifier(model)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = ([f"{len(missing)} of the model's tensors missing (e.g. {', '.join(missing[:3])})"] if missing else []) \
            + ([f"{len(unexpected)} unknown (e.g. {', '.join(unexpected[:3])})"] if unexpected else [])
        raise CnnlabError(f"--init-from {path} does not fit {model_name}: {'; '.join(parts)}; save it from the same "
                          "model with the same options (--stem, --head, --hidden, --batch-norm)")
    replaced = [k for k in own if state[k].shape != own[k].shape]
    wrong = [k for k in replaced if not k.startswith(head_name + ".")]
    if wrong:
        k = wrong[0]
        raise CnnlabError(f"--init-from {path} does not fit {model_name}: {k} has shape {tuple(state[k].shape)} "
                          f"there and {tuple(own[k].shape)} here; only the classifier ({head_name}) may differ "
                          "(different --stem, --head or image size?)")
    model.load_state_dict({k: v for k, v in state.items() if k not in replaced}, strict=not replaced)
    line = f"initial weights: {len(state) - len(replaced)} tensors from {path}"
    if replaced:
        old = state[f"{head_name}.weight"].shape[0]
        line += (f"; the classifier {head_name} was replaced ({old} → {head.out_features} outputs, freshly "
                 "initialised)")
    return line


def _stay_in_eval(module: nn.Module, args) -> None:
    module.training = False  # normalise with the running statistics and leave them as they are


def freeze_backbone(model: nn.Module) -> str:
    """Train the classifier alone: every other parameter stops learning, and the backbone's batch-norm layers keep
    their running statistics (they normalise as in evaluation). Returns the log line."""
    head_name, head = classifier(model)
    keep = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    for m in norms:
        m.register_forward_pre_hook(_stay_in_eval)
    trained = sum(p.numel() for p in head.parameters())
    return (f"backbone frozen: only the classifier {head_name} trains ({trained:,} parameters)"
            + (f"; {len(norms)} batch-norm layers keep their running statistics" if norms else ""))
