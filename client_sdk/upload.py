"""Privatized-upload mode: write perturbed hidden states + labels to one file for ``POST /v1/files``.

Use it when the device cannot stay online for interactive training and the labels may be shared
(classification only; generation's labels are the text itself). The file holds exactly what
:meth:`Privatizer.privatize` produces, never text or token ids, plus a manifest in its header (model,
split layer, label names, mechanism). Then any client can train from it, e.g. the official one::

    file = openai_client.files.create(file=open(path, "rb"), purpose="fine-tune")
    openai_client.fine_tuning.jobs.create(model="minilm-l6", training_file=file.id)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from client_sdk import privatized_file, wire
from client_sdk.data import LabelMap, load_examples


def write_privatized_file(
    privatizer: Any,
    dataset: Any,
    path: str | os.PathLike,
    *,
    model: str,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    labels: LabelMap | None = None,
) -> Path:
    """Privatize every example of ``dataset`` and write the upload file to ``path``; returns it.

    Sequences are padded to the privatizer's ``max_length`` so all batches share one (n, t, d) tensor.
    """
    examples = load_examples(dataset)
    labels = labels or LabelMap.fit(ex.label for ex in examples)
    t_max = int(privatizer.max_length)
    hidden, masks = [], []
    for start in range(0, len(examples), batch_size):
        out = privatizer.privatize([ex.text for ex in examples[start : start + batch_size]], generator=generator)
        pad = t_max - out["hidden"].shape[1]
        hidden.append(torch.nn.functional.pad(out["hidden"], (0, 0, 0, pad)))  # (b, t_max, d)
        masks.append(torch.nn.functional.pad(out["attention_mask"], (0, pad)))  # (b, t_max)
    mechanism = privatizer.mechanism
    manifest = privatized_file.Manifest(
        model=model,
        split_layer=int(privatizer.bottom.split_layer),
        num_labels=len(labels.names),
        label_names=labels.names,
        mechanism=mechanism.name,
        mechanism_config=mechanism.config.to_dict(),
    )
    tensors = {
        privatized_file.HIDDEN: torch.cat(hidden),
        privatized_file.MASK: torch.cat(masks).to(torch.uint8),
        privatized_file.LABELS: torch.tensor([labels.encode(ex.label) for ex in examples], dtype=torch.int64),
    }
    header = wire.WireHeader("upload", 0, privatized_file.KIND, extra=manifest.to_metadata())
    payload = wire.encode(tensors, header)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    return path
