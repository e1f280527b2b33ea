r"""The label-efficiency study: prepare its data, train its runs, evaluate, report.

Does MCMT with 10% of the labels plus unlabeled photos beat CRNet on the same 10% alone, and how
close does it come to 100% of the labels? The runs are defined in `configs/study.py`; the whole
procedure, on a GPU machine with or without internet access, is in `docs/study.md`.

  python experiments/study/main.py prepare --sources /data/study_sources     # -> study_data/
  python experiments/study/main.py run --runs crnet10,mcmt10 --budget_minutes 9
  python experiments/study/main.py evaluate
  python experiments/study/main.py report

Subcommands:

- `pack`: copies what the study reads from the sources folder (`--sources`, the public data sets
  in the layout of docs/data.md) into a compact folder of the same layout (`study_pack/`, 77
  MiB), small enough to copy to a GPU machine without internet access in a few transfers: the
  BSDS500 JPEGs and SunHays80 as they are, Urban100_sub20 downscaled to `--max_side` (exactly what
  `prepare` would do to them) and LIME's BMPs as PNGs (same pixels). `prepare --sources
  study_pack` then writes the same study data as from the sources folder.
- `prepare`: reads `--sources` (required: the sources folder or a pack) and writes `--study_dir`
  (default `study_data/`):
  `train/{low,high}` (532 synthetic pairs: CBSD432 by id, SunHays80, Urban100_sub20, each photo
  downscaled to `--max_side` 600 and darkened by `crnet_jax.datasets.degrade` with the seed
  `--seed` and its name, as the `synthetic_pairs` dataset does), `cbsd68/{low,high}` (the 68
  CBSD68 photos, read from BSDS500/val, pixel-identical, darkened the same way),
  `lol778/{low,high}` (the one real LOL pair), `real_dark/{dicm,lime,lol_low}` (links to the real
  low-light photos; `lol_low` leaves out 778, the LOL test pair) and `manifest.json`. Rerunning
  skips what exists; other settings than the manifest's are an error (`--force` redoes all).
- `run`: trains the runs one after another with `python main.py --config=configs/study.py:RUN`
  into `--work/RUN` (default `runs/study/RUN`). It resumes from each run's last checkpoint, skips
  finished runs and, with `--budget_minutes`, stops in time: a call trains up to the step its
  measured speed allows (the run's own `--config.num_train_steps` for that call; the learning
  rate schedule does not depend on it) and is stopped at the deadline otherwise (at most
  `checkpoint_every_steps` steps are lost). Each call is logged to `RUN/study_log.jsonl` (seconds,
  steps, device).
- `evaluate`: for every run, the student's (and for MCMT the teacher's) PSNR/SSIM on the CBSD68
  synthetic pairs and on the LOL 778 pair, from the last checkpoint (`--checkpoint best` for the
  best by test PSNR), with `crnet_jax.inference.evaluate_pairs`, into `RUN/study_eval.json` and
  `RUN/study_eval/`; plus a few real low-light photos (LOL eval15 low, DICM) enhanced for the
  grid figure.
- `report`: the table (`docs/study_results.md`, `benchmarks/results/study.json`), the
  PSNR-vs-step curves (`docs/figures/study_curves.png`, from each run's `metrics.jsonl`) and the
  grid of enhanced real photos (`docs/figures/study_grid.png`), drawn with PIL.
- `bundle` / `unbundle`: each run's last checkpoint, logs and evaluation results (numbers and
  grid photos) as `.tgz` parts of at most 15 MiB, to move a run between machines (to continue it
  on another GPU machine, or to bring its results back from one whose transfers are limited in
  size).

One module per subcommand: `prepare.py` (`pack`, `prepare`), `run.py`, `evaluate.py`, `report.py`
(the figures too) and `bundle.py` (`bundle`, `unbundle`); `shared.py` holds what they share (paths,
image listing, a run's checkpoints and `metrics.jsonl`). This file is the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import study as study_config  # pylint: disable=wrong-import-position
from experiments.study import bundle  # pylint: disable=wrong-import-position
from experiments.study import evaluate  # pylint: disable=wrong-import-position
from experiments.study import prepare  # pylint: disable=wrong-import-position
from experiments.study import report  # pylint: disable=wrong-import-position
from experiments.study import run  # pylint: disable=wrong-import-position
from experiments.study import shared  # pylint: disable=wrong-import-position


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)

  def common(p, runs_default=''):
    p.add_argument('--study_dir', default=shared.DEFAULT_STUDY_DIR, help='the prepared study data')
    p.add_argument('--work', default=shared.DEFAULT_WORK, help='the runs go to WORK/RUN')
    p.add_argument('--runs', default=runs_default,
                   help="comma list of runs, 'core', 'ablations' or 'all' (default: "
                        f"{runs_default or 'the runs found in --work'})")
    p.add_argument('--size', default='', choices=('',) + study_config.SIZES,
                   help="configs/study.py size: '' (GPU, the paper's schedule), 'half', "
                   "'small' (CPU scale), 'cpu'")

  p = sub.add_parser('pack', help='copy the sources into a compact folder of the same layout')
  p.add_argument('--sources', '--shared', dest='sources', required=True,
                 help='the folder holding the sources, in the layout of docs/data.md')
  p.add_argument('--pack', default=os.path.join(REPO, 'study_pack'))
  p.add_argument('--max_side', type=int, default=600)
  p.set_defaults(fn=prepare.cmd_pack)

  p = sub.add_parser('prepare', help='write the study data folder')
  p.add_argument('--sources', '--shared', dest='sources', required=True,
                 help='the folder holding the sources, in the layout of docs/data.md, or a '
                 'folder written by pack')
  p.add_argument('--study_dir', default=shared.DEFAULT_STUDY_DIR)
  p.add_argument('--seed', type=int, default=study_config.SEED,
                 help='the degradation seed (configs/study.py data.seed)')
  p.add_argument('--max_side', type=int, default=600,
                 help='photos are downscaled to this longer side (data.synthetic.max_side)')
  p.add_argument('--copy', action='store_true', help='copy the real photos instead of linking')
  p.add_argument('--force', action='store_true', help='redo everything')
  p.set_defaults(fn=prepare.cmd_prepare)

  p = sub.add_parser('run', help='train the runs (resumable, within a time budget)')
  common(p, 'core')
  p.add_argument('--budget_minutes', type=float, default=0.0, help='0 = no limit')
  p.add_argument('--min_call_seconds', type=float, default=90.0,
                 help='do not start a training call with less time than this left')
  p.add_argument('--overhead_seconds', type=float, default=120.0,
                 help='start-up, compilation and evaluation time of a call, for the step target')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='a config override for every run, e.g. --set model.remat=lmrg')
  p.add_argument('--in_process', action='store_true',
                 help='train in this process (tests; no deadline stop)')
  p.set_defaults(fn=run.cmd_run)

  p = sub.add_parser('evaluate', help='student/teacher PSNR/SSIM on CBSD68 and LOL 778')
  common(p)
  p.add_argument('--checkpoint', default='latest', choices=('latest', 'best'))
  p.add_argument('--grid_lol', type=int, default=3, help='LOL eval15 low photos in the grid')
  p.add_argument('--grid_dicm', type=int, default=3, help='DICM photos in the grid')
  p.add_argument('--grid_side', type=int, default=400, help='grid photos are enhanced at this size')
  p.set_defaults(fn=evaluate.cmd_evaluate)

  p = sub.add_parser('report', help='table, JSON, curves and grid')
  common(p)
  p.add_argument('--title', default='GPU runs')
  p.add_argument('--table', default=os.path.join(REPO, 'docs', 'study_results.md'))
  p.add_argument('--json', default=os.path.join(REPO, 'benchmarks', 'results', 'study.json'))
  p.add_argument('--curves', default=os.path.join(REPO, 'docs', 'figures', 'study_curves.png'))
  p.add_argument('--grid', default=os.path.join(REPO, 'docs', 'figures', 'study_grid.png'))
  p.add_argument('--grid_lol', type=int, default=3)
  p.add_argument('--grid_dicm', type=int, default=3)
  p.add_argument('--grid_side', type=int, default=400)
  p.set_defaults(fn=report.cmd_report)

  p = sub.add_parser('bundle', help="each run's last checkpoint and logs as <= 15 MiB parts")
  common(p)
  p.add_argument('--out', required=True)
  p.set_defaults(fn=bundle.cmd_bundle)

  p = sub.add_parser('unbundle', help='restore bundled runs into --work')
  common(p)
  p.add_argument('--src', required=True)
  p.set_defaults(fn=bundle.cmd_unbundle)
  return parser


def main(argv: Sequence[str] | None = None) -> Any:
  args = build_parser().parse_args(argv)
  args.argv = None if argv is None else [str(a) for a in argv]
  return args.fn(args)



if __name__ == '__main__':
  main()
