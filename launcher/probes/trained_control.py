"""The trained retrieval control: the recipe that trains a tiny copier on the marked-fact task, and the compact file
that stores it, so the test suite can load a model known to retrieve and run the real probe on it.

The model is the repository's `Transformer` (llama, 2 layers, 64 wide, untied embeddings, block 64) trained on
`synthetic.code_rows` ("What is the code?" answered from the sentence "The code is 47." among other names' facts
and decoys, or "not in the context"), fresh rows every step, the answer positions supervised, with the softmax
restricted to the task's tokens (`tiny_training.restricted_output`). `scripts/experiments/retrieval_control.py`
runs the full recipe (about 10 minutes of one CPU core) and writes the file; the tests load it.

The file (`control.safetensors`, ~0.6 MB) holds every trained tensor except the two 50,304-row embedding matrices, of
which only the rows of the task's 211 tokens are stored: the other rows never receive a gradient (no input uses
them, the restricted softmax never scores them) and keep their initial values, which `load_control` redraws from the
seed and checks against a stored checksum. Its metadata records the recipe and its training log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from data.atomic import atomic_write
from data.tokenizer import get_tokenizer
from launcher.probes.synthetic import code_rows, task_token_ids
from launcher.probes.tiny_training import make_batch, restricted_output, train_steps
from model.config import ModelConfig
from model.transformer import Transformer

FILE = "control.safetensors"
MODEL = dict(n_embd=64, n_head=4, n_layer=2, block_size=64, dropout=0.0, fused_kernels=False, tie_weights=False)
EMBEDDINGS = ("tok_embeddings.weight", "output.weight")  # stored as their task rows only
INIT_SEED = 0
DATA_SEED = 4242  # the training rows' stream; the probe items use PROBE_SEED records


def init_model(arch: str = "llama", seed: int = INIT_SEED) -> Transformer:
    """The control's model at its initialisation (seeded): what training starts from and what the compact file's
    untrained embedding rows are redrawn from."""
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**MODEL, arch=arch))


def _untrained_rows_checksum(weight: torch.Tensor, columns: torch.Tensor) -> float:
    keep = torch.ones(weight.shape[0], dtype=torch.bool)
    keep[columns] = False
    return float(weight[keep].double().abs().sum())


def train(steps: int, lr: float, batch: int, log_every: int = 100, arch: str = "llama", init_seed: int = INIT_SEED,
          data_seed: int = DATA_SEED, answer_before: int | None = None, on_log: Callable[[dict], None] | None = None,
          ) -> tuple[Transformer, torch.Tensor, list[dict]]:
    """The recipe: AdamW (betas 0.9/0.95, no weight decay, clip 1.0), warmup 50 then cosine to lr/10, one thread.
    `arch`, the seeds and `answer_before` (answers only at earlier token positions) are for the position-invariance
    experiment (`scripts/experiments/position_invariance.py`); the control file uses the defaults. `on_log` receives
    each log record as it is made (the command lines print it)."""
    torch.set_num_threads(1)
    tokenizer = get_tokenizer()
    model = init_model(arch, init_seed)
    columns = torch.tensor(task_token_ids(tokenizer))
    rng = np.random.Generator(np.random.PCG64(data_seed))
    log: list[dict] = []
    start = time.time()
    with restricted_output(model, columns.tolist()) as to_columns:

        def next_batch(step: int):
            rows, sup = code_rows(rng, tokenizer, batch, max_len=MODEL["block_size"] + 1, answer_before=answer_before)
            b = make_batch(rows, sup, MODEL["block_size"])
            b.targets = to_columns(b.targets)
            return b

        def on_step(step: int, loss: float) -> None:
            if (step + 1) % log_every == 0:
                log.append({"step": step + 1, "loss": round(loss, 4), "seconds": round(time.time() - start, 1)})
                if on_log is not None:
                    on_log(log[-1])

        train_steps(model, next_batch, steps, lr=lr, warmup=50, on_step=on_step)
    return model, columns, log


def save_control(model: Transformer, columns: torch.Tensor, out: Path, metadata: dict) -> Path:
    """Writes `out/control.safetensors` (temp name, then renamed). Refuses a model whose untrained embedding rows
    are not their initial values (then the compact file could not rebuild it)."""
    from safetensors.torch import save_file

    init = init_model().state_dict()
    state = model.state_dict()
    tensors = {"columns": columns.clone()}
    checksums = {}
    for name in EMBEDDINGS:
        keep = torch.ones(state[name].shape[0], dtype=torch.bool)
        keep[columns] = False
        if not torch.equal(state[name][keep], init[name][keep]):
            raise ValueError(f"{name}: rows outside the task's tokens changed in training; the compact file cannot "
                             "rebuild this model")
        tensors[f"{name}.task_rows"] = state[name][columns].clone()
        checksums[name] = _untrained_rows_checksum(init[name], columns)
    tensors.update({k: v.clone().contiguous() for k, v in state.items() if k not in EMBEDDINGS})
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": json.dumps(MODEL), "init_seed": str(INIT_SEED), "untrained_rows_checksum": json.dumps(checksums),
            **{k: json.dumps(v) for k, v in metadata.items()}}
    atomic_write(out / FILE, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return out / FILE


def load_control(path: Path) -> tuple[Transformer, dict]:
    """The trained control as a full `Transformer` in eval mode, and its metadata (recipe, training log)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    if json.loads(meta["model"]) != MODEL or int(meta["init_seed"]) != INIT_SEED:
        raise ValueError(f"{path}: written for model {meta['model']} / init seed {meta['init_seed']}, this code builds "
                         f"{MODEL} / {INIT_SEED}; regenerate it with scripts/experiments/retrieval_control.py")
    tensors = load_file(str(path))
    model = init_model()
    state = model.state_dict()
    columns = tensors.pop("columns")
    checksums = json.loads(meta["untrained_rows_checksum"])
    for name in EMBEDDINGS:
        redrawn = _untrained_rows_checksum(state[name], columns)
        if abs(redrawn - checksums[name]) > 1e-6 * checksums[name]:
            raise ValueError(f"{path}: the initial rows of {name} redrawn from seed {INIT_SEED} differ from those it "
                             f"was trained with (checksum {redrawn} vs {checksums[name]}): torch's initialisation "
                             "changed; regenerate the file with scripts/experiments/retrieval_control.py")
        state[name][columns] = tensors.pop(f"{name}.task_rows")
    missing = sorted(set(state) - set(tensors) - set(EMBEDDINGS))
    if missing:
        raise ValueError(f"{path}: no tensors for {missing[:3]}; regenerate it with "
                         "scripts/experiments/retrieval_control.py")
    state.update(tensors)
    model.load_state_dict(state)
    model.eval()
    return model, {k: json.loads(v) for k, v in meta.items()}
