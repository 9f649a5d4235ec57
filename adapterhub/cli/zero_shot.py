"""``adapterhub zero-shot``: classify the held-out split of a labelled file by prompting a causal LM (``adapterhub.prompting``).

Registered in ``adapterhub.cli.CORE_COMMANDS``; imports torch and transformers only when it runs.
"""

from __future__ import annotations

import json

import click

from adapterhub.cli.flags import base_help, data_options, json_option, registry_option
from adapterhub.cli.output import echo_json
from adapterhub.options import setting_option
from adapterhub.settings import DataSpec, TrainSettings


@click.command("zero-shot")
@click.option("--base", required=True, help=base_help("Local causal LM directory or .gguf file."))
@click.option("--quantize", default=None, help="Load the base quantized (e.g. nf4).")
@data_options
@setting_option(DataSpec, "seed", help="Seed of the split, the subset and the choice of shots.")
@click.option("--template", required=True, help='Prompt with {text} (the example) and optionally {labels} (the label words), '
              'e.g. "Tweet: {text}\\nSentiment ({labels}):". \\n in the value is a newline.')  # fmt: skip
@click.option("--verbalizer", default=None, metavar="LABEL=WORDS,...",
              help="The answer standing for each label (default: the label's own name), e.g. neg=negative,pos=positive.")  # fmt: skip
@click.option("--shots", type=click.IntRange(min=0), default=0, show_default=True,
              help="Training examples shown with their answers before each one (in-context learning), balanced by class.")  # fmt: skip
@click.option(
    "--adapter", default=None, metavar="REF", help="Score with this registry adapter (causal LM) on the base."
)
@click.option("--force", is_flag=True, help="Load --adapter even if it was trained on another base.")
@click.option("--chat-template/--no-chat-template", default=True, show_default=True,
              help="Wrap the prompt in the base's chat template when it has one.")  # fmt: skip
@setting_option(TrainSettings, "eval_batch_size", "--batch-size", help="Prompts per forward pass.")
@registry_option
@json_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def zero_shot_command(base, quantize, path, text_column, label_column, encoding, dedupe, test_split, max_samples, seed,
                      template, verbalizer, shots, adapter, force, chat_template, eval_batch_size, registry_root, as_json,
                      no_progress) -> None:  # fmt: skip
    """Classify the held-out split of --data by prompting a causal LM, without training (or with --shots K in context).

    Each label is scored by the log-likelihood of its answer after the prompt; the split is the one `train` and
    `eval` make from the same data flags, so accuracy and macro-F1 compare with a trained adapter's.
    """
    from adapterhub.prompting import PromptSpec, evaluate_prompting, parse_verbalizer

    given = dict(text_column=text_column, label_column=label_column, encoding=encoding, dedupe=dedupe,
                 test_split=test_split, max_samples=max_samples)  # fmt: skip
    data = DataSpec(path, seed=seed, **{name: value for name, value in given.items() if value is not None})
    prompt = PromptSpec(template.replace("\\n", "\n"), parse_verbalizer(verbalizer), shots, chat_template)
    metrics = evaluate_prompting(base, data, prompt, adapter=adapter, registry_root=registry_root, force=force,
                                 quantize=quantize, batch_size=eval_batch_size, progress=not no_progress and not as_json)  # fmt: skip
    if as_json:
        echo_json(metrics)
        return
    for key, value in metrics.items():
        shown = json.dumps(value) if isinstance(value, dict) else f"{value:.4f}" if isinstance(value, float) else value
        click.echo(f"{key}: {shown}")
