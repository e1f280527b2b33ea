r"""Entry point: `python main.py --config=configs/mcmt.py --workdir=DIR [--mode=train]`.

The config is an ml-collections config file (with an optional argument after a colon, e.g.
`--config=configs/crnet.py:demo,mrn`); every field can be overridden on the command line
(`--config.data.batch_size=8`). The config is locked, so a mistyped field is an error.

Several processes (multi-host): give every process the same `--coordinator_address` and
`--num_processes`, and its own `--process_id` (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID); on a cluster jax can detect itself (SLURM, TPU pods), use
`--distributed_auto`. A single process initializes nothing.
"""

import os

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
flags.DEFINE_enum('mode', 'train', ['train'], 'What to do: train (and evaluate) the model.')
flags.DEFINE_string('coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS', ''),
                    'host:port of process 0, for multi-process runs.')
flags.DEFINE_integer('num_processes', int(os.environ.get('JAX_NUM_PROCESSES', '1')),
                     'Number of processes of a multi-process run (1 = single process).')
flags.DEFINE_integer('process_id', int(os.environ.get('JAX_PROCESS_ID', '0')),
                     'This process (0 .. num_processes - 1) in a multi-process run.')
flags.DEFINE_bool('distributed_auto', False,
                  'Call jax.distributed.initialize() without arguments (cluster auto-detection).')
flags.mark_flags_as_required(['config', 'workdir'])


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
    jax.distributed.initialize()


def _train(config, workdir: str):
  from crnet_jax import train  # pylint: disable=g-import-not-at-top
  return train.train_and_evaluate(config, workdir)


MODES = {'train': _train}


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
  run(FLAGS.mode, FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
