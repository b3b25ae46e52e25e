"""``python -m tf_score train|sample [flags]``: the two command lines (``tf_score.cli``)."""

from tf_score import cli

if __name__ == "__main__":
    cli.main()
