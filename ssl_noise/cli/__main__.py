"""``python -m ssl_noise.cli``: the same as the ``ssl-noise`` console script."""

from ssl_noise.cli.app import main

if __name__ == "__main__":
    main()
