"""lm-evaluation-harness scores an adapter through the server exactly as its own ``hf`` backend scores it in process.

Two small tasks written as lm-eval task YAML (``tests/lm_eval_tasks/``: a multiple-choice one, scored by
log-likelihoods that lm-eval asks of a completions API with ``echo`` and ``logprobs``, and a ``generate_until``
one) run twice on a tiny Llama: with ``hf`` (transformers + peft in process, ``peft=`` the adapter exported from
the registry in PEFT format) and with ``local-completions`` against the server on loopback, the adapter named
as ``model`` and prompts sent as token ids (tokenized by the server's ``/tokenize`` in one run, by the local
tokenizer in the other). Accuracy, exact match, every log-likelihood (within 1e-3, read
from lm-eval's per-request samples) and every generation must agree; once with a LoRA (slotted) and once with
prompt tuning (not slotted). Nothing touches the network: local paths, offline hubs.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from live_server import LiveServer

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool
from adapterhub.server import ServerSettings, create_app
from adapterhub_registry import Registry

TASKS = Path(__file__).parent / "lm_eval_tasks"
KEY = "sk-eval"
METRICS = {"tiny_choice": "acc,none", "tiny_generate": "exact_match,none"}
ADAPTERS = {"lora": {"r": 4, "target_modules": "q_proj,v_proj"}, "prompt_tuning": {"num_virtual_tokens": 3}}


def push(model_dir: Path, registry: Registry, method: str, directory: Path):
    """An adapter of ``method`` with random (non-zero) weights, pushed to ``registry`` (made on a base of its own:
    attaching changes the base's modules)."""
    torch.manual_seed(3)
    base = load_base(model_dir)
    options = adapters.make_options(method, ADAPTERS[method])
    model = adapters.attach(base, method, options)
    for _, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.5)
    saved = adapters.save_adapter(model, directory / method, adapters.build_manifest(base, method, options))
    return registry.push(method.replace("_", "-"), saved, method=method, base_fingerprint=base.fingerprint_id)


def evaluate(model: str, model_args: str, **extra) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(METRICS), batch_size=4,
                                   task_manager=TaskManager(include_path=str(TASKS), include_defaults=False), log_samples=True,
                                   bootstrap_iters=0, random_seed=0, **extra)  # fmt: skip


def per_request(results: dict, task: str) -> list:
    """Each request's answer, in document order: (log-likelihood, is greedy) of each choice, or the generation."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[r[0] for r in s["resps"]] for s in samples]


@pytest.mark.integration
@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_local_completions_scores_an_adapter_as_the_hf_backend_does(method, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(TASKS)  # the task files name their data file relative to themselves
    for offline in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(offline, "1")
    registry = Registry(tmp_path / "registry")
    record = push(tiny_llama, registry, method, tmp_path)
    exported = registry.export_peft(record.ref, tmp_path / "export")
    in_process = evaluate("hf", f"pretrained={tiny_llama},peft={exported},dtype=float32,device=cpu")
    pool = AdapterPool(load_base(tiny_llama), slots=2, max_rank=4, registry=registry)
    server = LiveServer(create_app(pool, ServerSettings(max_new_tokens=16, model_name="tiny", api_key=KEY)))
    try:
        # As the README says: the key in OPENAI_API_KEY for completions, in auth_token for the tokenizer. The LoRA
        # run finds the server's tokenizer (vLLM's /tokenizer_info, /tokenize, /detokenize), the other uses its own
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        tokenizer = "" if method == "lora" else f",tokenizer_backend=huggingface,tokenizer={tiny_llama}"
        served = evaluate("local-completions", f"base_url={server.url}/v1/completions,model={record.name},"
                                               f"auth_token={KEY},max_retries=1{tokenizer}")  # fmt: skip
        tiers = [a["tier"] for a in pool.describe() if a["adapter"] == record.ref]
        tokenized = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        tokenized_here = 'adapterhub_requests_total{endpoint="/tokenize",status="200"}' in tokenized
    finally:
        server.stop()
        pool.close()
    assert tiers == (["peft"] if method == "prompt_tuning" else ["device"])
    assert tokenized_here == (method == "lora")
    for task, metric in METRICS.items():
        assert served["results"][task][metric] == in_process["results"][task][metric]
    theirs, ours = per_request(in_process, "tiny_choice"), per_request(served, "tiny_choice")
    assert [[greedy for _, greedy in doc] for doc in ours] == [[greedy for _, greedy in doc] for doc in theirs]
    likelihoods = [ll for doc in ours for ll, _ in doc]
    assert likelihoods == pytest.approx([ll for doc in theirs for ll, _ in doc], abs=1e-3)
    assert len(set(likelihoods)) > 1  # the choices were really scored, not all answered alike
    generations = per_request(served, "tiny_generate")
    if method == "lora":
        assert generations == per_request(in_process, "tiny_generate")
    else:  # see generated_without_cache
        assert generations == generated_without_cache(tiny_llama, exported, served["samples"]["tiny_generate"])


def generated_without_cache(model_dir: Path, exported: Path, samples: list[dict]) -> list[list[str]]:
    """transformers' greedy ``generate`` of each sample's prompt without the KV cache, cut as lm-eval cuts it.

    lm-eval's ``hf`` backend generates with the cache, and there peft 0.21's prompt tuning under transformers 5.2x
    picks other tokens than its own forward over the same sequence gives (it hands the cache over under a name
    transformers no longer reads and injects the virtual tokens again at every step; docs/serving.md, the lane);
    the server's tokens are the forward's, so its generations are compared with a generate that recomputes the
    whole sequence at each step."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), exported)
    texts = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        [(prompt, settings)] = sample["arguments"]
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=settings["max_gen_toks"], use_cache=False)  # fmt: skip
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        texts.append([min((text.split(stop)[0] for stop in settings["until"]), key=len)])
    return texts
