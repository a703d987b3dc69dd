"""How artifacts are written and read: safetensors with the artifact's facts as JSON metadata, and the
AUTOMATIC1111 `.pt` layouts some formats require (read back with `weights_only=True` only)."""

from __future__ import annotations

from pathlib import Path

import torch


def tensor_file_content(method: str, tensors: dict[str, torch.Tensor], meta: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What `save_tensors` writes: the tensors, and the artifact's facts as JSON metadata under 'adapterbench'."""
    import json

    return dict(tensors), {"adapterbench": json.dumps({"method": method, **meta})}



def save_tensors(path: Path, method: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """An artifact as safetensors (atomically), its facts as JSON metadata under 'adapterbench'."""
    from safetensors.torch import save_file

    from bench.io import atomic_path

    tensors, metadata = tensor_file_content(method, tensors, meta)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path



def save_a1111_pt(path: Path, body: dict, name: str, step: int = 0) -> Path:
    """An AUTOMATIC1111 `.pt` (embedding or hypernetwork): `body` plus the fields both carry."""
    from bench.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({**body, "name": name, "step": step, "sd_checkpoint": None, "sd_checkpoint_name": None}, tmp)
    return path



def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """What `save_tensors` wrote: (tensors, meta)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("adapterbench", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.pop("method", None)
    return tensors, meta
