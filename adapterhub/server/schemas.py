"""The request bodies of the server's endpoints (pydantic; an unknown field is a 422 naming it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from adapterhub.runtime.sampling import SamplingParams

PROMPT_FIELDS = ("template", "labels", "verbalizer", "examples", "chat_template")  # classification by prompting
TASK_FIELD = Field(
    default=None,
    description="A task of the server's --router sequence (its adapter is used), or 'auto': the router picks.",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateRequest(_Strict):
    prompt: str = Field(min_length=1)
    adapter: str | None = Field(
        default=None, description="Registry ref (name, name@version, name:tag); none: the base."
    )
    task: str | None = TASK_FIELD
    max_new_tokens: int | None = Field(default=None, ge=1, description="Default: 32, or the server's limit if lower.")
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None

    def sampling(self) -> SamplingParams:
        """The engine's settings of this request (``max_new_tokens`` already set by the handler); greedy requests of
        any ``top_p``, ``top_k`` and ``seed`` decode alike, so they get the same settings and share batches."""
        if not self.do_sample:
            return SamplingParams(max_tokens=self.max_new_tokens or 32, temperature=0)
        return SamplingParams(max_tokens=self.max_new_tokens or 32, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, seed=self.seed)  # fmt: skip


class Example(_Strict):
    """An in-context example of a prompt classification: shown with its answer before the request's text."""

    text: str = Field(min_length=1)
    label: str


class ClassifyRequest(_Strict):
    """A seq-cls base classifies ``text`` with its head; a causal-LM base needs ``template`` and ``labels`` and scores
    each label's answer after the prompt (``prompt_classify.py``). The prompt fields are refused on a seq-cls base."""

    text: str = Field(min_length=1)
    adapter: str | None = Field(
        default=None, description="Registry ref (name, name@version, name:tag); none: the base."
    )
    task: str | None = TASK_FIELD
    template: str | None = Field(default=None, description="Causal-LM base: the prompt, with {text} (the text) and "
                                 "optionally {labels} (the label words, comma-separated).")  # fmt: skip
    labels: list[str] | None = Field(default=None, description="Causal-LM base: the labels to choose from (2 or more).")
    verbalizer: dict[str, str] | None = Field(default=None, description="Label -> the words answering for it; a label "
                                              "not named is its own word.")  # fmt: skip
    examples: list[Example] | None = Field(
        default=None, description="In-context examples, shown with their answers first."
    )
    chat_template: bool = Field(
        default=True, description="Wrap the prompt in the base's chat template when it has one."
    )

    @property
    def prompt_fields(self) -> list[str]:
        """The prompt fields this request sets, in declaration order."""
        return [name for name in PROMPT_FIELDS if name in self.model_fields_set]


class AdapterRequest(_Strict):
    ref: str = Field(min_length=1)
    force: bool = Field(default=False, description="Load even if it was trained on another base.")
