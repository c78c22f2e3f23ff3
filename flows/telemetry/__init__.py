"""What runs inside the job's engine besides the flow: the job's logs, progress, labels
and artifacts, all sent to its Prefect flow run. Nothing here fails a job: telemetry that
cannot be delivered is logged and dropped.

- `job_logging`: routes the job's loggers, warnings and prints to the flow run
  (`job_logging()`, `PrintLines`, `RunLogCapture`); `print_budget`: the cap on printed
  lines (`PrintBudget`: head and tail kept, a note of what was dropped).
- progress, composed by `capture.capture_progress()`:
  - `progress_model`: the job's bars, stage, overall percentage and time left
    (`JobProgress`, `Bar`, `Throttle`, `tqdm_metrics`), events as progress log records;
  - `tqdm_hook`: tqdm bars report to the job (`ReportingTqdm`, `reporting_tqdm()`);
  - `gepa_progress`: GEPA's callbacks as events (`GEPAProgress`, `gepa_callbacks()`);
  - `optimizer_log`: MIPROv2, COPRO and SIMBA log lines as bars and trial events
    (`OptimizerLogProgress`, `reading_optimizer_logs()`).
- `observe`: `observe_job()` wraps the job's stages; a reporter thread publishes live
  labels and moves the progress artifact (`JobObserver`).
- `labels`: flow-run labels and a scheduled run's tags (`publish_labels`,
  `mark_schedule_run`, `champion_labels`).
- `artifacts`: the Prefect artifacts (progress, results table, prompt markdown).
"""
