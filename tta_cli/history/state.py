"""Adaptation state as flat tensors plus a JSON skeleton, so that it fits in safetensors.

Optimizer and generator states are nested dicts and lists of tensors and plain values;
``flatten_state`` pulls every tensor out under a dotted key and leaves a placeholder in the
skeleton, ``unflatten_state`` puts them back.
"""

from __future__ import annotations

import json
from typing import Any

import torch

TENSOR_KEY = "__tensor__"
INT_KEYS = "__int_keys__"


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if torch.is_tensor(value):
            tensors[path] = value.detach().cpu().contiguous()
            return {TENSOR_KEY: path}
        if isinstance(value, dict):
            # JSON keys are strings; optimizer states index parameters by int.
            int_keys = [key for key in value if isinstance(key, int)]
            node = {str(key): walk(item, f"{path}.{key}") for key, item in value.items()}
            if int_keys:
                node[INT_KEYS] = [str(key) for key in int_keys]
            return node
        if isinstance(value, list | tuple):
            return [walk(item, f"{path}.{index}") for index, item in enumerate(value)]
        return value

    return tensors, walk(state, prefix)


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if TENSOR_KEY in node:
                return tensors[node[TENSOR_KEY]]
            int_keys = set(node.get(INT_KEYS, ()))
            return {(int(key) if key in int_keys else key): walk(item) for key, item in node.items() if key != INT_KEYS}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(skeleton)


def dumps_skeleton(skeleton: Any) -> str:
    return json.dumps(skeleton, separators=(",", ":"), sort_keys=True)
