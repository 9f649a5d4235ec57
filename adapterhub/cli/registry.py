"""``adapterhub registry ...``: the local adapter registry from the command line.

The registry library (``adapterhub_registry``) knows files and records; this module adds what needs the
core: mapping a PEFT directory's ``peft_type`` to an installed method and, with ``--base``, checking that
an imported adapter actually loads onto that base before it is recorded against it, and the remote stores
plugins contribute (``adapterhub_remote_stores``) for the ``--remote`` commands.
"""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub.cli.flags import base_help, registry_option
from adapterhub.cli.output import echo_json, record_lines
from adapterhub_registry import Registry


def _registry(ctx: click.Context) -> Registry:
    return Registry(ctx.obj)


def _remote(ctx: click.Context, name: str):
    """The local registry's remote ``name``, opened with the stores of the installed plugins (S3, file built in)."""
    from adapterhub import plugins

    return _registry(ctx).remote(name, stores=plugins.catalog().remote_store_specs())


remote_option = click.option(
    "--remote",
    "remote_name",
    default=None,
    metavar="REMOTE",
    help="Read the index of this remote (see `adapterhub registry remote list`) instead of the local one.",
)


def _print_records(records, as_json: bool) -> None:
    if as_json:
        echo_json([r.to_dict() for r in records])
        return
    if not records:
        click.echo("no adapters")
        return
    lines = []
    for r in records:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items()) if isinstance(v, (int, float)))
        tags = f" [{', '.join(r.tags)}]" if r.tags else ""
        lines.append(
            f"{r.ref:<32} {r.method:<10} {r.size_bytes / 1024:>9.1f} KiB  {r.base_fingerprint or '-'}{tags}  {metrics}"
        )
    click.echo("\n".join(lines))  # one write: click.echo per line was a third of listing 100,000 adapters


@click.group("registry")
@registry_option
@click.option(
    "--root", "old_root", default=None, hidden=True, help="The former name of --registry, kept for old scripts."
)
@click.pass_context
def registry_group(ctx: click.Context, registry_root: str | None, old_root: str | None) -> None:
    """The local adapter registry: versions, tags, checksums, metrics, PEFT import/export."""
    ctx.obj = old_root or registry_root  # --root given on the command line wins over $ADAPTERHUB_REGISTRY


@registry_group.command("list")
@click.option("--name", default=None)
@click.option("--method", default=None)
@click.option("--base", "base_fingerprint", default=None, help="Base fingerprint.")
@click.option("--tag", default=None)
@click.option("--all-versions", is_flag=True)
@remote_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_command(ctx, name, method, base_fingerprint, tag, all_versions, remote_name, as_json) -> None:
    """List adapters (latest version of each unless --all-versions)."""
    source = _remote(ctx, remote_name) if remote_name else _registry(ctx)
    records = source.list(
        name=name, method=method, base_fingerprint=base_fingerprint, tag=tag, all_versions=all_versions
    )
    _print_records(records, as_json)


@registry_group.command("search")
@click.argument("query")
@click.option("--method", default=None, help="Only adapters of this method.")
@click.option("--base", default=None, help="Only adapters of this base fingerprint (or its prefix).")
@click.option("--tag", default=None, help="Only versions this tag points at.")
@click.option("--metric", "metrics", multiple=True, help="A metric filter such as accuracy>=0.7 (repeatable).")
@click.option("--limit", default=50, show_default=True, help="At most this many adapters.")
@remote_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def search_command(ctx, query, method, base, tag, metrics, limit, remote_name, as_json) -> None:
    """Find adapters whose name, method, tags or description contain QUERY (each name's newest version
    matching the filters)."""
    if remote_name:
        found = _remote(ctx, remote_name).search(query, method=method, base=base, tag=tag, metrics=metrics, limit=limit)
    elif method or base or tag or metrics:
        found, _ = _registry(ctx).page(query, method=method, base=base, tag=tag, metrics=metrics, limit=limit)
    else:
        found = _registry(ctx).search(query, limit=limit)
    _print_records(found, as_json)


@registry_group.command("show")
@click.argument("ref")
@remote_option
@click.option("--json", "as_json", is_flag=True, help="Everything recorded (manifest, PEFT config, ...), as JSON.")
@click.pass_context
def show_command(ctx, ref, remote_name, as_json) -> None:
    """What is recorded about REF (name, name@version or name:tag): method, base, tags, labels, metrics, checksum.
    With --json everything, manifest included; a fetched version's manifest records its remote, the remote's
    version and the sha256 under "remote"."""
    record = (_remote(ctx, remote_name) if remote_name else _registry(ctx)).resolve(ref).to_dict()
    if as_json:
        echo_json(record)
        return
    for line in record_lines(record):
        click.echo(line)
    origin = record["manifest"].get("remote")
    if isinstance(origin, dict) and origin.get("signed_by"):  # checked against the remote's trusted keys at fetch
        click.echo(f"  {'signed by':<14} {origin['signed_by']} (verified when fetched from {origin.get('name')})")
    click.echo("everything recorded, manifest included: the same command with --json")


@registry_group.command("tag")
@click.argument("ref")
@click.argument("tag")
@remote_option
@click.pass_context
def tag_command(ctx, ref, tag, remote_name) -> None:
    """Point TAG of the adapter's name at REF's version (on --remote: moved atomically there)."""
    click.echo(f"{tag} -> {(_remote(ctx, remote_name) if remote_name else _registry(ctx)).tag(ref, tag).ref}")


@registry_group.group("remote")
def remote_group() -> None:
    """Remotes of this registry, like git's: S3 buckets (s3://bucket/prefix) or shared directories (file:///path)."""


@remote_group.command("add")
@click.argument("name")
@click.argument("url")
@click.option(
    "--endpoint-url",
    default=None,
    help="S3-compatible endpoint (MinIO, ...); default: AWS settings such as $AWS_ENDPOINT_URL.",
)
@click.option(
    "--trust",
    "trusted",
    multiple=True,
    metavar="PUB.pem",
    type=click.Path(dir_okay=False),
    help="Fetch only adapters signed by this public key (repeatable; the key is copied into the registry's config).",
)
@click.pass_context
def remote_add_command(ctx, name, url, endpoint_url, trusted) -> None:
    """Add remote NAME at URL (s3://bucket/prefix or file:///absolute/path)."""
    from adapterhub_registry.keys import fingerprint, read_public_key
    from adapterhub_registry.remote_config import RemoteConfigs

    keys = tuple(read_public_key(path) for path in trusted)  # every key read before anything is written
    remote = RemoteConfigs(_registry(ctx).root).add(name, url, endpoint_url, trusted_keys=keys)
    click.echo(f"added remote {remote.name} -> {remote.url}" + (f" (endpoint {endpoint_url})" if endpoint_url else ""))
    for pem in remote.trusted_keys:
        click.echo(f"  trusts key {fingerprint(pem)}: fetches from {name} must be signed by a trusted key")


@remote_group.command("trust")
@click.argument("name")
@click.argument("public_key", metavar="PUB.pem", type=click.Path(dir_okay=False))
@click.pass_context
def remote_trust_command(ctx, name, public_key) -> None:
    """Make remote NAME require a signature by a trusted key, PUB.pem among them, on every fetch and on serve
    --remote (the key is copied into the registry's config: moving the file later changes nothing)."""
    from adapterhub_registry.keys import fingerprint, read_public_key
    from adapterhub_registry.remote_config import RemoteConfigs

    remote, added = RemoteConfigs(_registry(ctx).root).trust(name, read_public_key(public_key))
    key = fingerprint(read_public_key(public_key))
    click.echo(
        f"remote {name} {'now trusts' if added else 'already trusted'} key {key} "
        f"({len(remote.trusted_keys)} trusted): fetches must be signed by one of them"
    )


@remote_group.command("untrust")
@click.argument("name")
@click.argument("key")
@click.pass_context
def remote_untrust_command(ctx, name, key) -> None:
    """Stop trusting KEY on remote NAME: its fingerprint (or a unique start of it, as `remote list --json` shows
    it) or its PUB.pem file. With no trusted key left, fetches from NAME are no longer checked for signatures."""
    from adapterhub_registry.keys import fingerprint, read_public_key
    from adapterhub_registry.remote_config import RemoteConfigs

    given = fingerprint(read_public_key(key)) if Path(key).is_file() else key
    remote, removed = RemoteConfigs(_registry(ctx).root).untrust(name, given)
    left = len(remote.trusted_keys)
    click.echo(
        f"remote {name} no longer trusts key {removed}; "
        + (f"{left} trusted key(s) left" if left else "no trusted key left: fetches are not checked for signatures")
    )


@remote_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def remote_list_command(ctx, as_json) -> None:
    """The configured remotes."""
    from adapterhub_registry.remote_config import RemoteConfigs

    remotes = RemoteConfigs(_registry(ctx).root).all()
    if as_json:
        echo_json([r.to_dict() for r in remotes])
        return
    for r in remotes:
        trust = f"  (trusts {len(r.trusted_keys)} key(s): signatures required)" if r.trusted_keys else ""
        click.echo(f"{r.name:<16} {r.url}" + (f"  (endpoint {r.endpoint_url})" if r.endpoint_url else "") + trust)
    if not remotes:
        click.echo("no remotes; add one with `adapterhub registry remote add NAME s3://bucket/prefix`")


@remote_group.command("remove")
@click.argument("name")
@click.pass_context
def remote_remove_command(ctx, name) -> None:
    """Forget remote NAME (nothing on the remote is touched)."""
    from adapterhub_registry.remote_config import RemoteConfigs

    RemoteConfigs(_registry(ctx).root).remove(name)
    click.echo(f"removed remote {name}")


@registry_group.command("push-remote")
@click.argument("remote_name", metavar="REMOTE")
@click.argument("ref")
@click.option("--tag", "tags", multiple=True, help="Point this tag of the remote at the pushed version (repeatable).")
@click.option(
    "--sign",
    "signing_key",
    default=None,
    metavar="KEY.pem",
    type=click.Path(dir_okay=False),
    help="Sign the pushed version with this private key (OpenSSF model-signing; `adapterhub registry keys generate`).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def push_remote_command(ctx, remote_name, ref, tags, signing_key, as_json) -> None:
    """Upload the local REF to REMOTE as its next version of the name (the blob is skipped if already there)."""
    from adapterhub_registry.keys import read_signing_key

    key = read_signing_key(signing_key) if signing_key else None  # a bad key fails before anything is uploaded
    record = _remote(ctx, remote_name).push(ref, tags=tags, sign=key)
    if as_json:
        echo_json(record.to_dict())
    else:
        signed = f", signed by {key.fingerprint[:16]}" if key else ""
        click.echo(f"pushed {ref} to {remote_name} as {record.ref} (sha256 {record.blob_sha256[:12]}{signed})")


@registry_group.command("fetch")
@click.argument("remote_name", metavar="REMOTE")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def fetch_command(ctx, remote_name, ref, as_json) -> None:
    """Bring REF (name, name@version or name:tag, as REMOTE numbers them) into the local registry, sha256-checked."""
    record = _remote(ctx, remote_name).fetch(ref)
    if as_json:
        echo_json(record.to_dict())
    else:
        from adapterhub_registry.remote import provenance

        origin = provenance(record) or {}
        click.echo(f"fetched {remote_name} {origin.get('ref', '?')} as {record.ref} (sha256 {record.blob_sha256[:12]})")


@registry_group.command("untag")
@click.argument("name")
@click.argument("tag")
@click.pass_context
def untag_command(ctx, name, tag) -> None:
    """Remove TAG from adapter NAME."""
    _registry(ctx).untag(name, tag)
    click.echo(f"removed tag {tag} from {name}")


@registry_group.command("delete")
@click.argument("ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--remote",
    "remote_name",
    default=None,
    metavar="REMOTE",
    help="Delete the version REF (name@VERSION) on this remote: a tombstone; its blob goes at the next gc --remote.",
)
@click.pass_context
def delete_command(ctx, ref, yes, remote_name) -> None:
    """Delete REF (all versions for a bare name); blobs no longer used are removed."""
    if remote_name:
        if not yes:
            click.confirm(f"delete {ref} on remote {remote_name}?", abort=True)
        click.echo(f"deleted {_remote(ctx, remote_name).delete(ref).ref} on {remote_name}")
        return
    registry = _registry(ctx)
    if not yes:
        click.confirm(
            f"delete {ref}" + (" (all versions)" if "@" not in ref and ":" not in ref else "") + "?", abort=True
        )
    for record in registry.delete(ref):
        click.echo(f"deleted {record.ref}")


@registry_group.command("verify")
@click.option("--repair", is_flag=True, help="Remove orphan blobs and temp files left by interrupted writes.")
@click.option(
    "--remote",
    "remote_name",
    default=None,
    metavar="REMOTE",
    help="Check this remote instead: download and re-hash every live version's blob, compare its index with its "
    "entries.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify_command(ctx, repair, remote_name, as_json) -> None:
    """Re-hash every blob; report corrupt or missing ones by adapter. Exit 1 if any is corrupt."""
    if remote_name:
        _verify_remote(ctx, remote_name, as_json)
        return
    report = _registry(ctx).verify(repair=repair)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(f"checked {report.checked} adapter(s): {len(report.ok)} ok, {len(report.corrupt)} corrupt")
        for ref, reason in report.corrupt:
            click.echo(f"CORRUPT {ref}: {reason}")
        for path in [*report.orphans, *report.temp_files]:
            click.echo(f"{'removed' if report.repaired else 'leftover'}: {path}")
    if not report.ok_all:
        ctx.exit(1)


def _verify_remote(ctx: click.Context, remote_name: str, as_json: bool) -> None:
    report = _remote(ctx, remote_name).verify()
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(
            f"checked {report.checked} version(s) on {remote_name}: {len(report.ok)} ok, {len(report.corrupt)} damaged"
        )
        for ref, reason in report.corrupt:
            click.echo(f"DAMAGED {ref}: {reason}")
        for problem in report.index_problems:
            click.echo(f"INDEX {problem}")
        if report.unreferenced:
            click.echo(f"{len(report.unreferenced)} blob(s) no live version uses (`adapterhub registry gc --remote "
                       f"{remote_name}` removes them once older than its grace period)")  # fmt: skip
    if not report.ok_all:
        ctx.exit(1)


def _duration(text: str) -> float:
    """Seconds in `24h`, `90m`, `2d`, `3600s` or `3600`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration; write e.g. 24h, 90m, 2d or 3600s") from None


@registry_group.command("gc")
@click.option("--remote", "remote_name", required=True, metavar="REMOTE", help="The remote to clean.")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    help="Keep what was written more recently than this (a push in flight uploads its blob first); at least 1h.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be removed, remove nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gc_command(ctx, remote_name, grace, dry_run, as_json) -> None:
    """Remove the blobs of REMOTE that no live version uses (deleted versions, killed pushes), and the index's
    replaced snapshots and folded log objects, once older than --grace."""
    report = _remote(ctx, remote_name).gc(_duration(grace), dry_run=dry_run)
    if as_json:
        echo_json(report.to_dict() | {"dry_run": dry_run})
        return
    for key in report.removed:
        click.echo(f"{'would remove' if dry_run else 'removed'} {key}")
    click.echo(f"{len(report.removed)} object(s) {'to remove' if dry_run else 'removed'}, "
               f"{len(report.kept_young)} kept (younger than {grace}), {report.live_blobs} blob(s) in use")  # fmt: skip


@registry_group.command("compact")
@click.option("--remote", "remote_name", required=True, metavar="REMOTE", help="The remote whose index to write.")
@click.option("--rebuild", is_flag=True, help="Read every entry instead of starting from the last snapshot.")
@click.pass_context
def compact_command(ctx, remote_name, rebuild) -> None:
    """Write REMOTE's index as one snapshot, so a listing reads it in one request (pushes do this now and then;
    a remote written before the index existed needs it once)."""
    remote = _remote(ctx, remote_name)
    won = remote.compact(rebuild=rebuild)
    head = remote.index.head() or {}
    click.echo(f"index of {remote_name}: snapshot {str(head.get('snapshot'))[:12]}"
               + ("" if won else " (another compaction finished first; its snapshot is current)"))  # fmt: skip


@registry_group.command("pull")
@click.argument("ref")
@click.argument("directory", type=click.Path(file_okay=False))
@click.pass_context
def pull_command(ctx, ref, directory) -> None:
    """Write REF (checked by sha256) to DIRECTORY as PEFT files plus adapterhub.json."""
    click.echo(f"pulled {_registry(ctx).pull(ref, directory).ref} into {directory}")


@registry_group.command("export-peft")
@click.argument("ref")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace the files of an earlier export in DIRECTORY.")
@click.pass_context
def export_command(ctx, ref, directory, overwrite) -> None:
    """Write REF as a plain PEFT directory that peft.PeftModel.from_pretrained loads unchanged, with a model card
    (README.md: base model, labels, metrics, the loading snippet) and a classifier's label_config.json."""
    from adapterhub.errors import AdapterHubError
    from adapterhub.model_card import export_files
    from adapterhub_registry import DestinationExistsError

    registry = _registry(ctx)
    record = registry.resolve(ref)
    try:
        path = registry.export_peft(
            record.ref, directory, overwrite=overwrite,
            extra_files=export_files(record.ref, record.manifest, record.metrics, directory),
        )  # fmt: skip
    except DestinationExistsError as exc:
        raise AdapterHubError(
            f"{', '.join(exc.paths)} already exist(s): choose an empty directory, or pass --overwrite to replace them"
        ) from None
    click.echo(f"exported {record.ref} to {path}")


@registry_group.command("export-merged")
@click.argument("ref")
@click.argument("directory", metavar="OUT", type=click.Path(file_okay=False))
@click.option(
    "--base",
    "base_path",
    required=True,
    help=base_help("The base model the adapter was trained on (directory or .gguf)."),
)
@click.option(
    "--dtype",
    type=click.Choice(("float32", "bfloat16", "float16")),
    default="float32",
    show_default=True,
    help="Dtype of the written weights.",
)
@click.pass_context
def export_merged_command(ctx, ref, directory, base_path, dtype) -> None:
    """Write --base with REF merged into its weights to OUT: a transformers model directory (safetensors, config,
    tokenizer) that from_pretrained loads alone, for runtimes without adapter support."""
    from adapterhub.merging import export_merged

    export = export_merged(_registry(ctx), ref, base_path, directory, dtype=dtype)
    click.echo(f"exported {export.ref} merged into {base_path} to {export.directory} ({export.dtype})")
    for note in export.notes:
        click.echo(f"note: {note}")


@registry_group.command("import-peft")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.argument("name")
@click.option(
    "--base", default=None, help=base_help("Base model the adapter belongs to: checked to load, and recorded.")
)
@click.option("--tag", "tags", multiple=True)
@click.option("--force", is_flag=True, help="Record against --base even if it does not match.")
@click.pass_context
def import_command(ctx, directory, name, base, tags, force) -> None:
    """Import a PEFT adapter DIRECTORY (adapter_config.json + adapter_model.safetensors) as NAME."""
    from adapterhub.peft_import import import_peft

    record = import_peft(_registry(ctx), Path(directory), name, base=base, tags=tags, force=force)
    click.echo(f"imported {record.ref} ({record.method}, base {record.base_fingerprint or 'not recorded'})")


@registry_group.group("keys")
def keys_group() -> None:
    """Signing keys for remotes: push-remote --sign KEY.pem signs with one, remote trust NAME PUB.pem trusts one."""


@keys_group.command("generate")
@click.argument("name")
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Write the pair here instead of the registry's keys directory (<registry>/keys).",
)
@click.pass_context
def keys_generate_command(ctx, name, out_dir) -> None:
    """Write an elliptic-curve (P-256) key pair: NAME.pem (private, readable by you only) and NAME.pub (public, to
    hand to whoever fetches). An existing key is never replaced."""
    from adapterhub_registry.keys import fingerprint, generate_key_pair, keys_dir, read_public_key

    private, public = generate_key_pair(name, Path(out_dir) if out_dir else keys_dir(_registry(ctx).root))
    click.echo(
        f"private key {private} (mode 600; sign with it: adapterhub registry push-remote REMOTE REF --sign {private})"
    )
    click.echo(f"public key  {public} (fingerprint {fingerprint(read_public_key(public))})")
    click.echo(f"  whoever fetches trusts it: adapterhub registry remote trust REMOTE {public}")
