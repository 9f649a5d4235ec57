"""The request bodies of the server's endpoints (pydantic; an unknown field is a 422 naming it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

TASK_FIELD = Field(default=None, description="A task of the server's --router sequence (its adapter is used), or 'auto': the router picks.")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateRequest(_Strict):
    prompt: str = Field(min_length=1)
    adapter: str | None = Field(default=None, description="Registry ref (name, name@version, name:tag); none: the base.")
    task: str | None = TASK_FIELD
    max_new_tokens: int | None = Field(default=None, ge=1, description="Default: 32, or the server's limit if lower.")
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None


class ClassifyRequest(_Strict):
    text: str = Field(min_length=1)
    adapter: str | None = None
    task: str | None = TASK_FIELD


class AdapterRequest(_Strict):
    ref: str = Field(min_length=1)
    force: bool = Field(default=False, description="Load even if it was trained on another base.")
