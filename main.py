r"""Entry point: train, enhance, evaluate and export CRNet.

  python main.py --config=configs/mcmt.py --workdir=RUN                      # train (resumes)
  python main.py --mode=enhance --workdir=RUN --input=photos/ --output=out/  # PNGs, same names
  python main.py --mode=evaluate --workdir=RUN --low_dir=L --high_dir=H --output=eval/
  python main.py --mode=export --workdir=RUN --output=exported/

For enhance, evaluate and export, `--workdir` is a training run (its best checkpoint, or
`--checkpoint=latest`; `--params=teacher` for the mean teacher of an MCMT run) or a directory
written by export, and `--config` is optional (it only supplies `config.inference`).

The config is an ml-collections config file (with an optional argument after a colon, e.g.
`--config=configs/crnet.py:demo,mrn`); every field can be overridden on the command line
(`--config.data.batch_size=8`). The config is locked, so a mistyped field is an error.

Several processes (multi-host): give every process the same `--coordinator_address` and
`--num_processes`, and its own `--process_id` (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID); on a cluster jax can detect itself (SLURM, TPU pods), use
`--distributed_auto`. A single process initializes nothing.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file(
    'config', None, 'Path to an ml-collections config file (configs/crnet.py, configs/mcmt.py), '
    'optionally with an argument: configs/crnet.py:demo.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
flags.DEFINE_enum('mode', 'train', ['train', 'enhance', 'evaluate', 'export'],
                  'train (and evaluate) a model; enhance images with it; evaluate it on a paired '
                  'folder; export it (inference checkpoint and jax.export serialization).')
flags.DEFINE_string('input', None, 'enhance: an image file or a folder of images.')
flags.DEFINE_string('output', None, 'enhance/evaluate/export: the output folder.')
flags.DEFINE_enum('params', 'student', ['student', 'teacher'],
                  'enhance/evaluate/export: which parameters of an MCMT run to use.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'],
                  'enhance/evaluate/export: the best (by test PSNR) or the latest checkpoint.')
flags.DEFINE_string('low_dir', None, 'evaluate: folder of low-light images.')
flags.DEFINE_string('high_dir', None, 'evaluate: folder of ground truths with the same names.')
flags.DEFINE_string('coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS', ''),
                    'host:port of process 0, for multi-process runs.')
flags.DEFINE_integer('num_processes', int(os.environ.get('JAX_NUM_PROCESSES', '1')),
                     'Number of processes of a multi-process run (1 = single process).')
flags.DEFINE_integer('process_id', int(os.environ.get('JAX_PROCESS_ID', '0')),
                     'This process (0 .. num_processes - 1) in a multi-process run.')
flags.DEFINE_bool('distributed_auto', False,
                  'Call jax.distributed.initialize() without arguments (cluster auto-detection).')
flags.mark_flags_as_required(['workdir'])


def initialize_distributed() -> None:
  """Initializes jax.distributed only when running as one of several processes."""
  if FLAGS.num_processes > 1:
    if not FLAGS.coordinator_address:
      raise app.UsageError('--num_processes > 1 needs --coordinator_address (host:port of '
                           'process 0)')
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  elif FLAGS.distributed_auto:
    try:
      jax.distributed.initialize()
    except ValueError as e:  # no cluster environment (e.g. one process on a workstation)
      sys.exit(f'error: --distributed_auto: jax.distributed.initialize() found no cluster to '
               f'join ({e}); drop the flag to run as one process, or give '
               '--coordinator_address, --num_processes and --process_id')


def _train(config, workdir: str):
  if config is None:
    raise app.UsageError('--mode=train needs --config (e.g. --config=configs/mcmt.py)')
  from crnet_jax import train  # pylint: disable=g-import-not-at-top
  return train.train_and_evaluate(config, workdir)


def _inference_setup(config):
  from configs import default  # pylint: disable=g-import-not-at-top
  from crnet_jax import export  # pylint: disable=g-import-not-at-top
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  model, params, model_config = export.load_model(FLAGS.workdir, FLAGS.params, FLAGS.checkpoint)
  tiling = inference.TilingConfig.from_config(
      (config or default.get_config()).inference)
  return inference.Enhancer(model, params, tiling), model_config


def _need(*names: str) -> None:
  missing = [f'--{n}' for n in names if not getattr(FLAGS, n)]
  if missing:
    raise app.UsageError(f'--mode={FLAGS.mode} needs {" and ".join(missing)}')


def _enhance(config, workdir: str):
  del workdir
  _need('input', 'output')
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  enhancer, _ = _inference_setup(config)
  report = inference.enhance_paths(enhancer, FLAGS.input, FLAGS.output)
  logging.info('Wrote %d image(s) to %s; %d failed.', len(report['written']), FLAGS.output,
               len(report['failed']))
  return report


def _evaluate(config, workdir: str):
  del workdir
  _need('low_dir', 'high_dir', 'output')
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  enhancer, _ = _inference_setup(config)
  result = inference.evaluate_pairs(enhancer, FLAGS.low_dir, FLAGS.high_dir, FLAGS.output)
  logging.info('Mean over %d images: PSNR %.3f dB, SSIM %.4f (input %.3f dB, %.4f); see %s',
               result['num_images'], result['mean']['psnr'], result['mean']['ssim'],
               result['mean']['input_psnr'], result['mean']['input_ssim'], FLAGS.output)
  return result


def _export(config, workdir: str):
  del workdir
  _need('output')
  from crnet_jax import export  # pylint: disable=g-import-not-at-top
  enhancer, model_config = _inference_setup(config)
  path = export.save_inference_checkpoint(FLAGS.output, enhancer.params, model_config)
  serialized = os.path.join(path, export.SERIALIZED_FILE)
  export.export_enhance_function(serialized, enhancer.model, enhancer.params)
  logging.info('Exported the %s parameters to %s (orbax + %s) and %s', FLAGS.params, path,
               export.MODEL_CONFIG_FILE, serialized)
  return path


MODES = {'train': _train, 'enhance': _enhance, 'evaluate': _evaluate, 'export': _export}


def run(mode: str, config, workdir: str):
  """Dispatches to the function of `mode` (one entry of MODES per --mode value)."""
  return MODES[mode](config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  initialize_distributed()
  logging.info('JAX process %d of %d; %d local devices of %d: %s', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  from crnet_jax import image_io  # pylint: disable=g-import-not-at-top
  from crnet_jax import train  # pylint: disable=g-import-not-at-top
  try:
    run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
  except train.TrainingStopped as e:  # SIGTERM / Ctrl-C: the step's checkpoint is saved
    print(e, file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except (image_io.DataError, train.ConfigError, OSError, FloatingPointError) as e:
    # Bad input or config value, a missing, unwritable or full path, a non-finite loss: the
    # message says it all (README.md, "Many hosts, kills, bad inputs" lists the outcomes).
    logging.error('%s: %s', type(e).__name__, e)
    sys.exit(f'error: {e}')


def parse_flags(argv):
  """absl's flag parsing, with every bad flag (or config override) as one `error: ...` line.

  An override of a config field that does not exist raises AttributeError inside ml_collections
  (with a "Did you mean" hint) and absl would print its traceback; a value of the wrong type is
  absl's `flags.Error`. Both exit with status 1, before anything runs.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e} (--helpfull lists the flags)')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    cause = e
    while isinstance(cause, BaseException) and cause.args:
      cause = cause.args[0]
    message = '. '.join(line.strip() for line in str(cause).splitlines() if line.strip())
    what = 'unknown config field ' if isinstance(e, (AttributeError, KeyError)) else ''
    sys.exit(f'error: bad config override on the command line: {what}{message}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
