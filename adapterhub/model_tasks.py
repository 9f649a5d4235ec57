"""The model tasks a base can be loaded for, in one table: what each is called on the command line, in peft and
in transformers, and where a command has to pick one when nothing names it.

A *model task* is what the base's head computes (a label distribution, or the next token). It is not a
continual-learning task (one dataset of a sequence, ``adapterhub.continual``), and the code never calls it just
"task": ``Base.model_task``, ``load_base(model_task=...)``, ``--model-task`` (``--task`` is kept as an alias).
Import-light: the CLI reads the table without torch; the transformers and peft classes are looked up on use.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapterhub.errors import OptionError


@dataclass(frozen=True)
class ModelTask:
    name: str  # as the CLI, the manifest and the registry write it
    description: str
    peft_task_type: str  # peft.TaskType member, also the ``task_type`` of adapter_config.json
    auto_class: str  # the transformers Auto class that loads a base for it
    metrics: tuple[str, ...]  # what evaluation reports (and early stopping may watch)

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_class)


SEQ_CLS = ModelTask("seq-cls", "sequence classification: labels from a text", "SEQ_CLS",
                    "AutoModelForSequenceClassification", ("accuracy", "f1_macro", "roc_auc"))  # fmt: skip
CAUSAL_LM = ModelTask("causal-lm", "causal language modelling: the next token", "CAUSAL_LM", "AutoModelForCausalLM",
                      ("loss", "perplexity"))  # fmt: skip
MODEL_TASKS = {task.name: task for task in (SEQ_CLS, CAUSAL_LM)}
NAMES = tuple(MODEL_TASKS)

TRAIN_DEFAULT = SEQ_CLS.name
"""``adapterhub train`` without ``--model-task``: labelled CSV/JSONL data, the common case."""
LOAD_DEFAULT = CAUSAL_LM.name
"""Where only a base is given and nothing recorded says otherwise (``load_base``, ``serve``, an imported PEFT
adapter without ``task_type``, an adapter manifest without a model task): a generator needs no labels."""


def model_task(name: str) -> ModelTask:
    """The table's entry for ``name``, or an error listing the model tasks there are."""
    if name not in MODEL_TASKS:
        raise OptionError(f"unknown model task {name!r}; choose one of: {', '.join(NAMES)}")
    return MODEL_TASKS[name]


def from_peft_task_type(task_type: str | None, default: str = LOAD_DEFAULT) -> str:
    """The model task of a PEFT adapter's ``task_type`` (``default`` when it has none we know)."""
    for task in MODEL_TASKS.values():
        if task.peft_task_type == str(task_type or "").removeprefix("TaskType."):
            return task.name
    return default


def peft_task_type(name: str):
    """peft's ``TaskType`` member of model task ``name``, for a method plugin's peft config."""
    from peft import TaskType

    return TaskType[model_task(name).peft_task_type]
