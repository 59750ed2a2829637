"""Write each epoch's measurements, decomposition and headline verdict into the trackers users watch.

One small sink per tool, each called by the adapters right after an epoch is committed, with the values of
:func:`losslens.diagnose.live.live_values` (loss per sample, the same names in every tool, under ``prefix``)::

    from torch.utils.tensorboard import SummaryWriter
    lens = LossLens(model, loss_fn, train_ds, val_ds, sinks=[SummaryWriter("runs/exp1")])   # or mlflow / a wandb run

:func:`as_sink` accepts the tools' own objects:

* a TensorBoard writer (``torch.utils.tensorboard.SummaryWriter``, tensorboardX's, anything with ``add_scalar``
  and ``add_text``): :class:`TensorBoardSink`, scalars at ``global_step`` = the epoch index;
* an MLflow run (``mlflow.start_run()``'s ``ActiveRun``), the ``mlflow`` module itself (the active run at each
  write) or a run id string prefixed ``"mlflow:"``: :class:`MLflowSink`, metrics at ``step`` = the epoch index;
* a W&B run (``wandb.init()``'s ``Run``): :class:`WandbSink`, logged against ``losslens/epoch``
  (``define_metric``), so the user's own step counter is left alone;
* a sink object (anything with ``write(live)``) as it is.

A sink that fails warns once and is dropped; the user's training never stops because of it, and the run in the
store is untouched.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from .diagnose.live import LiveValues, live_values
from .record import Run

__all__ = ["TensorBoardSink", "MLflowSink", "WandbSink", "as_sink", "as_sinks", "write_live"]

PREFIX = "losslens/"


class TensorBoardSink:
    """Scalars ``<prefix><name>`` and the text ``<prefix>verdict`` in a TensorBoard writer, at step = epoch.

    Parameters
    ----------
    writer : SummaryWriter-like
        Has ``add_scalar(tag, value, global_step)`` and ``add_text(tag, text, global_step)``; ``flush()`` is called
        after each epoch when it exists, so TensorBoard shows the epoch while training goes on.
    prefix : str
    """

    def __init__(self, writer: Any, prefix: str = PREFIX) -> None:
        if not (hasattr(writer, "add_scalar") and hasattr(writer, "add_text")):
            raise TypeError(f"writer: expected a TensorBoard SummaryWriter (add_scalar, add_text), got "
                            f"{type(writer).__name__}")
        self.writer, self.prefix = writer, prefix

    def write(self, live: LiveValues) -> None:
        for name, value in live.values.items():
            self.writer.add_scalar(self.prefix + name, value, global_step=live.epoch)
        if live.verdict is not None:
            self.writer.add_text(self.prefix + "verdict", live.verdict, global_step=live.epoch)
        if hasattr(self.writer, "flush"):
            self.writer.flush()


class MLflowSink:
    """Metrics ``<prefix><name>`` at ``step`` = epoch and the tag ``losslens.verdict`` in an MLflow run.

    Parameters
    ----------
    run_id : str, optional
        The run to write to; None: the active run (``mlflow.active_run()``) at each write, skipped when none.
    tracking_uri : str, optional
        For a ``run_id`` on another tracking server than the current one (``mlflow.get_tracking_uri()``).
    prefix : str

    Raises
    ------
    ImportError
        Without the mlflow package.
    """

    def __init__(self, run_id: str | None = None, tracking_uri: str | None = None, prefix: str = PREFIX) -> None:
        try:
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ImportError("MLflowSink needs the mlflow package (pip install 'losslens[mlflow]')") from exc

        self.run_id, self.prefix = run_id, prefix
        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def write(self, live: LiveValues) -> None:
        from mlflow.entities import Metric

        run_id = self.run_id
        if run_id is None:
            active = self._mlflow.active_run()
            if active is None:
                return
            run_id = active.info.run_id
        ms = int(time.time() * 1000)   # MLflow's timestamp column (when it was logged); no value depends on it
        self.client.log_batch(run_id, metrics=[Metric(self.prefix + k, v, ms, live.epoch)
                                               for k, v in live.values.items()])
        if live.verdict is not None:
            self.client.set_tag(run_id, "losslens.verdict", live.verdict)


class WandbSink:
    """``<prefix><name>`` in a W&B run's history against ``<prefix>epoch``; the verdict in its summary.

    Parameters
    ----------
    run : wandb Run, optional
        None: ``wandb.run`` (the current run) at each write, skipped when none.
    prefix : str
    """

    def __init__(self, run: Any = None, prefix: str = PREFIX) -> None:
        self.run, self.prefix = run, prefix
        self._defined: set[int] = set()

    def write(self, live: LiveValues) -> None:
        run = self.run
        if run is None:
            import wandb

            run = wandb.run
            if run is None:
                return
        if id(run) not in self._defined:   # losslens's own x-axis; the user's step counter is untouched
            run.define_metric(self.prefix + "epoch")
            run.define_metric(self.prefix + "*", step_metric=self.prefix + "epoch")
            self._defined.add(id(run))
        data: dict[str, Any] = {self.prefix + k: v for k, v in live.values.items()}
        data[self.prefix + "epoch"] = live.epoch
        run.log(data)
        if live.verdict is not None:
            run.summary[self.prefix + "verdict"] = live.verdict


def as_sink(obj: Any) -> Any:
    """The sink for a tool's own object (module docstring), or ``obj`` itself when it is a sink already.

    Raises
    ------
    TypeError
        For an object of no known tool; the message names its type.
    """
    if hasattr(obj, "write") and callable(obj.write) and not hasattr(obj, "add_scalar"):
        return obj
    if hasattr(obj, "add_scalar") and hasattr(obj, "add_text"):
        return TensorBoardSink(obj)
    mod = type(obj).__module__ or ""
    if getattr(obj, "__name__", None) == "mlflow":
        return MLflowSink()
    if isinstance(obj, str) and obj.startswith("mlflow:"):
        return MLflowSink(run_id=obj[len("mlflow:"):])
    if mod.startswith("mlflow") and hasattr(getattr(obj, "info", None), "run_id"):
        return MLflowSink(run_id=obj.info.run_id)
    if mod.startswith("wandb") and hasattr(obj, "log") and hasattr(obj, "define_metric"):
        return WandbSink(obj)
    raise TypeError(f"sinks: expected a TensorBoard SummaryWriter, an MLflow run, a W&B run or a sink with "
                    f"write(live), got {type(obj).__name__}")


def as_sinks(sinks: Any) -> list[Any]:
    """``sinks`` (None, one object or a list of them) as a list of sinks (:func:`as_sink`).

    Raises
    ------
    TypeError
        As :func:`as_sink`.
    """
    if sinks is None:
        return []
    if isinstance(sinks, (list, tuple)):
        return [as_sink(s) for s in sinks]
    return [as_sink(sinks)]


def write_live(run: Run, sinks: list[Any], *, with_verdict: bool = True, always: bool = False) -> LiveValues | None:
    """Compute :func:`~losslens.diagnose.live.live_values` once and give it to each sink.

    ``always``: compute the values even without a sink (an adapter that also puts them in its framework's logs).

    Never raises: a sink (or the diagnosis) that fails warns once, naming the sink, and a failed sink is removed
    from ``sinks`` (the list is changed in place), so training goes on and later epochs are not slowed by it.

    Returns
    -------
    LiveValues or None
        What was written (None when nothing was, or the diagnosis failed).
    """
    if not sinks and not always:
        return None
    try:
        live = live_values(run, with_verdict=with_verdict)
    except Exception as exc:   # never stop training because of a measurement display
        warnings.warn(f"losslens: the live values of epoch {len(run.epochs) - 1} could not be computed "
                      f"({type(exc).__name__}: {exc}); nothing written to the sinks", RuntimeWarning, stacklevel=2)
        return None
    if live is None:
        return None
    for sink in list(sinks):
        try:
            sink.write(live)
        except Exception as exc:
            sinks.remove(sink)
            warnings.warn(f"losslens: writing to {type(sink).__name__} failed ({type(exc).__name__}: {exc}); "
                          "this sink is dropped for the rest of the run, the recording goes on",
                          RuntimeWarning, stacklevel=2)
    return live
