"""Sample a trained run, plot, evaluate or export: flags -> one tf_score.api call -> a report.

    python run_sample.py --workdir=runs/toy_mixture                 # samples.npz + samples.png
    python run_sample.py --workdir=runs/toy_mixture --evaluate      # the two-mode comparison
    python run_sample.py --workdir=runs/mnist_cpu --sampler=heun --metrics=fid,kid \\
        --classifier=runs/mnist_classifier                          # FID/KID with the floor
    python run_sample.py --pretrained=mnist_edm_cond --num_samples=100  # a shipped model

The command is ``tf_score.cli.sample`` (installed: ``tf-score-sample``, ``python -m tf_score
sample``); its help names what each flag does.
"""

from tf_score import cli

if __name__ == "__main__":
    cli.run_sample()
