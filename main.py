r"""Entry point: train, enhance, evaluate and export CRNet.

  python main.py --config=configs/mcmt.py --workdir=RUN                      # train (resumes)
  python main.py --mode=enhance --workdir=RUN --input=photos/ --output=out/  # PNGs, same names
  python main.py --mode=evaluate --workdir=RUN --low_dir=L --high_dir=H --output=eval/ \
      [--skip_unpaired]   # metrics.json, enhanced/, figures/, contact_sheet.png
  python main.py --mode=export --workdir=RUN --output=exported/
  python main.py --mode=config --config=configs/mcmt.py:demo   # print the resolved config, exit

Configs: `--config=FILE[:ARG]`, ARG comma-separated (at most one row, arm or run, and one size;
the sizes' values are in configs/common.py). Each file's docstring has the commands and the
expected results.
  configs/crnet.py  supervised CRNet, 100% labels. Table 2 rows: rn, mrn, mrn+, crnet-, crnet
                    (default), crnet10 (10% labels). Sizes: demo (CPU, about 2 min), test (tiny).
  configs/mcmt.py   MCMT, 10% labels. Table 2 rows: ours- (gamma 0), ours (default).
                    Sizes: demo, test.
  configs/lol.py    LOL v1 (--config.data.lol_dir=DIR), one arm (required): few, full, mcmt,
                    mcmt-, mcmt_real. Sizes: none (GPU, the paper's schedule), cpu, cpu_wide,
                    cpu_long, cpu_mean, cpu_long_mean, test.
  configs/study.py  the label-efficiency study, one run (required): crnet100, crnet10, mcmt10-,
                    mcmt10, mcmt10_real, rn, mrn, mrn+, crnet-. Sizes: none (GPU), half, small,
                    cpu.
Any field can be overridden (`--config.data.batch_size=8`); `--mode=config` prints the resolved
config (after the overrides, as JSON: the config.json a run would write) and touches nothing.

For enhance, evaluate and export, `--workdir` is a training run (its best checkpoint, or
`--checkpoint=latest`; `--params=teacher` for the mean teacher of an MCMT run), a directory
written by export, or a released model (`crnet_jax/release.py`); without `--workdir` they use the
model shipped in `models/`, when the repository has one. `--config` is optional (it only supplies
`config.inference`).

The config is an ml-collections config file (with an optional argument after a colon, e.g.
`--config=configs/crnet.py:demo,mrn`); every field can be overridden on the command line
(`--config.data.batch_size=8`). The config is locked, so a mistyped field is an error.

Several processes (multi-host): give every process the same `--coordinator_address` and
`--num_processes`, and its own `--process_id` (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID); on a cluster jax can detect itself (SLURM, TPU pods), use
`--distributed_auto`. A single process initializes nothing.

Errors: a mistake (a bad flag, config file, config value, input file, workdir, checkpoint) ends
the run with one line `error: <file or key>: <what is wrong>` on stderr and exit status 1. Set
CRNET_TRACEBACK=1 to get the Python traceback as well (docs/reliability.md).
"""

import importlib.util
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file(
    'config', None, 'Path to an ml-collections config file (configs/crnet.py, configs/mcmt.py, '
    'configs/lol.py, configs/study.py), optionally with an argument: configs/crnet.py:demo,mrn '
    '(the list is at the top of --help). --mode=config prints the result.', lock_config=True)
flags.DEFINE_string('workdir', None, 'train: directory for checkpoints, logs and metrics. '
                    'enhance/evaluate/export: a run, an export or a release (default: the '
                    'model shipped in models/, if any).')
flags.DEFINE_enum('mode', 'train', ['train', 'enhance', 'evaluate', 'export', 'config'],
                  'train (and evaluate) a model; enhance images with it; evaluate it on a paired '
                  'folder; export it (inference checkpoint and jax.export serialization); '
                  'config: print the resolved config (JSON) and exit.')
flags.DEFINE_string('input', None, 'enhance: an image file or a folder of images.')
flags.DEFINE_string('output', None, 'enhance: the output folder (or, for one input file, an '
                    'image file name such as x.png); evaluate: the folder for metrics.json, '
                    'enhanced/, figures/ and contact_sheet.png; export: a new or empty folder.')
flags.DEFINE_enum('params', 'student', ['student', 'teacher'],
                  'enhance/evaluate/export: which parameters of an MCMT run to use.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'],
                  'enhance/evaluate/export: the best (by test PSNR) or the latest checkpoint.')
flags.DEFINE_string('low_dir', None, 'evaluate: folder of low-light images.')
flags.DEFINE_string('high_dir', None, 'evaluate: folder of ground truths with the same names.')
flags.DEFINE_bool('skip_unpaired', False,
                  'evaluate: score only the images that have a partner of the same name in the '
                  'other folder (the others are listed as skipped in metrics.json); without it, '
                  'files without a partner are an error that lists them.')
flags.DEFINE_string('coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS', ''),
                    'host:port of process 0, for multi-process runs.')
flags.DEFINE_integer('num_processes', int(os.environ.get('JAX_NUM_PROCESSES', '1')),
                     'Number of processes of a multi-process run (1 = single process).')
flags.DEFINE_integer('process_id', int(os.environ.get('JAX_PROCESS_ID', '0')),
                     'This process (0 .. num_processes - 1) in a multi-process run.')
flags.DEFINE_bool('distributed_auto', False,
                  'Call jax.distributed.initialize() without arguments (cluster auto-detection).')
flags.DEFINE_string('jax_cache_dir', os.environ.get('CRNET_JAX_CACHE_DIR',
                                                    '~/.cache/crnet_jax/jax_cache'),
                    "JAX's persistent compilation cache: a rerun or resume of the same config "
                    'reuses the compiled steps and reaches its first step in seconds. Empty: '
                    'off. Default from $CRNET_JAX_CACHE_DIR.')


def enable_compilation_cache(path: str) -> None:
  """Turns on JAX's persistent compilation cache in `path` (nothing when `path` is empty).

  Compilations of at least a second (jax's default threshold) are kept: the train, eval and
  inference steps. A later process with the same program, jax version and device finds them
  there. `$JAX_COMPILATION_CACHE_DIR`, when set, wins (jax reads it itself).
  """
  if not path or os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return  # off, or set for jax directly
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    logging.warning('No compilation cache: cannot create %s (%s).', path, e.strerror or e)
    return
  jax.config.update('jax_compilation_cache_dir', path)


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
  _need('workdir')
  if config is None:
    raise app.UsageError('--mode=train needs --config (e.g. --config=configs/mcmt.py)')
  from crnet_jax import train  # pylint: disable=g-import-not-at-top
  return train.train_and_evaluate(config, workdir)


def _model_path() -> str:
  """--workdir, or the model shipped in models/ (a usage error when there is none)."""
  from crnet_jax import release  # pylint: disable=g-import-not-at-top
  path = FLAGS.workdir or release.shipped_model()
  if not path:
    raise app.UsageError(
        f'--mode={FLAGS.mode} needs --workdir (a training run, an export or a release): this '
        f'copy of the repository ships no model in {release.MODELS_DIR}; train one '
        '(README, "Training") or pass a released model folder')
  return path


def _inference_setup(config, path: str):
  """The Enhancer of `path`'s parameters, the model config, and their origin (logged).

  The origin is `export.load_model_and_origin`'s: path, kind, step, checkpoint, student or
  teacher, and the one line `source` that is logged.
  """
  from configs import default  # pylint: disable=g-import-not-at-top
  from crnet_jax import export  # pylint: disable=g-import-not-at-top
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  tiling = inference.TilingConfig.from_config(
      (config or default.get_config()).inference)
  model, params, model_config, origin = export.load_model_and_origin(
      path, FLAGS.params, FLAGS.checkpoint)
  logging.info('Parameters: %s', origin['source'])
  return inference.Enhancer(model, params, tiling), model_config, origin


def _need(*names: str) -> None:
  missing = [f'--{n}' for n in names if not getattr(FLAGS, n)]
  if missing:
    raise app.UsageError(f'--mode={FLAGS.mode} needs {" and ".join(missing)}')


def _enhance(config, workdir: str):
  del workdir
  _need('input', 'output')
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  path = _model_path()
  job = inference.plan_enhance(FLAGS.input, FLAGS.output)  # inputs and outputs first
  enhancer, _, _ = _inference_setup(config, path)
  report = inference.run_enhance(enhancer, job)
  logging.info('Wrote %d image(s) to %s; %d failed.', len(report['written']), FLAGS.output,
               len(report['failed']))
  return report


def _evaluate(config, workdir: str):
  del workdir
  _need('low_dir', 'high_dir', 'output')
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  path = _model_path()
  # Every data problem (folders, pairs, unreadable images) and the output before the checkpoint.
  job = inference.plan_evaluation(FLAGS.low_dir, FLAGS.high_dir, FLAGS.output,
                                  skip_unpaired=FLAGS.skip_unpaired)
  if job.skipped:
    logging.warning('Skipping %d file(s) without a partner (--skip_unpaired):\n  %s',
                    len(job.skipped), '\n  '.join(job.skipped.values()))
  enhancer, model_config, origin = _inference_setup(config, path)
  result = inference.run_evaluation(enhancer, job,
                                    model={**origin, 'config': model_config.to_dict()})
  logging.info('Mean over %d images: PSNR %.3f dB, SSIM %.4f (input %.3f dB, %.4f); see %s',
               result['num_images'], result['mean']['psnr'], result['mean']['ssim'],
               result['mean']['input_psnr'], result['mean']['input_ssim'], FLAGS.output)
  return result


def _export(config, workdir: str):
  del workdir
  _need('output')
  from crnet_jax import export  # pylint: disable=g-import-not-at-top
  from crnet_jax import progress  # pylint: disable=g-import-not-at-top
  export.check_export_folder(FLAGS.output)  # before loading anything
  model_path = _model_path()
  with progress.Bar('export', 3) as bar:  # load, inference checkpoint, jax.export
    enhancer, model_config, origin = _inference_setup(config, model_path)
    bar.update()
    path = export.save_inference_checkpoint(FLAGS.output, enhancer.params, model_config,
                                            origin['source'], origin)
    bar.update()
    serialized = os.path.join(path, export.SERIALIZED_FILE)
    export.export_enhance_function(serialized, enhancer.model, enhancer.params)
    bar.update()
  logging.info('Exported the %s parameters to %s (orbax + %s) and %s', FLAGS.params, path,
               export.MODEL_CONFIG_FILE, serialized)
  return path


def _print_config(config, workdir: str):
  """Prints the resolved config as JSON on stdout; touches no file (`workdir` is ignored)."""
  del workdir
  if config is None:
    raise app.UsageError('--mode=config needs --config (e.g. --config=configs/mcmt.py:demo)')
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  print(text, flush=True)
  return text


MODES = {'train': _train, 'enhance': _enhance, 'evaluate': _evaluate, 'export': _export,
         'config': _print_config}


def run(mode: str, config, workdir: str):
  """Dispatches to the function of `mode` (one entry of MODES per --mode value)."""
  return MODES[mode](config, workdir)


TRACEBACK_ENV = 'CRNET_TRACEBACK'


def want_traceback() -> bool:
  """Whether $CRNET_TRACEBACK asks for Python tracebacks with the `error:` lines."""
  return os.environ.get(TRACEBACK_ENV, '').strip().lower() not in ('', '0', 'false', 'no')


def one_line(text: str) -> str:
  """`text` on one line: its lines joined with '; ' (flax and orbax messages span several)."""
  return '; '.join(line.strip() for line in str(text).splitlines() if line.strip())


def fail(message: str) -> None:
  """Exits with status 1 after one line `error: <message>` on stderr."""
  sys.exit(f'error: {one_line(message)}')


def main(argv):
  if len(argv) > 1:
    fail(f'too many command-line arguments: {argv[1:]}')
  from crnet_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries(FLAGS.verbosity)  # library chatter only with --verbosity=1
  try:
    if FLAGS.mode == 'config':  # no device, no cache, no workdir
      run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
      return
    initialize_distributed()
    enable_compilation_cache(FLAGS.jax_cache_dir)
    logging.info('JAX process %d of %d; %d local devices of %d: %s', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.local_devices())
    run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
  except SystemExit:
    raise
  except KeyboardInterrupt:
    fail('interrupted')
  except Exception as e:  # pylint: disable=broad-except
    from crnet_jax import train  # pylint: disable=g-import-not-at-top
    if isinstance(e, train.TrainingStopped):  # SIGTERM / Ctrl-C: the step's checkpoint is saved
      print(e, file=sys.stderr, flush=True)
      sys.exit(e.exit_code)
    # One line for every error: bad input or config value, a missing, unwritable or full path,
    # a non-finite loss, a checkpoint that does not fit (docs/reliability.md, "Bad inputs:
    # outcomes" lists them). Our own errors name the file or key first; anything else is
    # prefixed with its type. The traceback only with $CRNET_TRACEBACK.
    if want_traceback():
      raise
    from crnet_jax import image_io  # pylint: disable=g-import-not-at-top
    ours = (image_io.DataError, train.ConfigError, OSError, FloatingPointError, app.UsageError)
    message = str(e) if isinstance(e, ours) and str(e) else f'{type(e).__name__}: {e}'
    try:
      logging.error('%s: %s', type(e).__name__, one_line(str(e)))
    except Exception:  # pylint: disable=broad-except
      pass
    fail(f'{message} (set {TRACEBACK_ENV}=1 for the traceback)' if not isinstance(e, ours)
         else message)


def _config_arguments(argv) -> list[str]:
  """The values of --config in `argv` (`--config=X`, `-config=X`, `--config X`)."""
  values = []
  for i, arg in enumerate(argv[1:], start=1):
    for prefix in ('--config=', '-config='):
      if arg.startswith(prefix):
        values.append(arg[len(prefix):])
    if arg in ('--config', '-config') and i + 1 < len(argv):
      values.append(argv[i + 1])
  return values


def check_config_file(value: str) -> None:
  """Loads the config file of `--config=value` and calls its `get_config`, as ml_collections will.

  Any failure exits with one line naming the file (and the line, for a syntax error or an
  exception raised in the file): ml_collections would print a traceback, or, for a missing file,
  a message without its name.
  """
  path, *arg = value.split(':', 1)
  if not os.path.isfile(path):
    fail(f'{path}: config file not found' if not os.path.exists(path)
         else f'{path}: the config file is not a file')
  try:
    with open(path) as f:
      source = f.read()
    code = compile(source, path, 'exec')
  except SyntaxError as e:
    fail(f'{path}:{e.lineno}: syntax error in the config file: {e.msg}')
  except (OSError, UnicodeDecodeError, ValueError) as e:
    fail(f'{path}: cannot read the config file ({e})')
  spec = importlib.util.spec_from_file_location('_crnet_config_check', path)
  module = importlib.util.module_from_spec(spec)
  try:
    exec(code, module.__dict__)  # pylint: disable=exec-used
    if not callable(getattr(module, 'get_config', None)):
      fail(f'{path}: the config file has no get_config()')
    module.get_config(*arg)
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if want_traceback():
      raise
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    where = f'{path}:{frames[-1].lineno}' if frames else path
    call = f'get_config({arg[0]!r})' if arg else 'get_config()'
    fail(f'{where}: {call} failed: {type(e).__name__}: {e}')


def parse_flags(argv):
  """absl's flag parsing, with every bad flag, config file or override as one `error: ...` line.

  The config file is checked first (`check_config_file`). An override of a config field that does
  not exist raises AttributeError inside ml_collections (with a "Did you mean" hint) and absl
  would print its traceback; a value of the wrong type is absl's `flags.Error`. Every case exits
  with status 1, before anything runs ($CRNET_TRACEBACK=1 shows the traceback).
  """
  for value in _config_arguments(argv):
    check_config_file(value)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if want_traceback():
      raise
    fail(f'{e} (--helpfull lists the flags)')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if want_traceback():
      raise
    cause = e
    while isinstance(cause, BaseException) and cause.args:
      cause = cause.args[0]
    message = '. '.join(line.strip() for line in str(cause).splitlines() if line.strip())
    what = 'unknown config field ' if isinstance(e, (AttributeError, KeyError)) else ''
    fail(f'bad config override on the command line: {what}{message}')
  except Exception as e:  # pylint: disable=broad-except
    if want_traceback():
      raise
    fail(f'{type(e).__name__}: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
