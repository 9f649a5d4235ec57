"""Zero-shot and few-shot classification by prompting a causal LM (adapterhub.prompting, `adapterhub zero-shot`)."""

from __future__ import annotations

import pytest
import torch

from adapterhub.base import load_base
from adapterhub.errors import OptionError
from adapterhub.prepare import prepare
from adapterhub.prompting import PromptScorer, PromptSpec, balanced_shots, evaluate_prompting, held_out
from adapterhub.settings import DataSpec, TrainSettings


@pytest.fixture(scope="module")
def llama_base(tiny_llama):
    return load_base(tiny_llama, model_task="causal-lm")


def answer_loglik(model, context: list[int], answer: list[int]) -> float:
    """log p(answer | context), one unpadded sequence, token by token."""
    ids = torch.tensor([context + answer])
    logprobs = model(input_ids=ids).logits[0].log_softmax(-1)
    return sum(float(logprobs[len(context) + j - 1, token]) for j, token in enumerate(answer))


def test_label_scores_are_the_models_log_likelihood_of_each_answer_after_the_shots(llama_base, sentiment_csv):
    train, test = held_out(DataSpec(str(sentiment_csv), label_column="sentiment"))
    shots = balanced_shots(train, 2, seed=0)
    prompt = PromptSpec("{text} it is", {"pos": "very good", "neg": "bad"}, shots=2)  # answers of 2 and 1 tokens
    scorer = PromptScorer(llama_base.tokenizer, prompt, test.label_names, shots)
    texts = test.texts[:5]
    scores = scorer.score(llama_base.model, texts, batch_size=3)  # padded batches of prompts of different lengths
    tokenizer = llama_base.tokenizer
    shown = "\n\n".join(f"{t} it is {'very good' if label == test.label_names.index('pos') else 'bad'}"
                        for t, label in zip(shots.texts, shots.labels))  # fmt: skip
    for i, text in enumerate(texts):
        context = tokenizer(f"{shown}\n\n{text} it is").input_ids
        for label, words in enumerate(["bad", "very good"]):  # label_names are sorted: neg, pos
            expected = answer_loglik(llama_base.model, context, tokenizer(words, add_special_tokens=False).input_ids)
            assert scores[i, label].item() == pytest.approx(expected, abs=1e-4)


def test_held_out_split_is_the_one_train_and_eval_use(tiny_bert, sentiment_csv):
    spec = DataSpec(str(sentiment_csv), label_column="sentiment", dedupe=True, max_samples=150, test_split=0.3, seed=3)
    bert = load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"])
    prepared = prepare(bert, spec, TrainSettings(seed=3), ["neg", "pos"])
    train, test = held_out(spec)
    assert (test.texts, test.labels) == (prepared.test_set.texts, prepared.test_set.labels)
    assert (train.texts, train.labels) == (prepared.train_set.texts, prepared.train_set.labels)


def test_shots_are_balanced_by_class_and_fixed_by_the_seed(sentiment_csv):
    train, _ = held_out(DataSpec(str(sentiment_csv), label_column="sentiment"))
    four = balanced_shots(train, 4, seed=1)
    assert sorted(four.labels) == [0, 0, 1, 1]
    assert four.texts == balanced_shots(train, 4, seed=1).texts
    assert four.texts != balanced_shots(train, 4, seed=2).texts
    assert set(four.texts) <= set(train.texts)


def test_chat_template_wraps_the_prompt_unless_turned_off(llama_base):
    tokenizer = llama_base.tokenizer
    tokenizer.chat_template = (
        "{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}<s> {% endif %}"
    )
    try:
        chat = PromptScorer(tokenizer, PromptSpec("{text} it is", {"neg": "bad", "pos": "good"}), ["neg", "pos"])
        raw = PromptScorer(
            tokenizer, PromptSpec("{text} it is", {"neg": "bad", "pos": "good"}, chat_template=False), ["neg", "pos"]
        )
        assert chat.context_ids("a good film") == tokenizer("<s> a good film it is </s> <s>").input_ids
        assert raw.context_ids("a good film") == tokenizer("a good film it is").input_ids
    finally:
        tokenizer.chat_template = None


def test_zero_shot_command_reports_eval_metrics_and_matches_the_python_api(cli_json, tiny_llama, sentiment_csv):
    args = ["zero-shot", "--base", str(tiny_llama), "--data", str(sentiment_csv), "--label-column", "sentiment",
            "--template", "{text} ({labels}) it is", "--verbalizer", "pos=good,neg=bad", "--shots", "2", "--json"]  # fmt: skip
    report = cli_json(*args)
    assert {"accuracy", "f1_macro", "roc_auc", "majority_baseline"} <= set(report)
    assert report["shots"] == 2 and report["label_words"] == {"neg": "bad", "pos": "good"}
    spec = DataSpec(str(sentiment_csv), label_column="sentiment")
    again = evaluate_prompting(
        str(tiny_llama), spec, PromptSpec("{text} ({labels}) it is", {"pos": "good", "neg": "bad"}, shots=2)
    )
    assert again["roc_auc"] == pytest.approx(report["roc_auc"]) and again["test_examples"] == report["test_examples"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--template", "Review:"], "has no {text} placeholder"),
        (
            ["--template", "{text}", "--verbalizer", "pos=good,neutral=meh"],
            "label 'neutral', which the data does not have",
        ),
        (["--template", "{text}", "--verbalizer", "pos= "], "tokenizes to nothing"),
    ],
)
def test_zero_shot_refuses_bad_prompts_in_one_line(flags, message, tiny_llama, sentiment_csv, capsys):
    from adapterhub.cli import main

    status = main(
        ["zero-shot", "--base", str(tiny_llama), "--data", str(sentiment_csv), "--label-column", "sentiment", *flags]
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 1 and len(errors) == 1 and message in errors[0]


def test_more_shots_than_training_examples_is_refused(sentiment_csv):
    train, _ = held_out(DataSpec(str(sentiment_csv), label_column="sentiment"))
    with pytest.raises(OptionError, match="lower --shots"):
        balanced_shots(train, len(train.texts) + 1, seed=0)


def test_adapter_from_another_base_is_refused_as_eval_refuses_it(cli_json, tiny_llama, sentiment_csv, tmp_path, capsys):
    from tiny_models import make_tiny_llama

    from adapterhub import adapters
    from adapterhub.cli import main
    from adapterhub_registry import Registry

    base = load_base(tiny_llama, model_task="causal-lm")  # a fresh LoRA (untrained) pushed as a causal-LM adapter
    options = adapters.make_options("lora", {"r": 4})
    model = adapters.attach(base, "lora", options)
    adapters.save_adapter(model, tmp_path / "lm", adapters.build_manifest(base, "lora", options))
    Registry().push("lm", tmp_path / "lm", method="lora", manifest=adapters.read_adapter(tmp_path / "lm")[0].manifest)
    other = str(make_tiny_llama(tmp_path / "other", seed=1))
    args = ["zero-shot", "--data", str(sentiment_csv), "--label-column", "sentiment", "--template", "{text} it is",
            "--verbalizer", "pos=good,neg=bad", "--adapter", "lm", "--json"]  # fmt: skip
    assert main([*args, "--base", other]) == 1 and "was trained on base" in capsys.readouterr().err
    report = cli_json(*args, "--base", str(tiny_llama))  # its own base: loads and scores
    assert {"accuracy", "f1_macro", "roc_auc"} <= set(report) and report["test_examples"] > 0


@pytest.mark.slow
def test_smollm2_classifies_tweets_zero_shot_and_with_shots_in_context():
    from shipped_assets import smollm2_gguf, tweets_csv

    base = load_base(smollm2_gguf(), model_task="causal-lm")
    spec = DataSpec(str(tweets_csv()), label_column="sentiment", encoding="latin-1", dedupe=True, max_samples=40)
    template = "Tweet: {text}\nSentiment ({labels}):"
    train, test = held_out(spec)
    tokenizer = base.tokenizer
    for shots in (None, balanced_shots(train, 2, seed=0)):  # the answer's tokens are those of the joined text (BPE)
        scorer = PromptScorer(tokenizer, PromptSpec(template), test.label_names, shots)
        rendered = tokenizer.decode(scorer.context_ids(test.texts[0]))
        assert scorer.use_chat and rendered.endswith("assistant\n")
        for word, answer in zip(scorer.words, scorer.continuations):
            assert (
                tokenizer(rendered + word, add_special_tokens=False).input_ids
                == scorer.context_ids(test.texts[0]) + answer
            )
    zero = evaluate_prompting(base, spec, PromptSpec(template))
    two = evaluate_prompting(base, spec, PromptSpec(template, shots=2))
    truth = torch.tensor(test.labels)
    for shots, report in ((None, zero), (balanced_shots(train, 2, seed=0), two)):  # the split and shots it names
        scores = PromptScorer(tokenizer, PromptSpec(template), test.label_names, shots).score(base.model, test.texts)
        assert report["test_examples"] == len(test.texts) > 5
        assert report["accuracy"] == pytest.approx((scores.argmax(1) == truth).double().mean().item(), abs=1e-12)
        assert report["majority_baseline"] == test.majority_fraction()
    # On these tweets SmolLM2-135M does not beat the majority class (0.31 against 0.46 on 521 of them in
    # benchmarks/results/shots-cpu.md), so its sense of sentiment is checked where there is no doubt: zero-shot,
    # every plainly positive text scores "positive" over "negative" by more than every plainly negative text does.
    plain = ["I love this so much, best day ever!", "What a wonderful, happy surprise!",
             "Thank you, the crew was amazing and the flight was great!", "This is fantastic, I am so happy!",
             "This is awful, I hate it.", "Terrible service, never again.",
             "Worst flight ever, rude staff and lost my bag.", "I am so angry and disappointed."]  # fmt: skip
    scores = PromptScorer(tokenizer, PromptSpec(template), test.label_names).score(base.model, plain)
    margin = scores[:, test.label_names.index("positive")] - scores[:, test.label_names.index("negative")]
    assert margin[:4].min() > margin[4:].max(), margin  # measured: 0.19 at least against -0.30 at most
