"""Train a model: flags -> ExperimentConfig -> tf_score.api.train(config, workdir).

    python run_train.py --flagfile=flags/presets/toy_mixture.cfg --workdir=runs/toy_mixture
    python run_train.py ... --evaluate        # then run_sample.py --evaluate, in this process

Re-running with the same --workdir resumes from the latest checkpoint. The command is
``tf_score.cli.train`` (installed: ``tf-score-train``, ``python -m tf_score train``).
"""

from tf_score import cli

if __name__ == "__main__":
    cli.run_train()
