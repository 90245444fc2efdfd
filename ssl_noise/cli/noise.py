"""``ssl-noise noise``: corrupt a dataset's training labels into a noise file other commands reuse."""

from __future__ import annotations

import click

from ssl_noise.cli.app import cli
from ssl_noise.cli.options import out_option, pass_settings
from ssl_noise.io import check_writable
from ssl_noise.settings import Settings

# Heavy imports (torch, pandas, data loaders) stay inside the commands so that ``ssl-noise --help`` stays fast.


@cli.command("noise")
@click.option("--dataset", default="bloodmnist", show_default=True, metavar="NAME",
              help="Dataset whose TRAIN labels are corrupted (val and test stay clean).")
@click.option("--type", "noise_type", default="symmetric", show_default=True, metavar="TYPE",
              help="symmetric (flip to one of the OTHER classes; --rate = expected wrong-label rate), uniform "
                   "(DivideMix-style redraw over all K: wrong-label rate = rate*(K-1)/K), pairflip (i -> i+1 mod K), "
                   "asymmetric (needs --class-map or --matrix), instance (image-dependent flips, Xia et al. 2020; "
                   "--rate = mean flip rate).")
@click.option("--rate", type=float, metavar="R", help="Noise rate in [0, 1). Not used with --matrix.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed (record it with your results).")
@out_option("Noise file to write: index,clean_label,noisy_label (replaced atomically if it exists).", metavar="CSV")
@click.option("--mode", type=click.Choice(["sampled", "exact"]), default="sampled", show_default=True,
              help="sampled draws each label from its row (realised rate scatters); exact fixes the count per "
                   "class pair (realised rate = nominal up to rounding).")
@click.option("--class-map", type=click.Path(dir_okay=False), metavar="FILE",
              help="asymmetric: YAML/JSON {clean: noisy} by class index or name; a list of targets splits the rate.")
@click.option("--matrix", type=click.Path(dir_okay=False), metavar="FILE",
              help="asymmetric: KxK matrix (.npy/.csv/.txt), T[i,j] = P(noisy=j | clean=i), rows summing to 1.")
@click.option("--force", is_flag=True,
              help="Accept noise under which a wrong class is as likely as the clean one (e.g. pairflip >= 0.5).")
@click.option("--image-size", "size", type=int,
              help="Image size to load (MedMNIST default 28; image files: their own).")
@click.option("--subset", type=click.IntRange(min=1), metavar="N",
              help="Stratified subset of N training images; the file then records their original indices.")
@click.option("-v", "--verbose", is_flag=True, help="Also print the realised transition matrix.")
@pass_settings
def noise_cmd(settings: Settings, dataset, noise_type, rate, seed, out, mode, class_map, matrix, force, size, subset,
              verbose) -> None:
    """Corrupt a dataset's training labels and write the noise file.

    \b
    Example:
      ssl-noise noise --dataset bloodmnist --type symmetric --rate 0.4 --seed 1 --out noisy.csv
    """
    from ssl_noise import noise

    check_writable(out, "--out")
    ds, T, result = noise.noise_file(out, dataset, noise_type, rate, seed=seed, mode=mode, class_map=class_map,
                                     matrix=matrix, force=force, size=size, subset=subset,
                                     data_root=settings.data_root)
    clean = ds.train.labels
    click.echo(f"{dataset}: {len(clean)} training labels, {noise_type} noise"
               f"{'' if rate is None else f' at rate {rate:g}'} (seed {seed}, {mode}): realised rate "
               f"{result.realised_rate:.4f} ({int(result.flipped.sum())} flipped; expected "
               f"{noise.expected_rate(T, clean):.4f})")
    if verbose:
        click.echo("realised T[i, j] = P(noisy = j | clean = i), rows = clean classes:")
        for i, row in enumerate(result.realised_T):
            click.echo(f"  {i:>2} {ds.class_names[i][:24]:<24} " + " ".join(f"{p:.3f}" for p in row))
    click.echo(f"wrote {out}")
