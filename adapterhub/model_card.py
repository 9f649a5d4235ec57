"""What an exported adapter carries beside its PEFT files so that transformers and peft alone load it anywhere.

``registry export-peft`` (``adapterhub.cli.registry``) asks the registry, which knows nothing of adapterhub, to
write these files beside ``adapter_config.json`` and ``adapter_model.safetensors``:

- ``README.md``, a model card as adapters on the Hugging Face Hub have: YAML front matter (``base_model``,
  ``library_name: peft``, ``tags``, ``pipeline_tag``) and a body with the labels in head order, the base's
  fingerprint, the metrics and the exact loading snippet;
- for a classifier, ``label_config.json``: ``num_labels``, ``id2label`` and ``label2id``, the keys of a
  transformers ``config.json``, which ``from_pretrained(base, **label_config)`` takes as they are. Without them
  the base gets a head of the default size (a size mismatch with the trained head) and labels ``LABEL_0..``.
  They are not written as a ``config.json``: that name would make transformers take the folder for a whole model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapterhub import packaged
from adapterhub.manifest import BaseIdentity, Manifest

CARD_FILE = "README.md"
LABEL_CONFIG_FILE = "label_config.json"

_PIPELINE_TAGS = {"seq-cls": "text-classification", "causal-lm": "text-generation"}


def export_files(
    ref: str, manifest: dict[str, Any], metrics: dict[str, Any], directory: str | Path
) -> dict[str, bytes]:
    """The files an export of registry adapter ``ref`` (its stored ``manifest`` and ``metrics``) adds in
    ``directory``: the model card, and the label config of a classifier."""
    recorded = Manifest.from_dict(manifest)
    files = {CARD_FILE: model_card(ref, recorded, metrics, Path(directory)).encode("utf-8")}
    if recorded.labels:
        files[LABEL_CONFIG_FILE] = (json.dumps(label_config(recorded.labels), indent=2) + "\n").encode("utf-8")
    return files


def label_config(labels: list[str]) -> dict[str, Any]:
    """The head's size and names as a transformers config states them (``id2label`` keys are strings in JSON)."""
    return {
        "num_labels": len(labels),
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def base_model_id(base: BaseIdentity | None) -> str | None:
    """What the card's ``base_model`` names: the Hub id of a packaged base, else the base as it was given."""
    if base is None:
        return None
    entry = packaged.PACKAGED.get(base.given or "")
    if entry is not None and entry.kind == packaged.BASE and entry.hub_id:
        return entry.hub_id
    return base.given or base.source


def model_card(ref: str, manifest: Manifest, metrics: dict[str, Any], directory: Path) -> str:
    """The card's text: front matter, then what the adapter is and how to load it."""
    base = manifest.base or BaseIdentity()
    base_model = base_model_id(manifest.base)
    model_task = manifest.model_task or "causal-lm"
    front = {
        "base_model": base_model,
        "library_name": "peft",
        "pipeline_tag": _PIPELINE_TAGS.get(model_task),
        "tags": [t for t in ("adapterhub", "peft", manifest.method, model_task) if t],
    }
    lines = ["---"]
    for key, value in front.items():
        if isinstance(value, list):
            lines += [f"{key}:", *(f"- {json.dumps(item)}" for item in value)]
        elif value is not None:
            lines.append(f"{key}: {json.dumps(value)}")  # a JSON string is a YAML string, quotes and all
    lines += ["---", "", f"# {ref}", ""]
    lines += [f"A {manifest.method or 'PEFT'} adapter ({model_task}) for `{base_model or 'an unrecorded base'}`, "
              f"exported from the adapterhub registry.", ""]  # fmt: skip
    if manifest.labels:
        lines += ["## Labels", "", f"In head order (`{LABEL_CONFIG_FILE}` holds `num_labels`, `id2label` and "
                  "`label2id`, as a transformers config states them):", "", "| id | label |", "|---|---|"]  # fmt: skip
        lines += [f"| {i} | {label} |" for i, label in enumerate(manifest.labels)] + [""]
    lines += ["## Base model", "", f"- trained on: `{base.given or base.source or 'not recorded'}`"]
    lines += [f"- architecture: `{base.architecture}`"] if base.architecture else []
    lines += [f"- fingerprint: `{base.fingerprint}` (architecture, shapes and a hash of the weights)"]
    if base.quantization:
        lines.append(f"- trained on the base quantized as `{base.quantization}`")
    if base.source and base.source.endswith(".gguf"):
        lines.append(
            f"- trained on the dequantized weights of `{base.source}`; the full-precision model differs a little"
        )
    lines.append("")
    shown = {k: v for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if shown:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in shown.items()] + [""]
    lines += ["## Loading with transformers and peft", "", "```python", *_snippet(manifest, directory), "```", ""]
    return "\n".join(lines)


def _load_arguments(base: BaseIdentity) -> str:
    """The arguments of ``from_pretrained`` that load the base: a Hub id, a model directory, or a GGUF file."""
    name = base_model_id(base) or "PATH/TO/BASE"
    if name == (base.given or "") and base.source and base.source.endswith(".gguf"):
        path = Path(name)
        folder, gguf = (path.parent, path.name) if path.suffix == ".gguf" else (path, base.source)
        return f"{json.dumps(str(folder))}, gguf_file={json.dumps(gguf)}"
    return json.dumps(name)


def _snippet(manifest: Manifest, directory: Path) -> list[str]:
    base = _load_arguments(manifest.base or BaseIdentity())
    adapter = json.dumps(str(directory.expanduser().resolve()))
    if manifest.labels:
        return [
            "import json",
            "from pathlib import Path",
            "",
            "from peft import PeftModel",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f"adapter_dir = Path({adapter})  # this folder",
            f'label_config = json.loads((adapter_dir / "{LABEL_CONFIG_FILE}").read_text())',
            'label_config["id2label"] = {int(i): name for i, name in label_config["id2label"].items()}  # JSON keys are text',
            f"tokenizer = AutoTokenizer.from_pretrained({base})",
            f"model = AutoModelForSequenceClassification.from_pretrained({base}, **label_config)",
            "model = PeftModel.from_pretrained(model, adapter_dir).eval()",
            "",
            f"texts = {json.dumps(['an example text'])}",
            'inputs = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)',
            "predicted = model(**inputs).logits.argmax(-1).tolist()",
            "print([model.config.id2label[i] for i in predicted])",
        ]
    return [
        "from pathlib import Path",
        "",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"adapter_dir = Path({adapter})  # this folder",
        f"tokenizer = AutoTokenizer.from_pretrained({base})",
        f"model = AutoModelForCausalLM.from_pretrained({base})",
        "model = PeftModel.from_pretrained(model, adapter_dir).eval()",
        "",
        'inputs = tokenizer("Once upon a time", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0], skip_special_tokens=True))",
    ]
