"""``ssl-noise registry``: list, inspect, verify, export and remove pretrained encoders."""

from __future__ import annotations

import sys

import click

from ssl_noise.cli.app import cli
from ssl_noise.cli.options import pass_settings
from ssl_noise.errors import UserError
from ssl_noise.io import check_writable
from ssl_noise.settings import Settings

# Heavy imports (torch, pandas, data loaders) stay inside the commands so that ``ssl-noise --help`` stays fast.


@cli.group("registry")
def registry_group() -> None:
    """Inspect the encoder registry (--checkpoints): ls, show, verify, export, rm.

    \b
    An ID is a full entry id, a unique prefix of one, or a method name (its newest entry):
      ssl-noise registry ls
      ssl-noise registry verify
      ssl-noise registry export simclr --out simclr_resnet18.pt
      ssl-noise registry export simclr --format hf --out simclr_resnet18_hf
    """


def _root(settings: Settings, *, missing_ok: bool = False):
    """The registry folder, or a UserError saying what is wrong with it (a file; missing unless ``missing_ok``,
    then said on stderr) rather than "no encoders", which sends the user looking for entries, not at the path."""
    from ssl_noise import registry

    problem = registry.root_problem(settings.checkpoints)
    if problem and not (missing_ok and not settings.checkpoints.exists()):
        raise UserError(problem)
    if problem:
        click.echo(f"{problem}; {registry.HOW_TO_CREATE}", err=True)
    return settings.checkpoints


def _registry_pick(settings: Settings, ref: str) -> str:
    """Resolve ``ref`` and say on stderr which entry was picked when it was not spelled out in full."""
    from ssl_noise import registry

    entry_id = registry.resolve(settings.checkpoints, ref)
    if entry_id != ref:
        click.echo(f"using {entry_id}", err=True)
    return entry_id


@registry_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the full meta.json of every entry as a JSON list.")
@pass_settings
def registry_ls(settings: Settings, as_json: bool) -> None:
    """List entries, newest first."""
    import json

    from ssl_noise import registry

    metas = registry.list_entries(_root(settings, missing_ok=True))  # a fresh machine has no registry yet
    if as_json:
        click.echo(json.dumps(metas, indent=2, sort_keys=True))
        return
    if not metas:
        if settings.checkpoints.is_dir():
            click.echo(f"no encoders in {settings.checkpoints}; {registry.HOW_TO_CREATE}", err=True)
        return
    header = ("id", "method", "backbone", "stem", "dataset", "epochs", "knn_acc", "created")
    rows = [header] + [_registry_row(m) for m in metas]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def _registry_row(meta: dict) -> tuple:
    knn = (meta.get("metrics") or {}).get("knn_acc")
    knn_text = f"{knn:.4f}" if isinstance(knn, (int, float)) else "-"
    created = str(meta.get("created_at", ""))[:16].replace("T", " ")
    return tuple(str(x) for x in (meta["id"], meta.get("method"), meta.get("backbone"), meta.get("stem"),
                                  meta.get("dataset"), meta.get("epochs"), knn_text, created))


@registry_group.command("show")
@click.argument("ref", metavar="ID")
@pass_settings
def registry_show(settings: Settings, ref: str) -> None:
    """Print an entry's meta.json and folder."""
    import json

    from ssl_noise import registry

    entry_id = _registry_pick(settings, ref)
    click.echo(json.dumps(registry.read_meta(settings.checkpoints, entry_id), indent=2, sort_keys=True))
    click.echo(f"folder: {settings.checkpoints / entry_id}")


@registry_group.command("verify")
@click.argument("ref", metavar="[ID]", required=False)
@pass_settings
def registry_verify(settings: Settings, ref: str | None) -> None:
    """Re-hash and strict-load entries (all when no ID).

    Prints one OK/FAIL line per entry and exits with status 2 if any entry fails.
    """
    from ssl_noise import registry

    if ref is None:
        results = registry.verify_all(_root(settings))
        if not results:
            click.echo(f"no encoders in {settings.checkpoints}; nothing to verify", err=True)
    else:
        entry_id = _registry_pick(settings, ref)
        results = [(entry_id, *registry.verify_entry(settings.checkpoints, entry_id))]
    for entry_id, ok, message in results:
        click.echo(f"{'OK  ' if ok else 'FAIL'} {entry_id}: {message}")
    failed = sum(not ok for _, ok, _ in results)
    if failed:
        raise UserError(f"{failed} of {len(results)} registry entries failed verification")


@registry_group.command("export")
@click.argument("ref", metavar="ID")
@click.option("--format", "fmt", type=click.Choice(["torch", "hf"]), default="torch", show_default=True,
              help="torch: one plain torch.save state_dict FILE; hf: a new folder for the Hugging Face Hub with "
                   "model.safetensors, config.json and a model card (README.md), loadable in torchvision and timm.")
@click.option("--out", required=True, type=click.Path(), metavar="PATH", help="The file (torch) or new folder (hf).")
@pass_settings
def registry_export(settings: Settings, ref: str, fmt: str, out: str) -> None:
    """Export weights for use outside ssl-noise.

    \b
    torch: the file loads with torch.load(FILE, weights_only=True) and load_state_dict(strict=True) into a plain
    torchvision ResNet; the command prints the exact code.
    hf: upload the folder as a model repository (huggingface-cli upload USER/NAME DIR); its README.md says how to
    load it and records method, data, schedule, k-NN accuracy, seed and the data's licence.
    """
    from ssl_noise import registry

    check_writable(out, "--out", folder=fmt == "hf")
    entry_id = _registry_pick(settings, ref)
    if fmt == "hf":
        click.echo(f"wrote {registry.export_hf(settings.checkpoints, entry_id, out)}")
        return
    path = registry.export_entry(settings.checkpoints, entry_id, out)
    click.echo(f"wrote {path}; load it with:\n")
    click.echo(registry.export_instructions(registry.read_meta(settings.checkpoints, entry_id), path))


@registry_group.command("rm")
@click.argument("ref", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required in non-interactive runs).")
@pass_settings
def registry_rm(settings: Settings, ref: str, yes: bool) -> None:
    """Remove an entry (full id or unique prefix; not a method name)."""
    from ssl_noise import registry

    entry_id = registry.resolve_id(settings.checkpoints, ref)
    if not yes:
        if not sys.stdin.isatty():
            raise UserError(f"refusing to remove {entry_id} without --yes in a non-interactive run")
        click.confirm(f"remove {entry_id} from {settings.checkpoints}?", abort=True)
    click.echo(f"removed {registry.remove_entry(settings.checkpoints, entry_id)}")
