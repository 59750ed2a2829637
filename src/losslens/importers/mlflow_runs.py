"""Runs stored in an MLflow tracking server -> :class:`~losslens.record.Run`, one per MLflow run.

Each run's metric histories (``MlflowClient.get_metric_history``: step, value per logged point) are read like the
scalars of a TensorBoard event file (:mod:`losslens.importers.tensorboard`): the writer's conventions decide the
epochs (Lightning's ``MLFlowLogger`` logs an ``epoch`` metric; the Hugging Face ``MLflowCallback`` logs ``loss``
and ``eval_loss`` at the global step; Keras autologging logs ``loss``/``val_loss`` at step = epoch), and the
loss roles are chosen by :func:`losslens.importers.roles.assign_roles`. Only the histories that can matter are
fetched: metrics whose name contains "loss" and the epoch counters; the other metrics' last values (in the run's
summary) are kept as ``run.meta["mlflow_metrics"]``.

The histories are fetched by a pool of threads (the time is the server's); nothing is estimated here.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..record import Run
from ._common import LogFormatError
from .tensorboard import _read_data

__all__ = ["load_mlflow", "MLFLOW_PAGE"]

#: Runs asked for per ``search_runs`` page (MLflow's own maximum is 50 000; 1 000 keeps each answer small).
MLFLOW_PAGE = 1000

_EPOCH_KEYS = ("epoch", "train/epoch", "epochs")


def _wanted(key: str) -> bool:
    low = key.lower()
    return "loss" in low or low in _EPOCH_KEYS


def _client(tracking_uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:  # pragma: no cover - the message is the test
        raise LogFormatError(tracking_uri, "reading MLflow runs needs the mlflow package "
                                           "(pip install 'losslens[mlflow]')") from exc
    return MlflowClient(tracking_uri=tracking_uri)


def _runs(client: Any, tracking_uri: str, experiment: str | None, run_ids: list[str] | None,
          max_runs: int | None) -> list[Any]:
    if run_ids:
        out = []
        for rid in run_ids:
            try:
                out.append(client.get_run(rid))
            except Exception as exc:
                raise LogFormatError(tracking_uri, f"run id {rid!r}: {_short(exc)}") from None
        return out
    if experiment is None:
        raise LogFormatError(tracking_uri, "give an experiment name (--experiment) or run ids (--run-id)")
    try:
        exp = client.get_experiment_by_name(experiment)
    except Exception as exc:
        raise LogFormatError(tracking_uri, f"cannot reach the tracking server: {_short(exc)}") from None
    if exp is None:
        raise LogFormatError(tracking_uri, f"no experiment named {experiment!r}")
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=MLFLOW_PAGE, page_token=token,
                                  order_by=["attributes.start_time ASC", "attributes.run_id ASC"])
        runs.extend(page)
        token = page.token
        if not token or (max_runs is not None and len(runs) >= max_runs):
            break
    return runs[:max_runs] if max_runs is not None else runs


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _histories(client: Any, info: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in sorted(k for k in info.data.metrics if _wanted(k)):
        hist = client.get_metric_history(info.info.run_id, key)
        # logged order: by step, then by timestamp (a value logged twice at one step: the later one wins)
        pts = sorted(((float(m.step), int(m.timestamp), float(m.value)) for m in hist), key=lambda t: t[:2])
        if pts:
            data[key] = (np.array([p[0] for p in pts]), np.array([p[2] for p in pts]))
    return data


def load_mlflow(tracking_uri: str, *, experiment: str | None = None, run_ids: list[str] | None = None,
                train_loss: str | None = None, val_loss: str | None = None, steps_per_epoch: float | None = None,
                max_runs: int | None = None, threads: int = 8,
                errors: list[str] | None = None) -> list[Run]:
    """Import the runs of an MLflow experiment (or the given run ids) from a tracking server.

    Parameters
    ----------
    tracking_uri : str
        ``http://host:port``, ``sqlite:///mlflow.db``, a ``file:`` store: anything ``MlflowClient`` takes.
    experiment : str, optional
        Experiment name; all its runs, oldest first (then by run id: a fixed order).
    run_ids : list of str, optional
        These runs instead of an experiment's.
    train_loss, val_loss : str, optional
        Metric names to use as the losses (default: chosen by name, :mod:`losslens.importers.roles`).
    steps_per_epoch : float, optional
        For runs that log per-step losses without an epoch counter or a validation loss.
    max_runs : int, optional
        At most this many runs.
    threads : int
        Threads fetching metric histories (I/O bound).
    errors : list, optional
        A run that cannot be imported (no loss metric, ...) is skipped, and its ``"mlflow:<run id>: reason"``
        appended here; without a list the first one raises.

    Returns
    -------
    list of Run
        In the order above; each with ``meta["mlflow_run_id"]``, ``meta["mlflow_tracking_uri"]`` and its source
        ``mlflow:<run id>``. The name is the MLflow run name (or its id).

    Raises
    ------
    LogFormatError
        If the server cannot be reached, the experiment or a run id does not exist, neither is given, or (without
        ``errors``) a run has no usable loss metric; the message names the URI or the run.
    """
    client = _client(tracking_uri)
    infos = _runs(client, tracking_uri, experiment, run_ids, max_runs)

    def one(info: Any) -> Run | LogFormatError:
        rid = info.info.run_id
        source = f"mlflow:{rid}"
        try:
            data = _histories(client, info)
        except Exception as exc:
            return LogFormatError(source, f"metric histories could not be read: {_short(exc)}")
        if not data:
            return LogFormatError(source, "no metric with 'loss' in its name")
        try:
            run = _read_data(source, data, train_loss, val_loss, steps_per_epoch,
                             info.info.run_name or rid)
        except LogFormatError as exc:
            return exc
        run.meta["importer"] = "mlflow"
        run.meta["mlflow_run_id"] = rid
        run.meta["mlflow_tracking_uri"] = tracking_uri
        run.meta["mlflow_metrics"] = {k: v for k, v in sorted(info.data.metrics.items())
                                      if not _wanted(k) and isinstance(v, (int, float)) and math.isfinite(v)}
        run.experiment = experiment
        return run

    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        results = list(pool.map(one, infos))
    out: list[Run] = []
    for r in results:
        if isinstance(r, LogFormatError):
            if errors is None:
                raise r
            errors.append(str(r))
        else:
            out.append(r)
    return out
