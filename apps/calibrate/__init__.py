"""``cascade calibrate`` and ``cascade validate``: :mod:`~apps.calibrate.cli` (flags),
:mod:`~apps.calibrate.calibrate` (a profile for the simulator), built on :mod:`~apps.calibrate.profiling`,
:mod:`~apps.calibrate.links` and :mod:`~apps.calibrate.timing`; :mod:`~apps.calibrate.matrix` (measured
vs predicted); :mod:`~apps.calibrate.gpu_kit` (the one-shot GPU kit: its steps in
:mod:`~apps.calibrate.gpu_steps` and :mod:`~apps.calibrate.graph_probe`, its report in
:mod:`~apps.calibrate.gpu_report`); :mod:`~apps.calibrate.dryrun` (full-size dry runs on the meta device)."""
