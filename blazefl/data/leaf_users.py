"""``python -m blazefl.data.leaf_users ROOT``: how many users hold training samples in LEAF's
files under ROOT, i.e. the `data.clients` that ``data.partition: natural`` needs.

A module of its own (not `blazefl.data.leaf`, which the package imports) so that ``python -m``
runs it without importing it twice.

Example:
    $ python -m blazefl.data.leaf_users data/femnist
    3
"""

from __future__ import annotations

from blazefl.data.leaf import LeafFormatError, count_users

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m blazefl.data.leaf_users ROOT``: print the number of training users under ROOT
    (one line of error and exit code 2 when the files are missing or malformed).

    Example:
        >>> main(["data/femnist"])
        3
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m blazefl.data.leaf_users ROOT  (prints the training users)",
            file=sys.stderr,
        )
        return 2
    try:
        print(count_users(args[0]))
    except (LeafFormatError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
